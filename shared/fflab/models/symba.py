"""SymBa: Forward-Forward with a symmetric loss on the goodness gap (Lee and
Song, 2023, "SymBa: A Symmetric Balanced Learning Approach for the FF
Algorithm").

The network, label embedding, goodness and prediction are FF's; only the loss
differs. FF pushes positive goodness above the threshold and negative goodness
below it, each term on its own; SymBa trains each layer on the gap between the
two, ``softplus(-alpha (g+ - g-))``, which balances the gradients of positive
and negative data and needs no threshold. Layers are trained one after the
other, on the frozen outputs of the layers below, as in FF, and checkpointed
after every layer, as FF is (fflab.models.training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from fflab.models import MODELS
from fflab.models.common import (
    Checkpoint,
    GoodnessNetwork,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    check_negative_labels,
    draw_negatives,
    embed_labels,
    embed_negatives,
    evaluate_goodness_network,
    goodness,
    minibatches,
    negative_classes_of,
)
from fflab.models.model_type import Implementation

if TYPE_CHECKING:
    from fflab.spec import TrainingSpec

ALPHA = 4.0  # the scale of the goodness gap in the loss (the SymBa paper's)


def symba_loss(positive: torch.Tensor, negative: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """Mean of softplus(-alpha (g+ - g-)) over pairs of positive and negative goodness, (B,) each."""
    return F.softplus(-alpha * (positive - negative)).mean()


class SymBaTrainer:
    """Layer-by-layer training on the symmetric loss (one stage per hidden layer):
    each layer gets its own Adam with ``training.learning_rate_of_layer(index)``
    over ``minibatches(N, training.batch_size, generator)``, on the frozen outputs
    of the layers below. The negative data are drawn (``draw_negatives``) when the
    trainer is made, and again before every epoch but a layer's first with
    ``per_epoch``. Resumes between layers (its state: the negative data)."""

    resumes_within_stage = False

    def __init__(self, job: TrainingJob):
        net = job.net
        self.net, self.images, self.labels_cpu = net, job.images, job.labels.cpu()
        self.training, self.generator = job.training, job.generator
        self.stages = len(net.layers)
        self.negative_labels = check_negative_labels(job.negative_labels)
        self.classes = negative_classes_of(job.labels, job.negative_classes)
        self.positive = embed_labels(job.images, job.labels, net.spec.label_value, net.label_layout)
        self._set_negatives(*draw_negatives(self.labels_cpu, self.classes, job.generator, self.negative_labels))

    def _set_negatives(self, rows: torch.Tensor | None, wrong: torch.Tensor) -> None:
        self.rows, self.wrong = rows, wrong
        self.negative = embed_negatives(self.images, rows, wrong, self.net.spec.label_value, self.net.label_layout)

    @torch.no_grad()
    def _below(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layers' output under the current layer."""
        for lower in range(self.index):
            x = self.net.layer_forward(x, lower)
        return x

    def begin_stage(self, index: int) -> None:
        self.index = index
        self.optimizer = torch.optim.Adam(self.net.layers[index].parameters(),
                                          lr=self.training.learning_rate_of_layer(index))
        self.x_pos, self.x_neg = self._below(self.positive), self._below(self.negative)

    def epoch(self, epoch: int) -> float:
        net, spec, index = self.net, self.net.spec, self.index
        if self.negative_labels == "per_epoch" and epoch > 0:
            self._set_negatives(*draw_negatives(self.labels_cpu, self.classes, self.generator, self.negative_labels))
            self.x_neg = self._below(self.negative)
        batches = minibatches(self.images.shape[0], self.training.batch_size, self.generator)
        total = 0.0
        for batch in batches:
            h_pos = net.layer_forward(self.x_pos if batch is None else self.x_pos[batch], index)
            h_neg = net.layer_forward(self.x_neg if batch is None else self.x_neg[batch], index)
            loss = symba_loss(goodness(h_pos, spec.goodness), goodness(h_neg, spec.goodness))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        return total / len(batches)

    def end_stage(self) -> None:
        self.net.layers[self.index].requires_grad_(False)
        self.x_pos = self.x_neg = None

    def state(self) -> dict[str, Any]:
        return {"negative_rows": self.rows, "wrong_labels": self.wrong}

    def resume(self, state: dict[str, Any], stages_done: int, epochs_done: int) -> None:
        self._set_negatives(state["negative_rows"], state["wrong_labels"])
        for index in range(stages_done):
            self.net.layers[index].requires_grad_(False)


def train_symba(
    net: GoodnessNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    generator: torch.Generator,
    negative_labels: str = "fixed",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    negative_classes: torch.Tensor | None = None,
    checkpoint: Checkpoint | None = None,
) -> list[list[float]]:
    """Train ``net`` in place, layer by layer; returns the loss of each epoch, per layer.

    images: (N, 784) on the net's device; labels: (N,). Wrong labels are drawn from
    ``negative_classes`` (sorted; default: the classes present in ``labels``). With a
    ``checkpoint``, the state after every finished layer is saved to it, and a run
    that finds one resumes after its last finished layer, with the same result as
    an uninterrupted run (fflab.models.training).
    """
    job = TrainingJob(net=net, images=images, labels=labels, training=training, generator=generator,
                      negative_labels=negative_labels, negative_classes=negative_classes, progress=progress,
                      should_stop=should_stop, checkpoint=checkpoint)
    return MODELS["symba"].train(job)


IMPLEMENTATION = Implementation(build=GoodnessNetwork, trainer=SymBaTrainer, evaluate=evaluate_goodness_network)
