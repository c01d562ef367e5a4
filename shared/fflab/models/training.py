"""The one training loop of every model type: epochs, progress, cancellation,
checkpoints and resume.

A model type's ``Trainer`` (made by its ``Implementation.trainer`` from a
``TrainingJob``) knows how to train one epoch; ``train`` runs its schedule. The
schedule is a list of stages, each ``training.epochs`` epochs long: one per
hidden layer for a layer-by-layer model (FF, SymBa: the stage trains that layer
on the frozen layers below), one for a model trained end to end (BP, BP/FF)::

    for stage in stages not done:
        trainer.begin_stage(stage)
        for epoch in epochs not done:
            should_stop? -> Cancelled
            loss = trainer.epoch(epoch); progress
            [checkpoint, trainers that resume within a stage: every checkpoint_every epochs]
        trainer.end_stage()
        [checkpoint, trainers that resume between stages only: after every stage]

A checkpoint holds the loop's part (the stages and epochs done, the loss
history, the network's weights, the data generator) and the trainer's
(``Trainer.state``: its optimiser, its negative data). A run that finds one
loads the weights, lets the trainer restore its part (``Trainer.resume``), sets
the generator and goes on where the checkpoint was saved: the result equals an
uninterrupted run's, bit for bit. A checkpoint's ``save`` may raise (the worker's
preemption check raises ``fflab.queueing.Preempted`` after a save): the run
stops there and resumes from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from fflab.models.common import (
    Cancelled,
    TrainingJob,
    TrainingProgress,
    check_checkpoint_every,
    cpu_state,
    resume_state,
)

if TYPE_CHECKING:
    from fflab.models.model_type import ModelType


class Trainer(Protocol):
    """One run's training of one model type, one epoch at a time.

    ``stages``: how many stages the schedule has (a layer-by-layer model's
    hidden layers, or 1). ``resumes_within_stage``: its ``state`` after any epoch
    lets it resume at the next epoch (a checkpoint every ``checkpoint_every``
    epochs); otherwise it resumes only between stages (a checkpoint after
    every stage). ``begin_stage(index)`` prepares stage ``index`` (its optimiser,
    its inputs); ``epoch(epoch)`` trains epoch ``epoch`` (from 0) of the current
    stage and returns its mean loss; ``end_stage()`` finishes it (freezes the
    layer). ``state()`` is what it needs beyond the network's weights and the
    generator to resume here (tensors, numbers, lists; ``torch.save``-able);
    ``resume(state, stages_done, epochs_done)`` restores it into a fresh trainer
    after the weights were loaded: with ``epochs_done`` 0 the loop goes on with
    ``begin_stage(stages_done)``, otherwise with ``epoch(epochs_done)`` of stage
    ``stages_done``, which ``resume`` must have made current."""

    stages: int
    resumes_within_stage: bool

    def begin_stage(self, index: int) -> None: ...

    def epoch(self, epoch: int) -> float: ...

    def end_stage(self) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def resume(self, state: dict[str, Any], stages_done: int, epochs_done: int) -> None: ...


def train(model: ModelType, job: TrainingJob) -> list[list[float]]:
    """Train ``job.net`` in place with ``model``'s trainer; returns the mean loss
    of each epoch, one list per stage.

    ``job.progress`` is called after every epoch (with the layer for a
    layer-by-layer model); ``job.should_stop`` is checked before every epoch and
    raises ``Cancelled``. With ``job.checkpoint``, a run resumes from the state it
    holds if ``model`` saved it, and saves its state after every stage (trainers
    that resume only between stages; the last stage too, so that a run stopped
    while it is evaluated trains nothing again) or every ``job.checkpoint_every``
    epochs (trainers that resume within a stage; not after the last epoch)."""
    trainer = model.implementation().trainer(job)
    checkpoint, epochs = job.checkpoint, job.training.epochs
    if trainer.resumes_within_stage:
        check_checkpoint_every(checkpoint, job.checkpoint_every)
    history: list[list[float]] = []
    stages_done = epochs_done = 0
    state = resume_state(checkpoint, model.name)
    if state is not None and "trainer_state" in state:  # (an older layout: start over)
        stages_done, epochs_done = int(state["stages_done"]), int(state["epochs_done"])
        history = [list(losses) for losses in state["history"]]
        job.net.load_state_dict(state["net"])
        trainer.resume(state["trainer_state"], stages_done, epochs_done)
        job.generator.set_state(state["generator"])

    def save() -> None:
        stage_done = not history or len(history[-1]) == epochs
        done = (len(history), 0) if stage_done else (len(history) - 1, len(history[-1]))
        checkpoint.save({
            "trainer": model.name, "layer_by_layer": model.layer_by_layer,
            "stages_done": done[0], "epochs_done": done[1], "history": [list(losses) for losses in history],
            "net": cpu_state(job.net), "generator": job.generator.get_state(), "trainer_state": trainer.state(),
        })

    for stage in range(stages_done, trainer.stages):
        first = epochs_done if stage == stages_done else 0
        if first == 0:
            trainer.begin_stage(stage)
            history.append([])
        for epoch in range(first, epochs):
            if job.should_stop is not None and job.should_stop():
                raise Cancelled()
            history[-1].append(trainer.epoch(epoch))
            if job.progress is not None:
                layer, layers = (stage, trainer.stages) if model.layer_by_layer else (None, None)
                job.progress(TrainingProgress(model.name, epoch + 1, epochs, history[-1][-1], layer, layers))
            last = stage + 1 == trainer.stages and epoch + 1 == epochs
            if (checkpoint is not None and trainer.resumes_within_stage and not last
                    and (epoch + 1) % job.checkpoint_every == 0):
                save()
        trainer.end_stage()
        if checkpoint is not None and not trainer.resumes_within_stage:
            save()
    return history
