"""Experiments and runs compared with each other (``GET /v1/comparisons``, the UI's
compare page): each side read from the database, then ``fflab.comparison``.

A side is written ``<experiment id>`` (its finished runs trained on all classes,
at the first grid point of a sweep) or ``<experiment id>/<run id>`` (one finished
run). Each experiment must be readable by the caller (``api.deps.readable_experiment``:
another user's private one is NotFound, as everywhere)."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from api.services.errors import Conflict, Invalid
from api.services.experiments import experiment_run, readable_experiment
from fflab import comparison
from fflab.db import Ensemble, Experiment, Run, User
from fflab.representations import REPRESENTATIONS_KIND, experiment_kind
from fflab.spec import ExperimentSpec, RunKey

SIDE_FIELD = "experiment"
MAX_REFERENCE = 200  # an id (<= 64) and a run id (<= 128) and their slash


def parse_sides(references: list[str]) -> list[tuple[str, str | None]]:
    """``["A", "B/ff-mnist-seed0"]`` -> ``[("A", None), ("B", "ff-mnist-seed0")]``;
    Invalid naming ``query.experiment`` for fewer than 2 or more than 8, a side given
    twice, or a malformed one."""
    def problem(message: str, given: Any = None) -> Invalid:
        return Invalid([{"type": "value_error", "loc": ("query", SIDE_FIELD), "input": given, "msg": message}])

    count = len(references)
    if not comparison.MIN_SIDES <= count <= comparison.MAX_SIDES:
        raise problem(f"give {comparison.MIN_SIDES} to {comparison.MAX_SIDES} experiments to compare (repeat "
                      f"experiment=<id> or experiment=<id>/<run id>); got {count}", count)
    sides = []
    for reference in references:
        experiment_id, _, run_id = reference.partition("/")
        if (not experiment_id or len(reference) > MAX_REFERENCE or (reference.count("/") > 1)
                or any(ord(c) < 33 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in reference)
                or (run_id == "" and "/" in reference)):
            raise problem("each experiment is <id> or <id>/<run id> (no spaces or control characters, at most "
                          f"{MAX_REFERENCE} characters)", reference)
        sides.append((experiment_id, run_id or None))
    if len(set(sides)) < len(sides):
        raise problem("each experiment (or run) may be given once", references)
    return sides


def _runs(session: Session, experiment: Experiment, run_id: str | None) -> list[Run]:
    query = select(Run).options(load_only(Run.run_id, Run.model, Run.dataset, Run.seed, Run.unseen_class,
                                          Run.record, Run.metrics)).where(
        Run.experiment_id == experiment.id, Run.status == "succeeded")
    if run_id is not None:
        query = query.where(Run.run_id == run_id)
    return list(session.scalars(query.order_by(Run.id)))


def _method1_units(session: Session, experiment_id: str, run_ids: list[str],
                   quantile: float | None) -> dict[str, comparison.RunEnsembleUnits]:
    if quantile is None or not run_ids:
        return {}
    rows = session.execute(select(Ensemble.run_id, Ensemble.layer, Ensemble.class_index, Ensemble.units).where(
        Ensemble.experiment_id == experiment_id, Ensemble.run_id.in_(run_ids), Ensemble.method == "method1",
        Ensemble.quantile == quantile, Ensemble.n_images > 0))
    units: dict[str, comparison.RunEnsembleUnits] = defaultdict(dict)
    for run_id, layer, class_index, members in rows:
        units[run_id][(layer, class_index)] = list(members)
    return units


def comparison_sides(session: Session, user: User,
                     references: list[str]) -> tuple[list[comparison.Side], float | None]:
    """The sides named by ``references`` (``parse_sides``) and the Method 1 quantile
    of their overlaps; NotFound for an experiment the user may not read or a run it
    does not have; Conflict for a side with no finished run yet."""
    found = []
    for experiment_id, run_id in parse_sides(references):
        experiment = readable_experiment(session, user, experiment_id)
        if experiment_kind(experiment.spec) == REPRESENTATIONS_KIND:
            raise Conflict(f"experiment {experiment.id} is uploaded representations (kind representations): it has "
                           f"no spec of training to set against another's; compare its ensembles through "
                           f"/v1/experiments/{experiment.id}/ensembles")
        swept = ExperimentSpec.model_validate(experiment.spec)
        point = swept.paper_point()
        runs = [run for run in _runs(session, experiment, run_id) if run.record is not None]
        if run_id is None:
            runs = [run for run in runs if run.unseen_class is None and RunKey.parse(run.run_id).point == point]
            spec = swept.at(point)
            total = len([key for key in swept.runs_at(point) if key.unseen_class is None])
        else:
            if not runs:
                experiment_run(session, experiment, run_id)  # NotFound naming its runs, where it has no such run
            spec = swept.at(RunKey.parse(run_id).point) if swept.sweep else swept
            total = 1
        if not runs:
            raise Conflict(f"{experiment.id}{'/' + run_id if run_id else ''} has no finished run yet "
                           f"({experiment.status}): compare it once a run has finished")
        found.append((experiment, run_id, spec.model_dump(mode="json"), runs, total))
    quantile = comparison.common_quantile([spec for _, _, spec, _, _ in found])
    sides = []
    for experiment, run_id, spec_fields, runs, total in found:
        label = experiment.name + (f"/{run_id}" if run_id else "")
        sides.append(comparison.Side(
            label=label, experiment=experiment.id, run_id=run_id, name=experiment.name, spec=spec_fields,
            records=[run.record for run in runs if run.record is not None],  # all: found keeps recorded runs
            losses={run.run_id: (run.metrics or {}).get("loss_history") or [] for run in runs},
            ensembles=_method1_units(session, experiment.id, [run.run_id for run in runs], quantile),
            runs_total=total,
            note="" if run_id or len(runs) == total else f"{len(runs)} of {total} runs finished"))
    labels = [side.label for side in sides]
    for side in sides:  # two experiments of one name: tell them apart by their ids
        if labels.count(side.label) > 1:
            side.label = f"{side.label} ({side.experiment[:8]})"
    return sides, quantile


def compare(session: Session, user: User,
            references: list[str]) -> tuple[comparison.ExperimentComparison, list[comparison.Side]]:
    """The comparison of the sides ``references`` names, and the sides (for figures)."""
    sides, quantile = comparison_sides(session, user, references)
    return comparison.compare_sides(sides, quantile), sides


def figure_png(name: str, found: comparison.ExperimentComparison, sides: list[comparison.Side]) -> bytes:
    """The comparison's figure ``name`` (``comparison.FIGURES``, ``.png`` allowed) as
    PNG bytes; Invalid naming ``path.name`` where there is nothing to draw."""
    try:
        figure = comparison.figure(name.removesuffix(".png"), found, sides)
    except ValueError as error:
        raise Invalid([{"type": "value_error", "loc": ("path", "name"), "input": name, "msg": str(error)}]) from None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
