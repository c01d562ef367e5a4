"""The code that trains a run, as recorded with it: fflab's version, the git commit
of the checkout it runs from (where it sits in one), and the versions of torch,
numpy and Python, with the device. Every run's record of the service carries it
(``Run.code_version``), so a result can be traced to what produced it."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy
import torch

PACKAGE_DIR = Path(__file__).resolve().parent
GIT_TIMEOUT_S = 2.0


def package_version() -> str:
    try:
        return version("fflab")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown"


@lru_cache
def git_commit(folder: Path = PACKAGE_DIR) -> str | None:
    """The commit checked out where ``folder`` lies, with ``+dirty`` when tracked
    files differ from it; None outside a git checkout, without git, or when git
    does not answer within GIT_TIMEOUT_S."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True,
                              timeout=GIT_TIMEOUT_S).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def code_version(device: str | None = None) -> dict[str, str | None]:
    """{fflab, git_commit, torch, numpy, python, device}: ``device`` is the one the
    run trains on ("cpu", "cuda:0", ...; None when not known yet)."""
    return {
        "fflab": package_version(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "device": device,
    }


def run_device(device: str) -> str:
    """The device a run with spec.device ``device`` trains on here, named: "cpu",
    "cuda:0 (NVIDIA H100 80GB HBM3)"; what was asked for when it is not available
    ("cuda (not available)")."""
    from fflab.models.common import resolve_device

    try:
        resolved = resolve_device(device)
    except RuntimeError:
        return f"{device} (not available)"
    if resolved.type != "cuda":
        return resolved.type
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
