"""BP/FF: the FF network and goodness loss, trained end to end by backpropagation
(paper section 3.2).

The goodness that is pushed up for positive data and down for negative data is
the total over layers, so gradients flow through every layer. The threshold is
the per-layer threshold times the number of layers, so that it means the same
per layer as in FF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

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
    goodness_loss,
    minibatches,
    negative_classes_of,
)
from fflab.models.model_type import Implementation

if TYPE_CHECKING:
    from fflab.spec import TrainingSpec


class BPFFTrainer:
    """End-to-end training of the goodness network (one stage): the goodness summed
    over layers, threshold ``spec.threshold * layers``, Adam with
    ``training.learning_rate`` over ``minibatches(N, training.batch_size, generator)``.
    The negative data are drawn (``draw_negatives``) when the trainer is made, and
    again before every epoch but the first with ``per_epoch``. Resumes after any
    epoch (its state: Adam's and the negative data of that epoch)."""

    stages = 1
    resumes_within_stage = True

    def __init__(self, job: TrainingJob):
        net = job.net
        spec = net.spec
        self.net, self.images, self.labels_cpu = net, job.images, job.labels.cpu()
        self.training, self.generator = job.training, job.generator
        self.negative_labels = check_negative_labels(job.negative_labels)
        self.classes = negative_classes_of(job.labels, job.negative_classes)
        self.positive = embed_labels(job.images, job.labels, spec.label_value, net.label_layout)
        self.threshold = spec.threshold * spec.layers
        self._set_negatives(*draw_negatives(self.labels_cpu, self.classes, job.generator, self.negative_labels))
        self.optimizer = torch.optim.Adam(net.parameters(), lr=job.training.learning_rate)

    def _set_negatives(self, rows: torch.Tensor | None, wrong: torch.Tensor) -> None:
        self.rows, self.wrong = rows, wrong
        self.negative = embed_negatives(self.images, rows, wrong, self.net.spec.label_value, self.net.label_layout)

    def begin_stage(self, index: int) -> None:
        pass

    def epoch(self, epoch: int) -> float:
        if self.negative_labels == "per_epoch" and epoch > 0:
            self._set_negatives(*draw_negatives(self.labels_cpu, self.classes, self.generator, self.negative_labels))
        epoch_loss = 0.0
        batches = minibatches(self.images.shape[0], self.training.batch_size, self.generator)
        for batch in batches:
            x_pos = self.positive if batch is None else self.positive[batch]
            x_neg = self.negative if batch is None else self.negative[batch]
            g_pos = self.net.layer_goodness(x_pos).sum(dim=1)
            g_neg = self.net.layer_goodness(x_neg).sum(dim=1)
            loss = goodness_loss(g_pos, g_neg, self.threshold)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            epoch_loss += loss.item()
        return epoch_loss / len(batches)

    def end_stage(self) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "negative_rows": self.rows, "wrong_labels": self.wrong}

    def resume(self, state: dict[str, Any], stages_done: int, epochs_done: int) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._set_negatives(state["negative_rows"], state["wrong_labels"])


def train_bpff(
    net: GoodnessNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    generator: torch.Generator,
    negative_labels: str = "fixed",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
    negative_classes: torch.Tensor | None = None,
) -> list[float]:
    """Train ``net`` in place. images: (N, 784) on the net's device; labels: (N,).

    Returns the loss of each epoch. With a ``checkpoint``, the state is saved to
    it every ``checkpoint_every`` epochs (not after the last), and a run that
    finds one resumes from it, with the same result as an uninterrupted run
    (fflab.models.training). Wrong labels are drawn from ``negative_classes``
    (sorted; default: the classes present in ``labels``).
    """
    job = TrainingJob(net=net, images=images, labels=labels, training=training, generator=generator,
                      negative_labels=negative_labels, negative_classes=negative_classes, progress=progress,
                      should_stop=should_stop, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    return MODELS["bpff"].train(job)[0]


IMPLEMENTATION = Implementation(build=GoodnessNetwork, trainer=BPFFTrainer, evaluate=evaluate_goodness_network)
