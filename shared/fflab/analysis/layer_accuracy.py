"""Per-layer accuracy: what each hidden layer knows about the class.

Two readings, both pure functions over arrays:

* **Goodness** (FF and BP/FF): the label whose embedding gives a layer the
  highest goodness, from that layer alone and from the layers up to it
  combined by the experiment's prediction rule (``sum`` of goodness, or
  ``softmax_sum`` of per-layer softmaxes over labels; the last cumulative
  value is the network's own prediction).
* **Linear probe** (every model): a multinomial logistic regression (L-BFGS,
  scikit-learn) fitted on one set of a layer's representations and scored on
  another. Features are standardised with the training set's mean and
  standard deviation; the regularisation ``C``, the iteration cap and whether
  L-BFGS converged are returned so that a document can record them.

Shapes: ``N`` images, ``C`` classes (labels), ``L`` layers, ``n`` units.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

__all__ = [
    "GoodnessAccuracy",
    "ProbeResult",
    "PREDICTION_RULES",
    "class_accuracies",
    "goodness_accuracy",
    "linear_probe",
]


def _sum_rule(scores: np.ndarray) -> np.ndarray:
    summed: np.ndarray = scores.sum(axis=2)
    return summed


def _softmax_sum_rule(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    summed: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).sum(axis=2)
    return summed


# Mirrors fflab.models.common.PREDICTION_RULES, on numpy arrays.
PREDICTION_RULES = {"sum": _sum_rule, "softmax_sum": _softmax_sum_rule}


def class_accuracies(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,), (N,) ints -> (n_classes,) accuracy per class; nan for a class with no image."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        rows = labels == c
        if rows.any():
            out[c] = float((predictions[rows] == c).mean())
    return out


@dataclass(frozen=True)
class GoodnessAccuracy:
    """``per_layer[l]``: accuracy of layer l+1's goodness alone; ``cumulative[l]``:
    of layers 1..l+1 combined by the rule; the ``*_per_class`` arrays are (L, C)."""

    per_layer: np.ndarray
    cumulative: np.ndarray
    per_layer_per_class: np.ndarray
    cumulative_per_class: np.ndarray


def goodness_accuracy(scores: np.ndarray, labels: np.ndarray, rule: str = "sum") -> GoodnessAccuracy:
    """Accuracy of prediction by goodness, per layer and cumulatively.

    scores: (N, C, L) goodness of every image with every label embedded, per
    layer (``label_goodness`` in a run's representations.npz); labels: (N,).
    ``rule``: ``sum`` or ``softmax_sum`` (how layers are combined); anything
    else raises ValueError.
    """
    if rule not in PREDICTION_RULES:
        raise ValueError(f"rule must be one of {', '.join(PREDICTION_RULES)}; got {rule!r}")
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 3 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be (N, C, L) with N = len(labels); got {scores.shape} and {labels.shape}")
    n_classes, n_layers = scores.shape[1], scores.shape[2]
    combine = PREDICTION_RULES[rule]
    per_layer, cumulative, per_layer_c, cumulative_c = [], [], [], []
    for layer in range(n_layers):
        alone = scores[:, :, layer].argmax(axis=1)
        upto = combine(scores[:, :, : layer + 1]).argmax(axis=1)
        per_layer.append(float((alone == labels).mean()))
        cumulative.append(float((upto == labels).mean()))
        per_layer_c.append(class_accuracies(alone, labels, n_classes))
        cumulative_c.append(class_accuracies(upto, labels, n_classes))
    return GoodnessAccuracy(np.array(per_layer), np.array(cumulative), np.array(per_layer_c), np.array(cumulative_c))


@dataclass(frozen=True)
class ProbeResult:
    train_accuracy: float
    test_accuracy: float
    test_per_class: np.ndarray  # (n_classes,), nan for a class with no test image
    iterations: int
    converged: bool


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int = 10,
    regularization: float = 1.0,
    max_iter: int = 200,
) -> ProbeResult:
    """Fit a multinomial logistic regression (L-BFGS) on standardised features.

    train_x: (N_train, n); train_y: (N_train,) ints; test_x: (N_test, n); test_y:
    (N_test,). ``regularization`` is scikit-learn's ``C`` (inverse L2 strength).
    Constant features are left at 0 after standardisation. Deterministic.
    """
    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x and test_x must be (N, n) with the same n; got {train_x.shape}, {test_x.shape}")
    if not regularization > 0 or max_iter < 1:
        raise ValueError("regularization must be > 0 and max_iter >= 1")
    if np.unique(train_y).size < 2:
        raise ValueError("train_y must hold at least two classes")
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std[std == 0] = 1.0
    model = LogisticRegression(C=regularization, max_iter=max_iter, solver="lbfgs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit((train_x - mean) / std, train_y)
    iterations = int(np.max(model.n_iter_))
    train_pred = model.predict((train_x - mean) / std)
    test_pred = model.predict((test_x - mean) / std)
    return ProbeResult(
        train_accuracy=float((train_pred == train_y).mean()),
        test_accuracy=float((test_pred == test_y).mean()),
        test_per_class=class_accuracies(test_pred, test_y, n_classes),
        iterations=iterations,
        converged=iterations < max_iter,
    )
