"""GPUs: how much memory a run needs, and whether one more run fits on a GPU
now (the service's side; fflab.devices describes a device).

Design. A GPU worker (``fflab worker --gpu N``) runs up to ``runs_per_gpu``
runs at once (Celery's prefork pool: one child process per run, each with its
own CUDA context). Small runs leave an 80 GB GPU mostly idle, so several share
it; large ones could exhaust it, so each run is admitted against its memory:

* ``estimate_run_memory`` is a pure estimate of a run's peak device memory from
  its spec (training images N, width, layers, batch size, model), derived from
  what the trainers allocate (each model type's ``memory``, fflab.models; see
  ``run_memory_parts``) plus the CUDA context of
  the process that runs it, with a safety factor for the caching allocator.
* ``admission_decision`` is the pure rule: a run is admitted on a device when
  fewer than ``runs_per_gpu`` runs hold it, the estimates of the runs it already
  holds plus this one fit within the device's total memory less a safety margin,
  and this one fits within the memory free right now less the margin (which
  also counts what other programs use). A run that could not fit even on an
  empty device is refused for good (``fits_empty`` False): the caller fails it,
  naming both numbers, instead of waiting for ever.
* ``DeviceLedger`` keeps the admitted runs of one GPU of one host in a small
  JSON file under an exclusive file lock (filelock), so that every process using that GPU
  (the pool's children, several workers) decides one after the other; entries of
  processes that died are dropped.

A run that runs out of device memory anyway is requeued with its reason (the
worker catches ``torch.cuda.OutOfMemoryError``; ``fflab.jobs.requeue_run``).

Device facts for /readyz and /metrics come from ``nvidia-smi`` (``query_gpus``),
not from torch: a worker's parent process must not initialise CUDA, or its
forked children could not use it. Inside a run, ``fflab.devices.describe_device``
asks torch.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from fflab.data import DATASETS
from fflab.devices import DeviceInfo
from fflab.models import MODELS
from fflab.models.model_type import RunShape
from fflab.processes import process_alive
from fflab.spec import ExperimentSpec, RunKey

FLOAT_BYTES = 4  # every trainer works in float32
IMAGE_PIXELS = 784  # MNIST and Fashion-MNIST: run_memory_parts's defaults
N_CLASSES = 10
EVAL_CHUNK = 2_000  # fflab.models.common.label_goodness / goodness_representations
# What a process that runs on a GPU holds before it allocates a tensor: the CUDA
# context, cuBLAS's workspace and the kernels loaded. About 500 MiB with torch 2.x
# on recent drivers; counted once per run, since each run has a process of its own.
CUDA_CONTEXT_BYTES = 768 * 2**20
# PyTorch's caching allocator rounds blocks up and keeps freed ones: the peak it
# reserves exceeds the peak of live tensors.
ALLOCATOR_FACTOR = 1.25
GIB = 2**30


# --------------------------------------------------------------------------- nvidia-smi


@dataclass(frozen=True)
class GpuMemory:
    """One GPU as nvidia-smi reports it now."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int

    def device_info(self) -> DeviceInfo:
        return DeviceInfo("cuda", self.name, self.index, self.total_bytes)


NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free",
                    "--format=csv,noheader,nounits"]


def parse_nvidia_smi(text: str) -> list[GpuMemory]:
    """Rows of ``nvidia-smi --query-gpu=index,name,memory.total,memory.free
    --format=csv,noheader,nounits`` (memory in MiB) -> GpuMemory per GPU.
    Rows that do not parse (a GPU in an error state reports ``[N/A]``) are left out."""
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4:
            continue
        index, *name_parts, total, free = parts
        try:
            gpus.append(GpuMemory(int(index), ", ".join(name_parts), int(float(total) * 2**20),
                                  int(float(free) * 2**20)))
        except ValueError:
            continue
    return gpus


def visible_gpu_ids(visible: str | None = None) -> list[str] | None:
    """The GPUs this process may use, as nvidia-smi ``--id`` values: None for all
    (``CUDA_VISIBLE_DEVICES`` unset), [] for none (set but empty)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None:
        return None
    return [entry.strip() for entry in visible.split(",") if entry.strip()]


def query_gpus(ids: list[str] | None = None,
               run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> list[GpuMemory]:
    """The GPUs (all, or those of ``ids``) with their memory now, from nvidia-smi;
    [] where there is none or nvidia-smi is missing or fails. Initialises no CUDA
    context, so a worker's parent process may call it before forking."""
    if ids == []:
        return []
    command = NVIDIA_SMI_QUERY + ([f"--id={','.join(ids)}"] if ids else [])
    try:
        done = run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    return parse_nvidia_smi(done.stdout)


def visible_gpus() -> list[GpuMemory]:
    """The GPUs this process's CUDA_VISIBLE_DEVICES lets it use."""
    return query_gpus(visible_gpu_ids())


# --------------------------------------------------------------------------- this machine's RAM


def _cgroup_memory() -> tuple[int | None, int | None]:
    """(limit, usage) bytes of this process's cgroup (v2, then v1); None where unknown
    or unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit_text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 2**60:
            return None, None
        try:
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            usage = None
        return int(limit_text), usage
    return None, None


def machine_memory() -> tuple[int, int]:
    """(total, available) bytes of RAM for runs on this machine's CPU: MemTotal and
    MemAvailable of /proc/meminfo, lowered to this process's cgroup limit (a
    container) where there is one."""
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                info[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    total = info.get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = info.get("MemAvailable", total)
    limit, usage = _cgroup_memory()
    if limit is not None:
        total = min(total, limit)
        if usage is not None:
            available = min(available, max(limit - usage, 0))
    return total, available


def cpu_device() -> DeviceInfo:
    """This machine's CPU as a worker registers it: its RAM as the memory runs may use."""
    import platform

    return DeviceInfo("cpu", platform.processor() or platform.machine() or "cpu", None, machine_memory()[0])


# --------------------------------------------------------------------------- memory estimate


def run_memory_parts(model: str, n_train: int, n_test: int, width: int, layers: int,
                     batch_size: int | None, inputs: int = IMAGE_PIXELS, classes: int = N_CLASSES) -> dict[str, int]:
    """Bytes of device memory a run's live tensors peak at, by part (float32).

    ``data``: the training images on the device. ``parameters``: weights and
    biases with their gradients and Adam's two moments (4 copies). ``training``:
    the trainer's working set at its peak (rows = N, or the batch size), which
    the model type gives (``ModelType.memory``, fflab.models: what its trainer
    allocates).

    The live tensors' peak on the CPU (``tests/test_gpu.py``, 784 x 3, N=4000, one
    epoch) was 101 / 268 / 34 / 148 MB for FF / BP/FF / BP (batch 512) / SymBa,
    against training + parameters of 142 / 506 / 60 / 255 MB here.

    ``evaluation``: a chunk of test images through the ten labels (chunk x width
    per label and layer, a few at a time). The test images stay on the CPU.
    """
    d = inputs  # the flattened image: 784, or 3072 for a colour data set
    shape = RunShape(n_train, n_test, width, layers, batch_size, inputs, classes)
    use = MODELS.lookup(model).memory(shape)
    parts = {"data": n_train * d + 2 * n_train, "parameters": 4 * use.weights, "training": use.training}
    chunk = min(EVAL_CHUNK, n_test)
    parts["evaluation"] = chunk * d + 4 * chunk * shape.widest + chunk * classes * layers
    return {name: FLOAT_BYTES * count for name, count in parts.items()}


def run_shape(spec: ExperimentSpec, key: RunKey) -> dict[str, Any]:
    """The sizes ``run_memory_parts`` needs, from the experiment's spec at the run's
    grid point (``spec.at``). N is the training subset (or the whole set); a run
    without a class is counted at full size (an upper bound)."""
    spec = spec.at(key.point)
    training = spec.training(key.model)
    dataset = DATASETS[key.dataset]
    train_images, test_images = dataset.sizes
    return {
        "model": key.model,
        "n_train": spec.data.train_subset or train_images,
        "n_test": spec.data.test_subset or test_images,
        "width": spec.network.width,
        "layers": spec.network.layers,
        "batch_size": training.batch_size,
        "inputs": dataset.inputs,
        "classes": dataset.n_classes,
    }


def estimate_run_memory(spec: ExperimentSpec, key: RunKey) -> int:
    """Bytes of GPU memory to reserve for a run: its tensors' peak
    (``run_memory_parts``) times ``ALLOCATOR_FACTOR``, plus the CUDA context of
    its process."""
    tensors = sum(run_memory_parts(**run_shape(spec, key)).values())
    return int(tensors * ALLOCATOR_FACTOR) + CUDA_CONTEXT_BYTES


# --------------------------------------------------------------------------- admission


@dataclass(frozen=True)
class Admission:
    admitted: bool
    fits_empty: bool  # False: this run can never fit on this device
    reason: str


def admission_decision(estimate: int, total: int, free: int, admitted: list[int], runs_per_gpu: int,
                       margin_fraction: float) -> Admission:
    """Whether a run needing ``estimate`` bytes may start on a device of ``total``
    bytes with ``free`` bytes free now, which already holds runs reserving
    ``admitted`` (bytes each). The margin (``margin_fraction`` of ``total``) is
    never handed out."""
    if not 0 <= margin_fraction < 1:
        raise ValueError(f"margin_fraction must be in [0, 1); got {margin_fraction}")
    if runs_per_gpu < 1:
        raise ValueError(f"runs_per_gpu must be at least 1; got {runs_per_gpu}")
    margin = int(total * margin_fraction)
    usable = total - margin
    need = f"needs an estimated {estimate / GIB:.2f} GiB"
    if estimate > usable:
        return Admission(False, False,
                         f"{need}; the device has {total / GIB:.2f} GiB, {usable / GIB:.2f} GiB after the "
                         f"{margin_fraction:.0%} margin (FFLAB_GPU_MEMORY_MARGIN): it cannot fit")
    if len(admitted) >= runs_per_gpu:
        return Admission(False, True, f"{len(admitted)} runs already hold the device, the most at once "
                                      f"(FFLAB_RUNS_PER_GPU={runs_per_gpu})")
    reserved = sum(admitted)
    if reserved + estimate > usable:
        return Admission(False, True,
                         f"{need}; {len(admitted)} runs reserve {reserved / GIB:.2f} GiB of the "
                         f"{usable / GIB:.2f} GiB usable")
    if estimate > free - margin:
        return Admission(False, True,
                         f"{need}; {free / GIB:.2f} GiB is free now, {max(free - margin, 0) / GIB:.2f} GiB "
                         f"after the margin (other programs use the device too)")
    return Admission(True, True, f"admitted: {need}, {reserved / GIB:.2f} GiB reserved by {len(admitted)} runs, "
                                 f"{free / GIB:.2f} GiB free")


class DeviceLedger:
    """The runs admitted on one GPU of this host, shared by every process using it:
    a JSON list of {run, pid, bytes} in ``path``, read and written under an
    exclusive file lock (filelock). ``memory()`` gives (total, free) bytes of the device now."""

    def __init__(self, path: Path, memory: Callable[[], tuple[int, int]], runs_per_gpu: int,
                 margin_fraction: float, alive: Callable[[int], bool] = process_alive):
        self.path, self.memory = Path(path), memory
        self.runs_per_gpu, self.margin_fraction, self.alive = runs_per_gpu, margin_fraction, alive

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_suffix(".lock")):  # every process using the GPU, this one's threads too
            try:
                entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                entries = []
            entries = [entry for entry in entries if self.alive(entry["pid"])]
            yield entries
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(entries))
            os.replace(temporary, self.path)

    def admit(self, run: str, estimate: int, pid: int | None = None) -> Admission:
        """Admit ``run`` (recording it) if ``admission_decision`` allows it now."""
        pid = os.getpid() if pid is None else pid
        with self._locked() as entries:
            entries[:] = [entry for entry in entries if entry["run"] != run]  # a redelivery replaces itself
            total, free = self.memory()
            decision = admission_decision(estimate, total, free, [entry["bytes"] for entry in entries],
                                          self.runs_per_gpu, self.margin_fraction)
            if decision.admitted:
                entries.append({"run": run, "pid": pid, "bytes": estimate})
        return decision

    def release(self, run: str) -> None:
        with self._locked() as entries:
            entries[:] = [entry for entry in entries if entry["run"] != run]

    def admitted(self) -> list[dict[str, Any]]:
        with self._locked() as entries:
            return list(entries)


def gpu_memory_now(gpu_id: str, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
                   ) -> tuple[int, int]:
    """(total, free) bytes of GPU ``gpu_id`` (an nvidia-smi ``--id``) now."""
    gpus = query_gpus([gpu_id], run)
    if not gpus:
        raise RuntimeError(f"nvidia-smi reports no GPU {gpu_id}")
    return gpus[0].total_bytes, gpus[0].free_bytes
