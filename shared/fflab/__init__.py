"""fflab: train Forward-Forward networks and analyse their ensembles, as a
library, a command line and a multi-user service.

The library's layers, lowest first; a module imports only from its own layer
and those below (tests/test_architecture.py checks it, and that there is no
import circle):

- settings: ``settings`` (every ``FFLAB_*`` variable, one ``Settings``).
- science: ``registry``; ``data`` (the data sets); ``models`` (one module per
  model type, ``MODELS``; ``components``: goodness, normalisation, ...);
  ``spec``; ``analysis`` (pure functions over arrays); ``figures``;
  ``results`` (the versioned documents); ``paper`` (the published numbers);
  ``devices`` (the device a run trains on, as metrics.json records it);
  ``versions`` (the code version recorded with every run).
- pipeline: ``pipeline`` (train, analyse and aggregate into a results folder;
  the registry of a run's documents).
- service: ``db``, ``jobs`` (every state transition), ``accounts``,
  ``storage``, ``client``, ``processes``, ``var_dir``; ``gpu`` (a run's GPU
  memory estimate and its admission on a shared GPU); ``run_logs`` (a run's
  log: captured, redacted, capped).
- cli: ``cli`` (the ``fflab`` command; ``serve`` and ``worker`` come from the
  api and worker packages through entry points).

The library never imports ``api`` (the FastAPI app) or ``worker`` (Celery).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fflab.recording import capture
    from fflab.representations import read_representations

__all__ = ["capture", "read_representations"]

# Exported lazily: ``import fflab`` stays light (no torch until ``fflab.capture`` is used).
_LAZY = {"capture": "fflab.recording", "read_representations": "fflab.representations"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fflab' has no attribute {name!r}")
