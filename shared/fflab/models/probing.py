"""Forward passes that probe a trained network (for ``fflab.run_analyses``).

* ``neutral_representations``: each hidden layer's output with a neutral label
  (every label pixel at a tenth of the label value, Hinton's choice for reading
  FF layers out with a linear classifier), so that a probe on FF or BP/FF
  representations cannot read the label off the input; BP's hidden outputs.
* ``representations_with_label``: the goodness network's outputs with one
  chosen label embedded in every image (label selectivity).
* ``lesioned_predictions``: predictions with a set of units of one layer
  silenced (activation forced to 0, so the layers above see the silenced
  output), for several unit sets at once; the layers below are computed once.

Deterministic, no gradients; results on the CPU. Shapes: ``N`` images,
``n`` units per layer, ``L`` layers, 10 labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from fflab.models.bp import BPClassifier
from fflab.models.common import GoodnessNetwork, embed_labels, goodness, label_layout
from fflab.models.components import PREDICTION_RULES

__all__ = ["lesioned_predictions", "neutral_representations", "representations_with_label"]


def _device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def neutral_representations(net: GoodnessNetwork | BPClassifier, images: torch.Tensor,
                            chunk: int = 2000) -> list[torch.Tensor]:
    """Per layer (N, n): outputs with a neutral label (goodness network) or the
    hidden outputs (BP). images: (N, 784) standardised."""
    device = _device(net)
    per_chunk = []
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].to(device)
        if isinstance(net, BPClassifier):
            outputs = net.hidden(batch)
        else:
            layout = label_layout(net)
            x = embed_labels(batch, torch.zeros(batch.shape[0], dtype=torch.long, device=device),
                             net.spec.label_value, layout)
            for offset in layout.offsets:  # the label's value spread evenly over the label pixels
                x[:, offset : offset + layout.n_classes] = x[:, offset : offset + 1] / layout.n_classes
            outputs = net(x)
        per_chunk.append([h.cpu() for h in outputs])
    return [torch.cat(layer) for layer in zip(*per_chunk)]


@torch.no_grad()
def representations_with_label(net: GoodnessNetwork, images: torch.Tensor, label: int,
                               chunk: int = 2000) -> list[torch.Tensor]:
    """Per layer (N, n): outputs with ``label`` embedded in every image."""
    layout = label_layout(net)
    if not 0 <= label < layout.n_classes:
        raise ValueError(f"label must be in 0..{layout.n_classes - 1}; got {label}")
    device = _device(net)
    per_chunk = []
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk].to(device)
        labels = torch.full((batch.shape[0],), label, dtype=torch.long, device=device)
        per_chunk.append([h.cpu() for h in net(embed_labels(batch, labels, net.spec.label_value, layout))])
    return [torch.cat(layer) for layer in zip(*per_chunk)]


@torch.no_grad()
def lesioned_predictions(net: GoodnessNetwork | BPClassifier, images: torch.Tensor, layer: int,
                         unit_sets: Sequence[Iterable[int]], rule: str = "sum") -> list[torch.Tensor]:
    """(N,) predicted labels with each unit set of hidden layer ``layer`` (from 1) silenced.

    A goodness network predicts by goodness with every label embedded, layers
    combined by ``rule`` (``sum`` or ``softmax_sum``); BP by its head. An empty
    unit set gives the intact network's predictions.
    """
    n_layers = len(net.layers)
    if not 1 <= layer <= n_layers:
        raise ValueError(f"layer must be in 1..{n_layers}; got {layer}")
    combine = PREDICTION_RULES.lookup(rule)
    device = _device(net)
    images = images.to(device)
    index = layer - 1
    if isinstance(net, BPClassifier):
        h = images
        for i in range(index + 1):
            h = net.activation(net.layers[i](h))
        predictions = []
        for units in unit_sets:
            out = h.clone()
            out[:, torch.as_tensor(list(units), dtype=torch.long, device=device)] = 0.0
            for i in range(index + 1, n_layers):
                out = net.activation(net.layers[i](out))
            predictions.append(net.head(out).argmax(dim=1).cpu())
        return predictions
    n = images.shape[0]
    # Every image with every label: rows ordered label-major, (classes N, in).
    layout = label_layout(net)
    labels = torch.arange(layout.n_classes, device=device).repeat_interleave(n)
    h = embed_labels(images.repeat(layout.n_classes, 1), labels, net.spec.label_value, layout)
    below = []
    for i in range(index + 1):
        h = net.layer_forward(h, i)
        if i < index:
            below.append(goodness(h, net.spec.goodness))
    predictions = []
    for units in unit_sets:
        out = h.clone()
        out[:, torch.as_tensor(list(units), dtype=torch.long, device=device)] = 0.0
        per_layer = below + [goodness(out, net.spec.goodness)]
        for i in range(index + 1, n_layers):
            out = net.layer_forward(out, i)
            per_layer.append(goodness(out, net.spec.goodness))
        scores = torch.stack(per_layer, dim=1).view(layout.n_classes, n, n_layers).transpose(0, 1)
        predictions.append(combine(scores).argmax(dim=1).cpu())
    return predictions
