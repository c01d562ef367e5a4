"""BP/FF: the FF network and goodness loss, trained end to end by backpropagation
(paper section 3.2).

The goodness that is pushed up for positive data and down for negative data is
the total over layers, so gradients flow through every layer. The threshold is
the per-layer threshold times the number of layers, so that it means the same
per layer as in FF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fflab.models.common import (
    Cancelled,
    Checkpoint,
    GoodnessNetwork,
    ModelType,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    TrainingProgress,
    check_checkpoint_every,
    check_negative_labels,
    cpu_state,
    draw_negatives,
    embed_labels,
    embed_negatives,
    evaluate_goodness_network,
    goodness_loss,
    minibatches,
    negative_classes_of,
    resume_state,
)

if TYPE_CHECKING:
    from fflab.spec import TrainingSpec


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
    finds one resumes from it, with the same result as an uninterrupted run.
    Wrong labels are drawn from ``negative_classes`` (sorted; default: the
    classes present in ``labels``).
    """
    spec = net.spec
    check_negative_labels(negative_labels)
    check_checkpoint_every(checkpoint, checkpoint_every)
    classes = negative_classes_of(labels, negative_classes)
    positive = embed_labels(images, labels, spec.label_value)

    rows, wrong = draw_negatives(labels.cpu(), classes, generator, negative_labels)
    threshold = spec.threshold * spec.layers
    optimizer = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    losses: list[float] = []
    state = resume_state(checkpoint, "bpff")
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        rows, wrong = state.get("negative_rows"), state["wrong_labels"]
        losses = list(state["losses"])
    negative = embed_negatives(images, rows, wrong, spec.label_value)
    for epoch in range(len(losses), training.epochs):
        if should_stop is not None and should_stop():
            raise Cancelled()
        if negative_labels == "per_epoch" and epoch > 0:
            rows, wrong = draw_negatives(labels.cpu(), classes, generator, negative_labels)
            negative = embed_negatives(images, rows, wrong, spec.label_value)
        epoch_loss = 0.0
        batches = minibatches(images.shape[0], training.batch_size, generator)
        for batch in batches:
            x_pos = positive if batch is None else positive[batch]
            x_neg = negative if batch is None else negative[batch]
            g_pos = net.layer_goodness(x_pos).sum(dim=1)
            g_neg = net.layer_goodness(x_neg).sum(dim=1)
            loss = goodness_loss(g_pos, g_neg, threshold)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
        losses.append(epoch_loss / len(batches))
        if progress is not None:
            progress(TrainingProgress("bpff", epoch + 1, training.epochs, losses[-1]))
        if checkpoint is not None and len(losses) % checkpoint_every == 0 and len(losses) < training.epochs:
            checkpoint.save({
                "trainer": "bpff", "epoch": len(losses), "net": cpu_state(net),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "negative_rows": rows, "wrong_labels": wrong, "losses": list(losses),
            })
    return losses


def train(job: TrainingJob) -> list[list[float]]:
    return [train_bpff(job.net, job.images, job.labels, job.training, job.generator, job.negative_labels,
                       job.progress, job.should_stop, job.checkpoint, job.checkpoint_every, job.negative_classes)]


MODEL = ModelType(
    name="bpff",
    display_name="BP/FF",
    colour="tab:red",
    description="BP/FF: same configuration as FF, end to end (paper).",
    training_defaults={"epochs": 1000, "learning_rate": 1e-2, "batch_size": None},
    # quick: 360 Adam steps (3 epochs of 60000 images in batches of 500); batches of 1000
    # give 180 steps, too few for end-to-end training (docs/science.md).
    training_presets={"quick": {"epochs": 3, "learning_rate": 3e-3, "batch_size": 500}},
    build=GoodnessNetwork,
    train=train,
    evaluate=evaluate_goodness_network,
    in_paper=True,
)
