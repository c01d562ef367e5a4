"""The FF training engine behind ``fflab.models.ff.train_ff``.

It trains exactly what the straightforward implementation trains (layer by
layer, Adam with the spec's learning rate of each layer, the same negative labels, the same
minibatches and generator draws, so the same weights up to float rounding) but
exploits the structure of the problem:

* **Shared first-layer product.** Positive and negative inputs of layer 1 are
  the same image and differ only in the label pixels: x = base + value * e_label,
  where ``base`` has the label pixels zeroed and ``value`` is the label pixel's
  value (normalisation, when the first layer has it, divides the whole row by a
  norm that does not depend on which label pixel is set). So
  z = (base @ W^T + b) + value * W[:, label]: one (N x 784) @ (784 x 784) product
  shared by positive and negative data, plus a rank-10 correction each. (With
  ``negative_labels = subsampled`` a negative row shows another image than its
  positive row: layer 1 then computes the product of each sign's rows.)
* **Sparse l_inf gradient.** With l_inf goodness and a monotone activation
  (sigmoid, relu), g = act(max_j z_j), so dLoss/dz is non-zero only at each
  row's winning unit. dLoss/dW is then a sum of input rows scaled and gathered
  per winning unit (an ``embedding_bag`` over rows grouped by unit): O(N x 784)
  work instead of the dense (784 x N) @ (N x 784) backward product. Ties are
  handled as autograd's ``amax`` does: a row whose activation maximum is reached
  by several units (sigmoid saturates in float32) splits its gradient evenly
  among them.
* **Frozen inputs normalised once**, when the layer below is frozen, not every
  epoch; positive and negative inputs of layers >= 2 are one (2N x 784) matrix,
  so their forward product is one call.
* **No per-epoch reallocation** of the large buffers: products are written
  into buffers allocated once per training run (``out=``); layer 1's shared
  product is written into the positive half of the pre-activation buffer and
  turned into the positive pre-activations in place.
* **Serial small work.** The O(N) vector work between the large operations
  runs on one CPU thread (see ``_serial``).
* Other goodness kinds take a general path: the same shared first-layer
  product, autograd for the rest (still one backward product for layer 1, since
  positive and negative data share it).

The straightforward implementation the engine is tested and benchmarked
against is ``benchmarks/reference.py``; results are in docs/benchmarks.md. On
CUDA the matrix products may use TF32 (the spec's ``tf32``: off by default
until its accuracy has been checked on a GPU, docs/benchmarks.md; never used
on the CPU).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fflab.models.common import (
    GoodnessNetwork,
    check_negative_labels,
    draw_negatives,
    embed_labels,
    goodness,
    goodness_loss,
    label_layout,
    minibatches,
    negative_classes_of,
)
from fflab.models.components import ACTIVATIONS

if TYPE_CHECKING:
    from fflab.spec import TrainingSpec


@contextmanager
def matmul_precision(device: torch.device, tf32: bool):
    """Set (and restore) TF32 for CUDA matrix products; a no-op on other devices."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def first_layer_parts(
    net: GoodnessNetwork, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 1's input with ``labels`` embedded, split as base + value * e_label.

    Returns ``base`` (N, in), the layer input with the label pixels zeroed, and
    ``value`` (N,), the label pixel's value in the layer input (the same in every
    label block of a colour image). Any label gives the same split: the label
    pixel's value and the row's norm (l_inf or l2) do not depend on which of the
    label pixels carries it.
    """
    layout = label_layout(net)
    x = net.layer_input(embed_labels(images, labels, net.spec.label_value, layout), 0)
    value = x[torch.arange(x.shape[0], device=x.device), layout.offsets[0] + labels].clone()
    layout.zero(x)  # x is a new tensor: embed_labels copies the images
    return x, value


def _stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """Stable argsort of small non-negative integer keys. On CPU numpy's radix
    sort: torch's CPU sort can take ~100x longer on some orderings of such keys
    (180 ms instead of 0.5 ms for 40000 unit indices, measured with torch 2.14)."""
    if keys.device.type == "cpu":
        order = np.argsort(keys.to(torch.int16 if keys.max() < 2**15 else torch.int64).numpy(), kind="stable")
        return torch.from_numpy(order)
    return torch.argsort(keys, stable=True)


class FFEngine:
    """Layer-by-layer FF training of ``net`` in place: the trainer of FF
    (``fflab.models.training.Trainer``: one stage per layer, resumed between
    layers). fflab.models.training runs its schedule; the benchmark times its
    single epochs (``begin_layer``/``epoch``/``end_layer``).
    """

    resumes_within_stage = False

    def __init__(
        self,
        net: GoodnessNetwork,
        images: torch.Tensor,
        labels: torch.Tensor,
        training: TrainingSpec,
        generator: torch.Generator,
        negative_labels: str = "fixed",
        tf32: bool = False,
        negative_classes: torch.Tensor | None = None,
    ):
        spec = net.spec
        self.net, self.training, self.generator = net, training, generator
        self.layout = label_layout(net)
        self.negative_labels = check_negative_labels(negative_labels)
        self.device = images.device
        self.tf32 = tf32
        self.n = images.shape[0]
        self.labels = labels
        self.labels_cpu = labels.cpu()
        self.classes = negative_classes_of(self.labels_cpu, negative_classes)
        self.fast = spec.goodness == "l_inf" and ACTIVATIONS.lookup(spec.activation).monotone

        full = training.batch_size is None or training.batch_size >= self.n
        self.rows = self.n if full else training.batch_size  # most rows of one step (per sign)
        with torch.no_grad():
            self.base, self.value = first_layer_parts(net, images, labels)
            self.pos_labels = labels
            self.pos_embed = self._label_matrix(labels, self.value)
            # Drawn here, as the straightforward implementation does, before any epoch.
            self._set_negatives(*draw_negatives(self.labels_cpu, self.classes, generator, negative_labels))

        width = max(layer.out_features for layer in net.layers)
        in_width = max(layer.in_features for layer in net.layers)
        # Flat buffers, viewed at each step's shape (always contiguous).
        self._z = self._buffer(2 * self.rows * width)  # pre-activations: positive rows, then negative
        self._row_ids = torch.arange(2 * self.rows, device=self.device)
        self._offsets = torch.zeros(width, dtype=torch.int64, device=self.device)
        if not full:
            # Layer 1's step inputs: the positive rows' base, then the negative rows' where
            # those show other images (``subsampled``).
            paired = 1 if self.neg_rows is None else 2
            self._batch_base = self._buffer(paired * self.rows * images.shape[1])
            self._batch_x = self._buffer(2 * self.rows * in_width)
        self.x = None  # inputs of the current layer >= 2: (2N, in) positive rows then negative rows
        self._frozen_shared = None  # layer 1's shared product once frozen (per_epoch negatives)
        self.index = -1
        self.stages = len(net.layers)

    # ------------------------------------------------------------------ data

    def _buffer(self, numel: int) -> torch.Tensor:
        return torch.empty(numel, dtype=self.base.dtype, device=self.device)

    @staticmethod
    def _view(buffer: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        return buffer[: rows * columns].view(rows, columns)

    def _label_matrix(self, labels: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(N, classes): the label pixels of layer 1's input (one block), ``value`` at the label."""
        matrix = torch.zeros(labels.shape[0], self.layout.n_classes, dtype=value.dtype, device=self.device)
        matrix[torch.arange(labels.shape[0], device=self.device), labels] = value
        return matrix

    @torch.no_grad()
    def _set_negatives(self, rows: torch.Tensor | None, labels: torch.Tensor) -> None:
        """The negative data of a draw (``draw_negatives``): negative row i shows image
        ``rows[i]`` (image i where ``rows`` is None) with label ``labels[i]``.

        ``layer1_base`` holds layer 1's base rows of a whole epoch: the N rows that
        both signs share, or, where the negative rows show other images
        (``subsampled``), the N positive rows then the N negative rows, which then
        get a product of their own."""
        self.neg_rows = None if rows is None else rows.to(self.device)
        self.neg_labels = labels.to(self.device)
        self.neg_value = self.value if rows is None else self.value[self.neg_rows]
        self.neg_embed = self._label_matrix(self.neg_labels, self.neg_value)
        self.layer1_base = self.base if rows is None else torch.cat([self.base, self.base[self.neg_rows]])

    @torch.no_grad()
    def _redraw_negatives(self) -> None:
        self._set_negatives(*draw_negatives(self.labels_cpu, self.classes, self.generator, self.negative_labels))
        if self.index == 0:
            return
        self._negative_inputs()

    @torch.no_grad()
    def _negative_inputs(self) -> None:
        """The current layer's negative inputs from the current negative labels,
        through the frozen layers below (per_epoch negatives)."""
        net = self.net
        first = net.layers[0]
        h = net.activation(torch.addmm(self._frozen_shared, self.neg_embed, self.layout.label_weights(first.weight)))
        for frozen in range(1, self.index):
            h = net.layer_forward(h, frozen)
        self.x[self.n :].copy_(net.layer_input(h, self.index))

    # --------------------------------------------------------------- schedule

    def begin_layer(self, index: int) -> None:
        """Start training layer ``index``: its own Adam."""
        self.index, self.epochs_done = index, 0
        layer = self.net.layers[index]
        self.optimizer = torch.optim.Adam(layer.parameters(), lr=self.training.learning_rate_of_layer(index))

    def epoch(self, epoch: int | None = None) -> float:
        """One epoch of the current layer (the next one; ``epoch``, from 0, must be
        it if given); returns its mean loss over steps."""
        if epoch is not None and epoch != self.epochs_done:
            raise ValueError(f"epoch {epoch} of layer {self.index + 1} follows epoch {self.epochs_done}")
        with matmul_precision(self.device, self.tf32):
            if self.negative_labels == "per_epoch" and self.epochs_done > 0:
                self._redraw_negatives()
            batches = minibatches(self.n, self.training.batch_size, self.generator)
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for batch in batches:
                if batch is not None:
                    batch = batch.to(self.device)
                step = self._fast_step if self.fast else self._general_step
                total += step(batch).double()
        self.epochs_done += 1
        return total.item() / len(batches)

    @torch.no_grad()
    def end_layer(self) -> None:
        """Freeze the layer and compute the next layer's (normalised) inputs once."""
        net, index = self.net, self.index
        layer = net.layers[index]
        layer.requires_grad_(False)
        if index + 1 == len(net.layers):
            self.x = None
            return
        with matmul_precision(self.device, self.tf32):
            if index == 0:
                if self.negative_labels == "per_epoch":  # kept to redraw negatives
                    self._frozen_shared = torch.addmm(layer.bias, self.base, layer.weight.t())
                x, label_pixels = self.layer1_base, (self.pos_embed, self.neg_embed)
            else:
                x, label_pixels = self.x, None
            if self.rows == self.n:  # the step buffer holds all 2N rows
                z = self._forward(self.n, x, label_pixels)
            else:
                z = self._preactivations(torch.empty(2 * self.n, layer.out_features, dtype=x.dtype, device=self.device), x, label_pixels)
            self.x = None  # let the old inputs go before the new ones are made
            h = {"sigmoid": torch.sigmoid_, "relu": torch.relu_}.get(net.spec.activation, net.activation)(z)
            x = net.layer_input(h, index + 1).contiguous()
            self.x = x.clone() if x.data_ptr() == self._z.data_ptr() else x  # never the step buffer itself

    begin_stage, end_stage = begin_layer, end_layer  # a stage of FF is a layer

    # ------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        """What ``resume`` needs beyond the weights and the generator to continue
        after the finished layers: the negative labels."""
        return {
            "neg_rows": None if self.neg_rows is None else self.neg_rows.cpu(),
            "neg_labels": self.neg_labels.cpu(),
        }

    @torch.no_grad()
    def resume(self, state: dict, stages_done: int, epochs_done: int = 0) -> None:
        """Restore the negative labels of a checkpoint ``state`` saved after
        ``stages_done`` layers (the weights already loaded), and recompute the next
        layer's frozen inputs exactly as the interrupted run computed them."""
        if epochs_done:
            raise ValueError("the FF engine resumes between layers only")
        self._set_negatives(state.get("neg_rows"), state["neg_labels"])
        for index in range(stages_done):
            self.index = index
            # With per_epoch negatives redrawn within a layer >= 2, that layer's negative
            # inputs came from _redraw_negatives (labels drawn during the layer), not from
            # end_layer of the layer below: recompute them the same way.
            if index > 0 and index == stages_done - 1 and self.negative_labels == "per_epoch" and self.training.epochs > 1:
                self._negative_inputs()
            self.end_layer()

    # ------------------------------------------------------------------ steps

    def _step_inputs(self, batch: torch.Tensor | None):
        """Rows of this step: (m, layer input for the product, label pixels of
        positive and negative rows (layer 1 only))."""
        if self.index == 0:
            if batch is None:
                return self.n, self.layer1_base, (self.pos_embed, self.neg_embed)
            m = batch.numel()
            rows = batch if self.neg_rows is None else torch.cat([batch, self.neg_rows[batch]])
            base = torch.index_select(self.base, 0, rows, out=self._view(self._batch_base, rows.numel(), self.base.shape[1]))
            return m, base, (self.pos_embed[batch], self.neg_embed[batch])
        if batch is None:
            return self.n, self.x, None
        m = batch.numel()
        rows = torch.cat([batch, batch + self.n])
        return m, torch.index_select(self.x, 0, rows, out=self._view(self._batch_x, 2 * m, self.x.shape[1])), None

    def _forward(self, m: int, x: torch.Tensor, label_pixels) -> torch.Tensor:
        """Pre-activations of the step's 2m rows (positive then negative) into the buffer."""
        out_features = self.net.layers[self.index].out_features
        return self._preactivations(self._view(self._z, 2 * m, out_features), x, label_pixels)

    @torch.no_grad()
    def _preactivations(self, z: torch.Tensor, x: torch.Tensor, label_pixels) -> torch.Tensor:
        layer = self.net.layers[self.index]
        if label_pixels is None:
            return torch.addmm(layer.bias, x, layer.weight.t(), out=z)
        m = z.shape[0] // 2
        w_labels = self.layout.label_weights(layer.weight)
        if x.shape[0] == 2 * m:  # layer 1, negative rows of other images: a product for each sign
            torch.addmm(layer.bias, x, layer.weight.t(), out=z)
            z[:m].addmm_(label_pixels[0], w_labels)
            z[m:].addmm_(label_pixels[1], w_labels)
            return z
        # Layer 1: the shared product goes into the positive half, the negative half
        # is it plus the negative label pixels, then the positive label pixels are added.
        shared = torch.addmm(layer.bias, x, layer.weight.t(), out=z[:m])
        torch.addmm(shared, label_pixels[1], w_labels, out=z[m:])
        shared.addmm_(label_pixels[0], w_labels)
        return z

    def _fast_step(self, batch: torch.Tensor | None) -> torch.Tensor:
        """l_inf goodness, monotone activation: sparse gradient, one Adam step."""
        net, spec = self.net, self.net.spec
        layer = net.layers[self.index]
        m, x, label_pixels = self._step_inputs(batch)
        z = self._forward(m, x, label_pixels)
        with torch.no_grad():
            top_values, top_units = torch.topk(z, 2, dim=1)
        with self._serial():
            # The loss depends on z only through each row's maximum: autograd on those
            # 2m numbers gives dLoss/dz at the winning units as the dense graph does.
            z_max = top_values[:, 0].contiguous().requires_grad_(True)
            with torch.enable_grad():
                h_max = net.activation(z_max)
                loss = goodness_loss(h_max[:m], h_max[m:], spec.threshold)
                (coef,) = torch.autograd.grad(loss, z_max)
            with torch.no_grad():
                rows, units = self._row_ids[: 2 * m], top_units[:, 0]
                # Candidate ties: the two largest activations equal up to a few ulps
                # (elementwise kernels may round one input differently depending on
                # where it sits in memory); _split_ties decides on the full rows.
                top_h = net.activation(top_values)
                near = top_h[:, 0] - top_h[:, 1] <= 4 * torch.finfo(z.dtype).eps * top_h[:, 0].abs()
                tied = (near & (coef != 0)).nonzero().squeeze(1)
                if tied.numel() > 0:
                    rows, units, coef = self._split_ties(z, tied, units, coef)
        self._apply_sparse_gradient(layer, m, x, batch, rows, units, coef)
        with self._serial():
            self.optimizer.step()
        return loss.detach()

    @contextmanager
    def _serial(self):
        """One CPU thread for the O(N) vector work between the large operations: on
        a loaded machine every parallel region of a small operation can wait a
        scheduler time slice for its second thread."""
        threads = torch.get_num_threads()
        if self.device.type != "cpu" or threads == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _split_ties(self, z, tied, units, coef):
        """Rows whose activation maximum several units reach: autograd's amax gives
        each of them an equal share of the row's gradient."""
        winners = units[tied]
        h = self.net.activation(z[tied])  # as the dense implementation computes them
        reached = h == h.amax(dim=1, keepdim=True)
        reached[torch.arange(tied.numel(), device=z.device), winners] = True
        coef = coef.clone()
        coef[tied] = coef[tied] / reached.sum(dim=1).to(coef.dtype)
        which, extra_units = reached.nonzero(as_tuple=True)
        keep = extra_units != winners[which]
        extra_rows = tied[which[keep]]
        rows = torch.cat([self._row_ids[: units.numel()], extra_rows])
        return rows, torch.cat([units, extra_units[keep]]), torch.cat([coef, coef[extra_rows]])

    @torch.no_grad()
    def _apply_sparse_gradient(self, layer, m, x, batch, rows, units, coef) -> None:
        """dW = sum over (row, unit, coef) of coef * x_row in W's row ``unit``; db likewise."""
        out_features, in_features = layer.weight.shape
        first = self.index == 0
        with self._serial():
            shared = first and x.shape[0] == m
            sources = rows - m * (rows >= m) if shared else rows  # layer 1: both signs read the shared base
            order = _stable_argsort(units)
            counts = torch.bincount(units, minlength=out_features)
            offsets = self._offsets[:out_features]
            torch.cumsum(counts[:-1], 0, out=offsets[1:])
            sources, weights = sources[order], coef[order]
        grad_w = F.embedding_bag(sources, x, offsets, mode="sum", per_sample_weights=weights)
        with self._serial():
            if first:  # the label pixel, which ``base`` leaves out
                step = slice(None) if batch is None else batch
                label_of_row = torch.cat([self.pos_labels[step], self.neg_labels[step]])
                value_of_row = torch.cat([self.value[step], self.neg_value[step]])
                flat, label_grad = grad_w.view(-1), coef * value_of_row[rows]
                for offset in self.layout.offsets:  # every label block holds the same value
                    flat.index_add_(0, units * in_features + offset + label_of_row[rows], label_grad)
            grad_b = torch.zeros(out_features, dtype=coef.dtype, device=coef.device).index_add_(0, units, coef)
        layer.weight.grad, layer.bias.grad = grad_w, grad_b

    def _general_step(self, batch: torch.Tensor | None) -> torch.Tensor:
        """Any goodness and activation: autograd, with the shared first-layer product."""
        net, spec = self.net, self.net.spec
        layer = net.layers[self.index]
        m, x, label_pixels = self._step_inputs(batch)
        if label_pixels is None:
            h = net.activation(F.linear(x, layer.weight, layer.bias))
            g_pos, g_neg = goodness(h[:m], spec.goodness), goodness(h[m:], spec.goodness)
        else:
            product = F.linear(x, layer.weight, layer.bias)
            # Shared by both signs, or the positive rows' then the negative rows' (``subsampled``).
            pos_product, neg_product = (product, product) if x.shape[0] == m else (product[:m], product[m:])
            w_labels = self.layout.label_weights(layer.weight)
            g_pos = goodness(net.activation(torch.addmm(pos_product, label_pixels[0], w_labels)), spec.goodness)
            g_neg = goodness(net.activation(torch.addmm(neg_product, label_pixels[1], w_labels)), spec.goodness)
        loss = goodness_loss(g_pos, g_neg, spec.threshold)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
