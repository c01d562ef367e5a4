"""The model types fflab trains: one entry each in ``MODELS``, one module each.

``MODELS`` is the one list of model types. The spec's ``models`` values and
per-model training sections, the run documents' ``model`` field, the pipeline,
the tables' row order and names, the figures' colours, the CLI's choices and
the GPU memory estimate are all read from it. A model type is its entry below
(``fflab.models.model_type.ModelType``: its name, display name, colour, default
training, memory estimate and the module that implements it) and that module
(its ``IMPLEMENTATION``: build, trainer, evaluate), which is imported on first
use: this package imports no torch until a model is built or trained.
"""

from __future__ import annotations

from fflab.models.model_type import MemoryUse, ModelType, RunShape, load_implementation
from fflab.registry import Registry


def ff_memory(shape: RunShape) -> MemoryUse:
    """FF (``fflab.models.ff_engine.FFEngine``): layer 1's input with the label
    pixels zeroed (N x 784), the pre-activation buffer (2 rows x width), the next
    layer's inputs (2N x width) and, while a layer freezes, its activations and
    their normalised copy (2 x 2N x width); minibatches add gathered rows."""
    n, rows, width, widest = shape.n_train, shape.rows, shape.width, shape.widest
    training = n * shape.inputs + 2 * rows * width + 2 * n * widest + 2 * (2 * n * width)
    if rows < n:
        training += rows * shape.inputs + 2 * rows * widest
    return MemoryUse(shape.hidden_weights, training)


def bpff_memory(shape: RunShape) -> MemoryUse:
    """BP/FF (autograd, end to end): positive and negative inputs (2 x rows x 784)
    and, per layer, what autograd keeps for the backward pass (normalised input,
    pre-activation, activation: 3 x 2 rows x width), twice for the gradients."""
    rows = shape.rows
    return MemoryUse(shape.hidden_weights, 2 * rows * shape.inputs + 2 * shape.layers * 3 * (2 * rows * shape.width))


def bp_memory(shape: RunShape) -> MemoryUse:
    """BP: the hidden layers and the 10-way head; per layer 3 x rows x width kept
    for the backward pass, twice."""
    rows, width = shape.rows, shape.width
    return MemoryUse(shape.hidden_weights + width * shape.classes + shape.classes,
                     rows * shape.inputs + 2 * shape.layers * 3 * (rows * width))


def symba_memory(shape: RunShape) -> MemoryUse:
    """SymBa (layer by layer with autograd): positive and negative inputs
    (2 x N x 784), the frozen outputs below the layer it trains (2 x N x width),
    and that one layer's autograd for both (3 x 2 rows x width, twice) plus the
    gradients' temporaries of the two halves (2 rows x width); minibatches add
    gathered rows."""
    n, rows, widest = shape.n_train, shape.rows, shape.widest
    training = 2 * n * shape.inputs + 2 * n * widest + 2 * 3 * (2 * rows * widest) + 2 * rows * widest
    if rows < n:
        training += 2 * rows * widest
    return MemoryUse(shape.hidden_weights, training)


MODELS: Registry[ModelType] = Registry("model", {model.name: model for model in (
    ModelType(
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
        memory=ff_memory,
        implementation=load_implementation("fflab.models.ff"),
        layer_by_layer=True,
        trains_without_a_class=True,
        in_paper=True,
    ),
    ModelType(
        name="bpff",
        display_name="BP/FF",
        colour="tab:red",
        description="BP/FF: same configuration as FF, end to end (paper).",
        training_defaults={"epochs": 1000, "learning_rate": 1e-2, "batch_size": None},
        # quick: 360 Adam steps (3 epochs of 60000 images in batches of 500); batches of 1000
        # give 180 steps, too few for end-to-end training (docs/science.md).
        training_presets={"quick": {"epochs": 3, "learning_rate": 3e-3, "batch_size": 500}},
        memory=bpff_memory,
        implementation=load_implementation("fflab.models.bpff"),
        in_paper=True,
    ),
    ModelType(
        name="bp",
        display_name="BP",
        colour="tab:green",
        description="BP: Adam, 20 epochs, lr 1e-2 (paper); minibatch 2048 (code).",
        training_defaults={"epochs": 20, "learning_rate": 1e-2, "batch_size": 2048},
        training_presets={"quick": {"epochs": 3, "learning_rate": 1e-2, "batch_size": 512}},
        memory=bp_memory,
        implementation=load_implementation("fflab.models.bp"),
        in_paper=True,
    ),
    ModelType(
        name="symba",
        display_name="SymBa",
        colour="tab:purple",
        description="SymBa: FF's network trained layer by layer on the symmetric loss "
        "softplus(-4 (g+ - g-)) (Lee and Song 2023); FF's schedule.",
        training_defaults={"epochs": 1000, "learning_rate": 1e-2, "batch_size": None},
        training_presets={"quick": {"epochs": 3, "learning_rate": 3e-3, "batch_size": 250}},
        memory=symba_memory,
        implementation=load_implementation("fflab.models.symba"),
        layer_by_layer=True,
    ),
)})
