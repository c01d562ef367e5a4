"""The building blocks a network is made of, one registry each.

Each registry is the one list of its options: fflab.spec derives the allowed
values of its fields from these, so a new goodness, normalisation, activation,
label value or prediction rule is one entry here, and an unknown name raises
naming the allowed ones (``Registry.lookup``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fflab.registry import Registry

if TYPE_CHECKING:
    import torch

# Every entry is written with tensor methods, so that the spec reads these names
# without importing torch.
Rowwise = Callable[["torch.Tensor"], "torch.Tensor"]

# Each row's norm that a layer's input is divided by; None leaves it unchanged. (N, d) -> (N, 1)
NORMALIZATIONS: Registry[Callable[[torch.Tensor], torch.Tensor | None]] = Registry("normalization", {
    "l_inf": lambda x: x.abs().amax(dim=1, keepdim=True),
    "l2": lambda x: x.norm(dim=1, keepdim=True),
    "none": lambda x: None,
})

# A layer's goodness: (N, n) outputs -> (N,).
GOODNESS: Registry[Rowwise] = Registry("goodness", {
    "l_inf": lambda h: h.amax(dim=1),
    "l2": lambda h: h.norm(dim=1),
    "l1": lambda h: h.abs().sum(dim=1),
    "mean_squares": lambda h: h.pow(2).mean(dim=1),
    "sum_squares": lambda h: h.pow(2).sum(dim=1),  # Hinton's FF paper (2022); theta scales with the width
})


@dataclass(frozen=True)
class Activation:
    """``fn``; ``upper_bound``: the largest value it can take (Method 2's density
    correction bound; None: unbounded); ``monotone``: non-decreasing, so the FF
    engine's sparse l_inf gradient applies."""

    fn: Rowwise
    upper_bound: float | None
    monotone: bool


ACTIVATIONS: Registry[Activation] = Registry("activation", {
    "sigmoid": Activation(lambda x: x.sigmoid(), upper_bound=1.0, monotone=True),
    "relu": Activation(lambda x: x.relu(), upper_bound=None, monotone=True),
})

# The value written into the label pixel: (N, 784) images -> (N,).
LABEL_VALUES: Registry[Rowwise] = Registry("label_value", {
    "image_max": lambda images: images.amax(dim=1),
    "batch_max": lambda images: images.amax().expand(images.shape[0]),
})

# Which channels of a colour image carry the label (fflab.models.common.LabelLayout).
LABEL_CHANNELS: Registry[str] = Registry("label_channels", {
    "every": "the first row of every channel (the authors' code, scheduler/data.py label_images(rgb=True))",
    "first": "the first row of the first channel only",
})

# (N, 10, layers) goodness -> (N, 10) scores whose argmax is the prediction.
PREDICTION_RULES: Registry[Rowwise] = Registry("prediction", {
    "sum": lambda scores: scores.sum(dim=2),
    "softmax_sum": lambda scores: scores.softmax(dim=1).sum(dim=2),
})

# When FF and BP/FF draw the wrong labels of the negative data.
NEGATIVE_LABEL_DRAWS: Registry[str] = Registry("negative_labels", {
    "fixed": "one wrong label per image, drawn once before training",
    "per_epoch": "a new wrong label per image at every epoch",
    "subsampled": "every image with each of its wrong labels, as many of these copies kept as there "
                  "are images, drawn once before training (the authors' code): some images appear "
                  "twice or more, about a third not at all",
})
