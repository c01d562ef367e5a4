"""A toy model type, complete in this one place: the model-type contract tests
(tests/test_checkpoint.py, tests/test_gpu.py) check it as they check every entry
of fflab.models.MODELS, and fail it where it is made incomplete.

``TOY`` is a softmax classifier on the pixels with one hidden layer, trained in
two stages (the hidden layer on cross-entropy through a throw-away head, then
the head on the frozen layer), each stage resumed within it (Adam's state in the
checkpoint). ``TOY_IMPLEMENTATION`` is what ``TOY.implementation()`` loads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fflab.models.common import Evaluation, TrainingJob, minibatches
from fflab.models.model_type import IMAGE_PIXELS, N_CLASSES, Implementation, MemoryUse, ModelType, RunShape


class ToyNetwork(nn.Module):
    def __init__(self, spec, **data_shape):  # the data set's sizes: the toy is MNIST's only
        super().__init__()
        self.hidden = nn.Linear(IMAGE_PIXELS, spec.width)
        self.head = nn.Linear(spec.width, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.hidden(x)))


class ToyTrainer:
    stages = 2
    resumes_within_stage = True

    def __init__(self, job: TrainingJob):
        self.net, self.images, self.labels = job.net, job.images, job.labels
        self.training, self.generator = job.training, job.generator

    def begin_stage(self, index: int) -> None:
        self.index = index
        part = self.net.hidden if index == 0 else self.net.head
        self.optimizer = torch.optim.Adam(part.parameters(), lr=self.training.learning_rate)

    def epoch(self, epoch: int) -> float:
        batches = minibatches(self.images.shape[0], self.training.batch_size, self.generator)
        total = 0.0
        for batch in batches:
            x = self.images if batch is None else self.images[batch]
            y = self.labels if batch is None else self.labels[batch]
            loss = F.cross_entropy(self.net(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        return total / len(batches)

    def end_stage(self) -> None:
        (self.net.hidden if self.index == 0 else self.net.head).requires_grad_(False)

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def resume(self, state: dict[str, Any], stages_done: int, epochs_done: int) -> None:
        for index in range(stages_done):
            self.index = index
            self.end_stage()
        if epochs_done:
            self.begin_stage(stages_done)
            self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def evaluate(net: ToyNetwork, images: torch.Tensor, labels: torch.Tensor, spec: Any) -> Evaluation:
    hidden = torch.sigmoid(net.hidden(images))
    return Evaluation(predictions=net.head(hidden).argmax(dim=1), layers=[hidden], arrays={})


def toy_memory(shape: RunShape) -> MemoryUse:
    """The hidden layer and head; per step the input rows, and the hidden and
    output activations kept for the backward pass, twice."""
    rows = shape.rows
    weights = IMAGE_PIXELS * shape.width + shape.width + shape.width * N_CLASSES + N_CLASSES
    return MemoryUse(weights, rows * IMAGE_PIXELS + 2 * 3 * rows * (shape.width + N_CLASSES))


TOY_IMPLEMENTATION = Implementation(build=ToyNetwork, trainer=ToyTrainer, evaluate=evaluate)

TOY = ModelType(
    name="toy",
    display_name="Toy",
    colour="tab:gray",
    description="A softmax classifier with one hidden layer, in two stages (tests).",
    training_defaults={"epochs": 3, "learning_rate": 1e-2, "batch_size": 512},
    training_presets={},
    memory=toy_memory,
    implementation=lambda: TOY_IMPLEMENTATION,
)
