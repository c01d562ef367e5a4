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

import torch

from fflab.models.common import Checkpoint, GoodnessNetwork, ProgressCallback, StopCheck
from fflab.models.ff_engine import FFEngine
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
) -> list[list[float]]:
    """Train ``net`` in place, one layer after the other.

    images: (N, 784) on the net's device; labels: (N,). Each layer gets its own
    Adam with ``training.learning_rate`` and ``training.epochs`` epochs of
    ``minibatches(N, training.batch_size, generator)``; negative labels are drawn
    once (``fixed``) or again every epoch (``per_epoch``), from ``negative_classes``
    (sorted; default: the classes present in ``labels``). ``progress`` is called
    after every epoch; ``should_stop`` is checked before every epoch and raises
    ``Cancelled``. Returns the loss of each epoch, per layer.

    With a ``checkpoint`` (``fflab.models.common.Checkpoint``), the state after
    every finished layer is saved to it, and a run that finds one resumes after
    its last finished layer, with the same result as an uninterrupted run.
    """
    engine = FFEngine(net, images, labels, training, generator, negative_labels,
                      negative_classes=negative_classes)
    return engine.train(progress, should_stop, checkpoint)
