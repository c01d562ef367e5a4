"""Device variants of tests: ``@on_devices`` runs a test with ``device`` "cpu" and
"cuda"; the cuda variant carries the ``cuda`` marker (``pytest -m cuda`` selects
it, ``make gpu-check`` runs it) and is skipped where there is no CUDA device.
A test for CUDA alone: ``@pytest.mark.cuda`` and ``@skip_without_cuda``."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
skip_without_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
on_devices = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                                                                   skip_without_cuda])])
