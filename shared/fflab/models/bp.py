"""BP: the same hidden layers with a linear 10-way head, trained on cross-entropy
by backpropagation (paper section 3.3). No label embedding, no normalisation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fflab.data import N_CLASSES
from fflab.models.common import (
    Cancelled,
    Checkpoint,
    Evaluation,
    ModelType,
    ProgressCallback,
    StopCheck,
    TrainingJob,
    TrainingProgress,
    activation_fn,
    check_checkpoint_every,
    cpu_state,
    minibatches,
    resume_state,
)

if TYPE_CHECKING:
    from fflab.spec import ExperimentSpec, NetworkSpec, TrainingSpec


class BPClassifier(nn.Module):
    def __init__(self, spec: NetworkSpec, in_features: int = 784):
        super().__init__()
        self.spec = spec
        widths = [in_features] + [spec.width] * spec.layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(spec.width, N_CLASSES)
        self.activation = activation_fn(spec.activation)

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each hidden layer's output after the activation."""
        outputs = []
        for layer in self.layers:
            x = self.activation(layer(x))
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 784) -> (N, 10) logits."""
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
    after the last), and a run that finds one resumes from it."""
    check_checkpoint_every(checkpoint, checkpoint_every)
    optimizer = torch.optim.Adam(net.parameters(), lr=training.learning_rate)
    losses: list[float] = []
    state = resume_state(checkpoint, "bp")
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        losses = list(state["losses"])
    for epoch in range(len(losses), training.epochs):
        if should_stop is not None and should_stop():
            raise Cancelled()
        epoch_loss = 0.0
        batches = minibatches(images.shape[0], training.batch_size, generator)
        for batch in batches:
            x = images if batch is None else images[batch]
            y = labels if batch is None else labels[batch]
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
        losses.append(epoch_loss / len(batches))
        if progress is not None:
            progress(TrainingProgress("bp", epoch + 1, training.epochs, losses[-1]))
        if checkpoint is not None and len(losses) % checkpoint_every == 0 and len(losses) < training.epochs:
            checkpoint.save({
                "trainer": "bp", "epoch": len(losses), "net": cpu_state(net),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "losses": list(losses),
            })
    return losses


def train(job: TrainingJob) -> list[list[float]]:
    return [train_bp(job.net, job.images, job.labels, job.training, job.generator, job.progress,
                     job.should_stop, job.checkpoint, job.checkpoint_every)]


def evaluate(net: BPClassifier, images: torch.Tensor, labels: torch.Tensor, spec: ExperimentSpec) -> Evaluation:
    predictions, layers = bp_predict_and_represent(net, images)
    return Evaluation(predictions=predictions, layers=layers, arrays={})


MODEL = ModelType(
    name="bp",
    display_name="BP",
    colour="tab:green",
    description="BP: Adam, 20 epochs, lr 1e-2 (paper); minibatch 2048 (code).",
    training_defaults={"epochs": 20, "learning_rate": 1e-2, "batch_size": 2048},
    training_presets={"quick": {"epochs": 3, "learning_rate": 1e-2, "batch_size": 512}},
    build=BPClassifier,
    train=train,
    evaluate=evaluate,
    in_paper=True,
)
