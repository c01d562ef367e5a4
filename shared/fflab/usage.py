"""What a user's experiments hold and will cost, and the per-user limits on both.

Storage. A user's storage use is the sum of the sizes of their experiments'
stored artifacts (``fflab.db.Artifact``: every run's files, tables, figures,
results.json). ``estimate_run_bytes`` and ``estimate_experiment_bytes`` estimate
from a spec what an experiment will store:

* ``representations.npz``: test images x width x layers float32 (plus the ten
  labels' goodness per layer for the goodness models), deflate-compressed
  (``fflab.pipeline.folders.write_representations``) to ``REPRESENTATION_RATIO``
  of their size, the ratio measured on the quick preset's runs;
* ``weights.pt``: the parameters in float32;
* ``snapshots.npz``: the probe set's float16 captures, one per layer and
  snapshot epoch, compressed to ``SNAPSHOT_RATIO``;
* the JSON documents, ``DOCUMENT_BYTES_PER_UNIT`` per hidden unit, and per
  experiment its tables, figures and results.json (``EXPERIMENT_BYTES`` plus
  ``RESULTS_BYTES_PER_RUN`` per run).

Compute. ``estimate_run_seconds`` estimates a run's duration on one CPU worker
from its multiply-adds (training: epochs x images x the forward pass's
``784 w + (L - 1) w^2``, twice the images for the models that train on
positive and negative data, three passes for backpropagation's; evaluation: ten
labels' forward passes for the goodness models), at the rates measured on this
machine's quick-preset runs (``TRAIN_MACS_PER_S``, ``EVALUATE_MACS_PER_S``), plus
the per-run analyses (``ANALYSE_SECONDS_PER_UNIT`` per hidden unit) and
``RUN_OVERHEAD_S``. docs/service.md gives its accuracy.

Admission (``submission_refusal``, ``analysis_refusal``; applied by
``fflab.jobs`` under the lock on the user's row, so that concurrent submissions
are counted one after the other):

* storage (``Settings.storage_quota_bytes_per_user``): a submission is refused
  when the user's stored bytes are at or over the quota, or when the stored
  bytes, the estimated bytes of their experiments still running or waiting and
  this experiment's estimate exceed it; a re-analysis (which rewrites an
  experiment's documents, tables and figures) when they are at or over it. A run
  that ends over the quota anyway (its estimate too low) stores everything: the
  next submission is refused;
* compute (``Settings.max_queued_run_hours_per_user``): a submission is refused
  when the estimated hours of the user's waiting and running runs (a running
  run counted whole until it ends) and this experiment's would exceed the limit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fflab.data import DATASETS
from fflab.db import ACTIVE_STATUSES, Artifact, Experiment, Run
from fflab.representations import REPRESENTATIONS_KIND, experiment_kind
from fflab.settings import Settings
from fflab.spec import ExperimentSpec, RunKey

MB = 1_000_000

# Models that score each of the ten labels by goodness (stored label_goodness, ten
# forward passes per test image) and train on positive and negative data; BP does neither.
GOODNESS_MODELS = ("ff", "bpff", "symba")
# Models trained end to end by backpropagation (forward, then two backward products).
BACKPROP_MODELS = ("bpff", "bp", "symba")

# Measured (docs/benchmarks.md, "Stored bytes and run-hours"): quick-preset runs (784 x 3,
# 3 epochs) of FF and BP on 10000 training and 3000 test images on this machine (2 shared
# vCPUs, AMD EPYC), 2026-12-07. BP/FF's and SymBa's rates were not measured: BP/FF is taken
# between FF and BP, SymBa as FF.
REPRESENTATION_RATIO = 0.91  # compressed / raw bytes of the float32 arrays (FF 0.91, BP 0.81)
SNAPSHOT_RATIO = 0.86  # compressed / raw bytes of the float16 captures (FF 0.86, BP 0.27)
SNAPSHOT_PROBE_IMAGES = 500  # fflab.pipeline.snapshots: 50 test images per class
SNAPSHOT_CAPTURES = 5  # at most, the snapshot epochs when the spec leaves them to the default
DOCUMENT_BYTES_PER_UNIT = 110  # a run's JSON documents, per hidden unit (784 x 3: 260 kB)
EXPERIMENT_BYTES = 6 * MB  # tables and figures
RESULTS_BYTES_PER_RUN = 20_000  # results.json's per-run summaries
TRAIN_MACS_PER_S = {"ff": 3.0e9, "bpff": 5.0e9, "bp": 7.5e9, "symba": 3.0e9}
EVALUATE_MACS_PER_S = 1.2e10
ANALYSE_SECONDS_PER_UNIT = {"ff": 0.008, "bpff": 0.008, "bp": 0.003, "symba": 0.008}
RUN_OVERHEAD_S = 5.0  # start, data loading, storing the files


@dataclass(frozen=True)
class RunSize:
    """The sizes the estimates read, from a spec at a run's grid point."""

    model: str
    n_train: int
    n_test: int
    width: int
    layers: int
    epochs: int
    snapshots: int  # snapshot epochs
    inputs: int  # the flattened image: 784, or 3072 for colour (fflab.data.DATASETS)
    classes: int

    @classmethod
    def of(cls, spec: ExperimentSpec, key: RunKey) -> RunSize:
        spec = spec.at(key.point)
        epochs = spec.training(key.model).epochs
        snapshots = min(SNAPSHOT_CAPTURES, epochs) if spec.snapshots is None else sum(
            1 for epoch in spec.snapshots if epoch <= epochs)
        dataset = DATASETS[key.dataset]
        train_images, test_images = dataset.sizes
        return cls(key.model, spec.data.train_subset or train_images, spec.data.test_subset or test_images,
                   spec.network.width, spec.network.layers, epochs, snapshots, dataset.inputs, dataset.n_classes)

    @property
    def units(self) -> int:
        return self.width * self.layers

    @property
    def forward_macs(self) -> int:
        """Multiply-adds of one image through the hidden layers."""
        return self.inputs * self.width + (self.layers - 1) * self.width * self.width


# ----------------------------------------------------------------------------- estimates


def estimate_run_bytes(spec: ExperimentSpec, key: RunKey) -> int:
    """Bytes a run will store: representations, weights, snapshots, documents."""
    size = RunSize.of(spec, key)
    layers = size.n_test * size.units
    if size.model in GOODNESS_MODELS:
        layers += size.n_test * size.classes * size.layers
    representations = 4 * layers * REPRESENTATION_RATIO
    parameters = size.inputs * size.width + (size.layers - 1) * size.width ** 2 + size.units
    if size.model not in GOODNESS_MODELS:
        parameters += (size.width + 1) * size.classes
    probe = min(SNAPSHOT_PROBE_IMAGES, size.n_test)
    snapshots = 2 * probe * size.units * size.snapshots * SNAPSHOT_RATIO
    return int(representations + 4 * parameters + snapshots + DOCUMENT_BYTES_PER_UNIT * size.units)


def estimate_experiment_bytes(spec: ExperimentSpec) -> int:
    """Bytes an experiment will store: its runs', then its tables, figures and results."""
    keys = spec.runs()
    return sum(estimate_run_bytes(spec, key) for key in keys) + experiment_files_bytes(len(keys))


def experiment_files_bytes(runs: int) -> int:
    return EXPERIMENT_BYTES + RESULTS_BYTES_PER_RUN * runs


def estimate_run_seconds(spec: ExperimentSpec, key: RunKey) -> float:
    """Seconds a run takes on one CPU worker: training, evaluation, analyses (a model
    without a measured rate is counted at the slowest one's)."""
    size = RunSize.of(spec, key)
    images = size.n_train * (2 if size.model in GOODNESS_MODELS else 1)
    passes = 3 if size.model in BACKPROP_MODELS else 1
    train = size.epochs * images * size.forward_macs * passes
    evaluate = size.n_test * size.forward_macs * (size.classes if size.model in GOODNESS_MODELS else 1)
    rate = TRAIN_MACS_PER_S.get(size.model, min(TRAIN_MACS_PER_S.values()))
    analyse = ANALYSE_SECONDS_PER_UNIT.get(size.model, max(ANALYSE_SECONDS_PER_UNIT.values())) * size.units
    return train / rate + evaluate / EVALUATE_MACS_PER_S + analyse + RUN_OVERHEAD_S


def estimate_experiment_hours(spec: ExperimentSpec) -> float:
    """Run-hours of an experiment: the sum of its runs' estimated durations."""
    return sum(estimate_run_seconds(spec, key) for key in spec.runs()) / 3600


def estimate_recorded_bytes(file_bytes: int, units: int) -> int:
    """Bytes an uploaded representations file's analysis will store besides the
    upload itself: its run's representations (the file's size again, at most: the
    same arrays as float32, compressed), the documents, the tables and figures."""
    return file_bytes + DOCUMENT_BYTES_PER_UNIT * units + experiment_files_bytes(1)


def estimate_recorded_seconds(units: int) -> float:
    """Seconds an uploaded representations file's analysis takes: the analyses of
    its units (at the slowest measured rate) and a run's overhead; no training."""
    return max(ANALYSE_SECONDS_PER_UNIT.values()) * units + RUN_OVERHEAD_S


def spec_units(spec: Mapping[str, Any]) -> int:
    """The hidden units of an uploaded file's layers (its stored spec's ``layers``)."""
    return sum(int(layer.get("units") or 0) for layer in spec.get("layers") or [])


# ----------------------------------------------------------------------------- a user's use


@dataclass(frozen=True)
class Usage:
    """One user's storage and compute against this server's limits (None: no limit)."""

    stored_bytes: int  # their experiments' stored artifacts
    pending_bytes: int  # estimated, still to be stored by their waiting and running runs
    storage_quota_bytes: int | None
    active_runs: int  # waiting or running
    active_run_hours: float  # estimated, of those runs
    max_active_run_hours: float | None


def stored_bytes(session: Session, owner_id: int) -> int:
    """The sum of the sizes of the user's experiments' stored artifacts."""
    return int(session.scalar(
        select(func.coalesce(func.sum(Artifact.size), 0)).join(Experiment, Experiment.id == Artifact.experiment_id)
        .where(Experiment.owner_id == owner_id)) or 0)


def stored_bytes_by_user(session: Session) -> dict[int, int]:
    """Every user's stored bytes (users without artifacts are left out)."""
    rows = session.execute(
        select(Experiment.owner_id, func.sum(Artifact.size)).join(Experiment, Experiment.id == Artifact.experiment_id)
        .group_by(Experiment.owner_id))
    return {owner_id: int(total or 0) for owner_id, total in rows}


def active_estimates(session: Session, owner_id: int, expected_run_s: float) -> tuple[int, float, int]:
    """(runs, run-hours, bytes still to be stored) of the user's waiting and running
    runs, with their experiments' tables and figures while those are not aggregated.
    A stored spec this version cannot read (submitted before an upgrade) counts
    ``expected_run_s`` per run and no bytes, rather than refusing every submission."""
    runs = session.execute(
        select(Run.experiment_id, Run.run_id).join(Experiment)
        .where(Experiment.owner_id == owner_id, Run.status.in_(ACTIVE_STATUSES))).all()
    by_experiment: dict[str, list[str]] = defaultdict(list)
    for experiment_id, run_id in runs:
        by_experiment[experiment_id].append(run_id)
    seconds, pending = 0.0, 0
    for experiment_id, run_ids in by_experiment.items():
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None  # the runs' own experiment
        if experiment_kind(experiment.spec) == REPRESENTATIONS_KIND:  # an uploaded file, analysed
            units = spec_units(experiment.spec)
            seconds += estimate_recorded_seconds(units) * len(run_ids)
            pending += estimate_recorded_bytes(int((experiment.spec.get("file") or {}).get("size") or 0), units)
            continue
        try:
            spec = ExperimentSpec.model_validate(experiment.spec)
        except ValueError:
            seconds += expected_run_s * len(run_ids)
            continue
        for run_id in run_ids:
            key = RunKey.parse(run_id)
            seconds += estimate_run_seconds(spec, key)
            pending += estimate_run_bytes(spec, key)
        if experiment.status in ACTIVE_STATUSES:
            pending += experiment_files_bytes(experiment.runs_total)
    return len(runs), seconds / 3600, pending


def user_usage(session: Session, settings: Settings, owner_id: int) -> Usage:
    runs, hours, pending = active_estimates(session, owner_id, settings.expected_run_s)
    return Usage(stored_bytes(session, owner_id), pending, settings.storage_quota_bytes_per_user, runs, hours,
                 settings.max_queued_run_hours_per_user)


# ----------------------------------------------------------------------------- admission


def human_bytes(count: float) -> str:
    """``1.23 GB`` (decimal units, as the quota's setting is written in bytes)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} bytes"


def runs_text(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def submission_refusal(session: Session, settings: Settings, owner_id: int, spec: ExperimentSpec) -> str | None:
    """Why the user may not submit ``spec`` now (storage quota, then run-hours), or None."""
    if settings.storage_quota_bytes_per_user is None and settings.max_queued_run_hours_per_user is None:
        return None
    return _refusal(session, settings, owner_id, lambda: estimate_experiment_bytes(spec),
                    lambda: estimate_experiment_hours(spec), len(spec.runs()))


def representations_refusal(session: Session, settings: Settings, owner_id: int, file_bytes: int,
                            units: int) -> str | None:
    """Why the user may not upload a representations file of ``file_bytes`` with
    ``units`` hidden units now (the same storage quota and run-hours limit as a
    submission: the upload and its analysis's estimated files count), or None."""
    if settings.storage_quota_bytes_per_user is None and settings.max_queued_run_hours_per_user is None:
        return None
    return _refusal(session, settings, owner_id, lambda: file_bytes + estimate_recorded_bytes(file_bytes, units),
                    lambda: estimate_recorded_seconds(units) / 3600, 1)


def _refusal(session: Session, settings: Settings, owner_id: int, estimate_bytes: Callable[[], int],
             estimate_hours: Callable[[], float], runs: int) -> str | None:
    quota, hours_limit = settings.storage_quota_bytes_per_user, settings.max_queued_run_hours_per_user
    usage = user_usage(session, settings, owner_id)
    if quota is not None:
        estimate = estimate_bytes()
        if usage.stored_bytes >= quota or usage.stored_bytes + usage.pending_bytes + estimate > quota:
            pending = (f" and your {runs_text(usage.active_runs)} waiting or running will store an estimated "
                       f"{human_bytes(usage.pending_bytes)} more" if usage.pending_bytes else "")
            return (f"storage quota: your experiments store {human_bytes(usage.stored_bytes)}{pending}; this "
                    f"experiment would store an estimated {human_bytes(estimate)}; the quota is "
                    f"{human_bytes(quota)} per user (FFLAB_STORAGE_QUOTA_BYTES_PER_USER). Delete experiments you "
                    f"no longer need (fflab delete ID) to free space.")
    if hours_limit is not None:
        hours = estimate_hours()
        if usage.active_run_hours + hours > hours_limit:
            return (f"run-hours limit: this experiment's {runs_text(runs)} are estimated at "
                    f"{hours:.3g} run-hours and you have {usage.active_run_hours:.3g} run-hours waiting or running "
                    f"({runs_text(usage.active_runs)}); the limit is {hours_limit:g} run-hours per user "
                    f"(FFLAB_MAX_QUEUED_RUN_HOURS_PER_USER). Wait for runs to finish or cancel some.")
    return None


def analysis_refusal(session: Session, settings: Settings, owner_id: int) -> str | None:
    """Why a re-analysis of the user's experiment may not be queued now, or None: it
    rewrites the experiment's files, refused when their storage is at or over the quota."""
    quota = settings.storage_quota_bytes_per_user
    if quota is None:
        return None
    used = stored_bytes(session, owner_id)
    if used < quota:
        return None
    return (f"storage quota: the experiment's owner stores {human_bytes(used)}, at or over the quota of "
            f"{human_bytes(quota)} per user (FFLAB_STORAGE_QUOTA_BYTES_PER_USER); a re-analysis writes new "
            f"files. Delete experiments no longer needed (fflab delete ID) to free space.")
