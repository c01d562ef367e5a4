"""The model types fflab trains: one module each, one entry each in ``MODELS``.

``MODELS`` is the one list of model types. The spec's ``models`` values and
per-model training sections, the run documents' ``model`` field, the pipeline,
the tables' row order and names, the figures' colours and the CLI's choices are
all read from it. Adding a model type is a module that defines its
``ModelType`` (``fflab.models.common``: how to build, train and evaluate it,
its name, colour and default training) plus its line below.
"""

from __future__ import annotations

from fflab.models import bp, bpff, ff, symba
from fflab.models.common import ModelType
from fflab.registry import Registry

MODELS: Registry[ModelType] = Registry("model", {model.name: model for model in (
    ff.MODEL, bpff.MODEL, bp.MODEL, symba.MODEL,
)})
