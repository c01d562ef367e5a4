"""Devices: what a run trains on and what a worker holds, described for the
documents and the service (name, nvidia-smi index, memory).

Its own module, low in the layers, because the pipeline records the device of
each run in metrics.json (``RunMetrics.device_info``) while the service's GPU
admission (fflab.gpu) and workers' registration describe GPUs the same way.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DeviceInfo:
    """The device a run trained on or a worker holds. ``index``: the GPU's index
    as nvidia-smi numbers it (None for the CPU); ``total_memory_bytes``: the GPU's
    memory, or the machine's RAM for the CPU."""

    kind: str  # "cuda" or "cpu"
    name: str
    index: int | None
    total_memory_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def physical_gpu_index(logical: int, visible: str | None = None) -> int:
    """The nvidia-smi index of CUDA device ``logical`` of this process, from
    ``CUDA_VISIBLE_DEVICES`` (``fflab worker --gpu N`` sets it to N); the logical
    index where it is unset or names devices by UUID."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    entries = [entry.strip() for entry in (visible or "").split(",") if entry.strip()]
    if logical < len(entries) and entries[logical].isdigit():
        return int(entries[logical])
    return logical


def describe_device(device: torch.device) -> DeviceInfo:
    """The device a run trains on (a ``torch.device``): for CUDA its name, physical
    index and total memory (torch initialises CUDA in this process); for the CPU
    its model name and the machine's RAM."""
    import torch

    if device.type == "cuda":
        logical = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(logical)
        return DeviceInfo("cuda", properties.name, physical_gpu_index(logical), int(properties.total_memory))
    return DeviceInfo("cpu", cpu_model_name(), None, machine_memory_bytes())


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
