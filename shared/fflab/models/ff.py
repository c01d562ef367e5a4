"""FF: the Forward-Forward algorithm, trained layer by layer (paper section 3.1).

Each layer learns on its own to give high goodness to positive data (the true
label embedded) and low goodness to negative data (a wrong label). When a layer
is done it is frozen, and its outputs on positive and negative data become the
next layer's inputs; no gradient ever crosses a layer.

The work is done by ``fflab.models.ff_engine.FFEngine``, which trains the same
thing as the straightforward implementation (``benchmarks/reference.py``) but
shares layer 1's product between positive and negative data, uses the sparse
gradient of l_inf goodness, normalises frozen inputs once and reuses its
buffers (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fflab.models import MODELS
from fflab.models.common import (
    Checkpoint,
    GoodnessNetwork,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    evaluate_goodness_network,
)
from fflab.models.ff_engine import FFEngine
from fflab.models.model_type import Implementation

if TYPE_CHECKING:
    from fflab.spec import TrainingSpec


def train_ff(
    net: GoodnessNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    generator: torch.Generator,
    negative_labels: str = "fixed",
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint: Checkpoint | None = None,
    negative_classes: torch.Tensor | None = None,
    tf32: bool = False,
) -> list[list[float]]:
    """Train ``net`` in place, one layer after the other.

    images: (N, 784) on the net's device; labels: (N,). Each layer gets its own
    Adam with ``training.learning_rate_of_layer(index)`` and ``training.epochs`` epochs of
    ``minibatches(N, training.batch_size, generator)``; the negative data are drawn
    (``draw_negatives``) once (``fixed``, ``subsampled``) or again every epoch (``per_epoch``), from ``negative_classes``
    (sorted; default: the classes present in ``labels``). ``progress`` is called
    after every epoch; ``should_stop`` is checked before every epoch and raises
    ``Cancelled``. Returns the loss of each epoch, per layer.

    With a ``checkpoint`` (``fflab.models.common.Checkpoint``), the state after
    every finished layer is saved to it, and a run that finds one resumes after
    its last finished layer, with the same result as an uninterrupted run
    (fflab.models.training).
    """
    job = TrainingJob(net=net, images=images, labels=labels, training=training, generator=generator,
                      negative_labels=negative_labels, negative_classes=negative_classes, progress=progress,
                      should_stop=should_stop, checkpoint=checkpoint, tf32=tf32)
    return MODELS["ff"].train(job)


def ff_trainer(job: TrainingJob) -> FFEngine:
    """FF's trainer: the engine, on the job's data."""
    return FFEngine(job.net, job.images, job.labels, job.training, job.generator, job.negative_labels,
                    negative_classes=job.negative_classes, tf32=job.tf32)


IMPLEMENTATION = Implementation(build=GoodnessNetwork, trainer=ff_trainer, evaluate=evaluate_goodness_network)
