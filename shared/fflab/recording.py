"""``fflab.capture`` (defined here): record a PyTorch network's representations into a
representations file (fflab.representations, docs/representations.md), for a
network trained anywhere, so that fflab's analyses can run on it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fflab.representations import Representations, write_representations_file


def _batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, labels) of a loader's batch: a pair, or a dict with ``inputs``/``labels``."""
    if isinstance(batch, dict):
        return batch["inputs"], batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError("each batch of the loader must be (inputs, labels) or a dict with 'inputs' and 'labels'")


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"a hooked module returned {type(output).__name__}, not a tensor")


def capture(
    model: torch.nn.Module,
    loader: Iterable[Any],
    layers: Sequence[str],
    path: str | Path,
    *,
    predictions: bool = True,
    class_names: Sequence[str] | None = None,
    description: dict[str, Any] | None = None,
) -> Path:
    """Run ``model`` over ``loader`` and write the outputs of its modules ``layers``
    (names as ``model.named_modules()`` gives them, e.g. ``"fc1"`` or ``"net.2"``)
    into the representations file ``path``.

    Each batch of ``loader`` is ``(inputs, labels)`` (a dict with ``inputs`` and
    ``labels`` also works). The model runs in eval mode without gradients (its
    mode is restored afterwards), on the device of its parameters; every layer's
    output is flattened per image to (N, units). With ``predictions``, the argmax
    of the model's output over its last dimension is stored as the predicted
    class (when the output is (batch, classes)). The incoming weights of every
    named ``nn.Linear`` layer are stored too (``weights_<layer>``). Returns the
    path written; ``fflab analyse-representations`` reads it.
    """
    modules = dict(model.named_modules())
    if not layers:
        raise ValueError("layers: name at least one module of the model")
    unknown = [name for name in layers if name not in modules or name == ""]
    if unknown:
        raise ValueError(f"layers: {', '.join(map(repr, unknown))} is not a module of the model; its modules: "
                         f"{', '.join(name for name in modules if name)}")
    # The file's layer names: the module names, with a letter first ("0" of a Sequential: "layer_0").
    names = [name if name[0].isalpha() else "layer_" + name.replace(".", "_") for name in layers]
    captured: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    label_batches: list[np.ndarray] = []
    prediction_batches: list[np.ndarray] = []

    def hook_for(name: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            tensor = _first_tensor(output).detach()
            captured[name].append(tensor.reshape(tensor.shape[0], -1).float().cpu().numpy())
        return hook

    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, labels = _batch(batch)
                output = model(_to(inputs, device))
                label_batches.append(torch.as_tensor(labels).reshape(-1).cpu().numpy().astype(np.int64))
                if predictions:
                    result = _first_tensor(output)
                    prediction_batches.append(result.argmax(dim=-1).reshape(-1).cpu().numpy().astype(np.int64)
                                              if result.ndim == 2 else np.zeros(0, dtype=np.int64))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    if not label_batches:
        raise ValueError("loader: it gave no batch")
    labels_all = np.concatenate(label_batches)
    predicted = np.concatenate(prediction_batches) if predictions else None
    if predicted is not None and predicted.shape != labels_all.shape:
        predicted = None  # the model's output is not one score per class
    weights = [modules[name].weight.detach().float().cpu().numpy()
               if isinstance(modules[name], torch.nn.Linear) else None for name in layers]
    n_classes = len(class_names) if class_names is not None else int(labels_all.max()) + 1
    if predicted is not None and predicted.max(initial=0) >= n_classes:
        predicted = None  # more outputs than classes: not a class prediction
    representations = Representations(
        layer_names=names,
        layers=[np.concatenate(captured[name]).astype(np.float32) for name in layers],
        labels=labels_all,
        class_names=list(class_names) if class_names is not None else [str(c) for c in range(n_classes)],
        predictions=predicted,
        weights=weights,
        description=json.loads(json.dumps(description or {})),
    )
    return write_representations_file(representations, path)
