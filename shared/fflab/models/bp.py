"""BP: the same hidden layers with a linear 10-way head, trained on cross-entropy
by backpropagation (paper section 3.3). No label embedding, no normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from fflab.data import N_CLASSES
from fflab.models import MODELS
from fflab.models.common import (
    Checkpoint,
    Evaluation,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    activation_fn,
    minibatches,
)
from fflab.models.model_type import Implementation

if TYPE_CHECKING:
    from fflab.spec import ExperimentSpec, NetworkSpec, TrainingSpec


class BPClassifier(nn.Module):
    def __init__(self, spec: NetworkSpec, in_features: int = 784, n_classes: int = N_CLASSES, channels: int = 1):
        super().__init__()
        self.spec = spec
        widths = [in_features] + [spec.width] * spec.layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(spec.width, n_classes)  # the data set's classes
        self.activation = activation_fn(spec.activation)

    def linear(self, index: int) -> nn.Linear:
        """Hidden layer ``index`` (from 0): its Linear (a ModuleList's items read as Module)."""
        return cast(nn.Linear, self.layers[index])

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each hidden layer's output after the activation."""
        outputs = []
        for layer in self.layers:
            x = self.activation(layer(x))
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) -> (N, classes) logits."""
        return self.head(self.hidden(x)[-1])


@torch.no_grad()
def bp_predict_and_represent(
    net: BPClassifier, images: torch.Tensor, chunk: int = 2000
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(N,) predictions and the per-layer (N, width) hidden outputs."""
    device = next(net.parameters()).device
    predictions, per_chunk = [], []
    for start in range(0, images.shape[0], chunk):
        hidden = net.hidden(images[start : start + chunk].to(device))
        predictions.append(net.head(hidden[-1]).argmax(dim=1).cpu())
        per_chunk.append([h.cpu() for h in hidden])
    return torch.cat(predictions), [torch.cat(layer) for layer in zip(*per_chunk)]


class BPTrainer:
    """End-to-end training on cross-entropy (one stage): Adam with
    ``training.learning_rate`` over ``minibatches(N, training.batch_size,
    generator)``; resumes after any epoch (its state: Adam's)."""

    stages = 1
    resumes_within_stage = True

    def __init__(self, job: TrainingJob):
        self.net, self.images, self.labels = job.net, job.images, job.labels
        self.training, self.generator = job.training, job.generator
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=job.training.learning_rate)

    def begin_stage(self, index: int) -> None:
        pass

    def epoch(self, epoch: int) -> float:
        epoch_loss = 0.0
        batches = minibatches(self.images.shape[0], self.training.batch_size, self.generator)
        for batch in batches:
            x = self.images if batch is None else self.images[batch]
            y = self.labels if batch is None else self.labels[batch]
            loss = F.cross_entropy(self.net(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            epoch_loss += loss.item()
        return epoch_loss / len(batches)

    def end_stage(self) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def resume(self, state: dict[str, Any], stages_done: int, epochs_done: int) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def train_bp(
    net: BPClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    generator: torch.Generator,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int | None = None,
) -> list[float]:
    """Train ``net`` in place; returns the mean loss of each epoch. With a
    ``checkpoint``, the state is saved to it every ``checkpoint_every`` epochs (not
    after the last), and a run that finds one resumes from it (fflab.models.training)."""
    job = TrainingJob(net=net, images=images, labels=labels, training=training, generator=generator,
                      progress=progress, should_stop=should_stop, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every)
    return MODELS["bp"].train(job)[0]


def evaluate(net: BPClassifier, images: torch.Tensor, labels: torch.Tensor, spec: ExperimentSpec) -> Evaluation:
    predictions, layers = bp_predict_and_represent(net, images)
    return Evaluation(predictions=predictions, layers=layers, arrays={})


IMPLEMENTATION = Implementation(build=BPClassifier, trainer=BPTrainer, evaluate=evaluate)
