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

from fflab.models.common import (
    Checkpoint,
    GoodnessNetwork,
    ModelType,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    evaluate_goodness_network,
)
from fflab.models.ff_engine import FFEngine

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
    its last finished layer, with the same result as an uninterrupted run.
    """
    engine = FFEngine(net, images, labels, training, generator, negative_labels,
                      negative_classes=negative_classes, tf32=tf32)
    return engine.train(progress, should_stop, checkpoint)


def train(job: TrainingJob) -> list[list[float]]:
    return train_ff(job.net, job.images, job.labels, job.training, job.generator, job.negative_labels,
                    job.progress, job.should_stop, job.checkpoint, job.negative_classes, job.tf32)


MODEL = ModelType(
    name="ff",
    display_name="FF",
    colour="tab:blue",
    description="FF: each layer trained by full-batch Adam, 1000 epochs, lr 1e-2 (paper).",
    training_defaults={"epochs": 1000, "learning_rate": 1e-2, "batch_size": None},
    # quick: 720 Adam steps per layer (3 epochs of 60000 images in batches of 250), near
    # the paper's 1000. Layer 1 at lr 3e-3 (0.6 x 5e-3) keeps the classes apart; the
    # layers above at 5e-3, since their inhibition forms with lr x steps and 3e-3 leaves
    # layer 3 at 0.12 positive weights (docs/science.md, "What the quick preset shows").
    training_presets={"quick": {"epochs": 3, "learning_rate": 5e-3, "batch_size": 250,
                                "layer_learning_rate_factors": [0.6, 1.0]}},
    build=GoodnessNetwork,
    train=train,
    evaluate=evaluate_goodness_network,
    layer_by_layer=True,
    trains_without_a_class=True,
    in_paper=True,
)
