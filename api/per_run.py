"""What the per-run collections share (``/shared-units``, ``/weights``, the
analyses beyond the paper): one page of an experiment's succeeded runs, and the
check of the layer filter against the experiment's networks, so that
``?layer=7`` on a 3-layer network is a 422 naming ``query.layer`` and the allowed
layers rather than 200 with empty lists."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from api.paging import Page
from fflab.db import Experiment, Run
from fflab.pipeline.documents import RunAnalysis, check_layer, spec_layers


def page_of_runs(session: Session, experiment: Experiment, page: Page, model: str | None, dataset: str | None,
                 run_id: str | None = None, columns: tuple[str, ...] = ()) -> tuple[list[Run], str | None]:
    """One page of the experiment's succeeded runs matching the filters, in creation
    order, with only ``run_id`` and ``columns`` (the names of Run's columns) loaded,
    and the next page's token."""
    loaded = [Run.run_id, *(getattr(Run, name) for name in columns)]
    query = select(Run).options(load_only(*loaded)).where(Run.experiment_id == experiment.id,
                                                          Run.status == "succeeded")
    for column, value in ((Run.model, model), (Run.dataset, dataset), (Run.run_id, run_id)):
        if value is not None:
            query = query.where(column == value)
    return page.cut(list(session.scalars(query.order_by(Run.id).limit(page.limit + 1).offset(page.offset))))


def check_layer_filter(experiment: Experiment, layer: int | None, analysis: RunAnalysis | None = None) -> None:
    """422 on ``query.layer`` unless the experiment's networks have ``layer`` (and
    ``analysis``, if given, is per layer)."""
    if layer is None:
        return
    layers = spec_layers(experiment.spec)
    try:
        if analysis is not None:
            check_layer(analysis, layer, layers)
        elif not 1 <= layer <= layers:
            raise ValueError(f"layer {layer} is not a layer of this experiment's networks: "
                             f"allowed layers are 1 to {layers}")
    except ValueError as error:
        expected = "no layer filter" if analysis is not None and not analysis.per_layer else f"1 to {layers}"
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "layer"), "input": layer,
                                       "msg": str(error), "ctx": {"expected": expected}}]) from None
