"""GPUs (fflab.devices, fflab.gpu, worker.gpu_runs): the per-run memory estimate against memory
measured while training, the admission rule and the shared ledger on a simulated
memory budget, admission and the out-of-memory requeue through a real worker
task and database, the devices runs and workers report, and `make gpu-check`'s
budget arithmetic and its skip without CUDA. The estimate is checked on a GPU
by the ``cuda`` test at the end."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from devices import skip_without_cuda
from fflab import devices, gpu, jobs
from fflab.db import Run, get_sessionmaker, session_scope
from fflab.gpu import GIB, DeviceLedger, admission_decision
from fflab.models import MODELS
from fflab.models.model_type import MemoryUse, RunShape
from fflab.spec import RunKey, build_spec
from test_service_faults import run_as_worker, worker_env  # noqa: F401 - the worker fixture

pytest_plugins = ["service_support"]

ROOT = Path(__file__).resolve().parents[1]
SMI = """0, NVIDIA H100 80GB HBM3, 81559, 81004
1, NVIDIA A100-SXM4-40GB, 40960, 1024
2, NVIDIA GeForce RTX 4090, [N/A], [N/A]
"""


# ----------------------------------------------------------------------------- devices


def test_nvidia_smi_rows_parse_and_broken_rows_are_left_out():
    gpus = gpu.parse_nvidia_smi(SMI)
    assert [(g.index, g.name) for g in gpus] == [(0, "NVIDIA H100 80GB HBM3"), (1, "NVIDIA A100-SXM4-40GB")]
    assert gpus[0].total_bytes == 81559 * 2**20 and gpus[1].free_bytes == 1024 * 2**20
    assert gpus[0].device_info().as_dict() == {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "index": 0,
                                               "total_memory_bytes": 81559 * 2**20}


def test_gpu_indices_follow_cuda_visible_devices():
    assert devices.physical_gpu_index(0, "3") == 3
    assert devices.physical_gpu_index(1, "3,5") == 5
    assert devices.physical_gpu_index(0, "GPU-8f1c") == 0  # named by UUID: the logical index
    assert devices.physical_gpu_index(2, "") == 2
    assert gpu.visible_gpu_ids("") == [] and gpu.visible_gpu_ids("1, 2") == ["1", "2"]


def test_no_gpu_here_means_none_reported():
    """This machine has neither CUDA nor nvidia-smi: nothing, and no error."""
    assert gpu.query_gpus() == []
    assert gpu.query_gpus([]) == []


def test_a_cpu_run_records_its_device():
    info = devices.describe_device(torch.device("cpu"))
    assert info.kind == "cpu" and info.index is None and info.name
    assert info.total_memory_bytes > 2**30  # the machine's RAM


# ----------------------------------------------------------------------------- memory estimate


def test_memory_parts_of_a_hand_sized_ff_run():
    """N=100, width 10, 2 layers, full batch, 50 test images, in float32 counts:
    data 100x784 + 2x100 labels; parameters 4 x (784x10+10 + 10x10+10);
    training: zeroed layer-1 input 100x784, pre-activations 2x100x10, next inputs
    2x100x784 (the widest), freezing 2x(2x100x10); evaluation 50x784 + 4x50x784 + 50x10x2."""
    parts = gpu.run_memory_parts("ff", n_train=100, n_test=50, width=10, layers=2, batch_size=None)
    assert parts == {"data": 4 * 78_600, "parameters": 4 * 4 * 7_960, "training": 4 * 241_200,
                     "evaluation": 4 * 197_000}
    with pytest.raises(ValueError, match="model must be one of ff, bpff, bp, symba"):
        gpu.run_memory_parts("svm", 100, 50, 10, 2, None)


def test_a_colour_run_is_sized_by_its_data_sets_input_and_classes():
    """CIFAR-10's 3072 inputs: N=100, width 10, 1 layer, FF: data 100x3072 + 2x100;
    parameters 4 x (3072x10+10); the whole splits' sizes where no subset is set."""
    parts = gpu.run_memory_parts("ff", n_train=100, n_test=50, width=10, layers=1, batch_size=None,
                                 inputs=3072, classes=10)
    assert parts["data"] == 4 * (100 * 3072 + 200) and parts["parameters"] == 4 * 4 * (3072 * 10 + 10)
    shape = gpu.run_shape(build_spec("quick", {"datasets": ["cifar10"], "data": {"train_subset": None,
                                                                                  "test_subset": None}}),
                          RunKey("ff", "cifar10", 0))
    assert (shape["inputs"], shape["classes"], shape["n_train"], shape["n_test"]) == (3072, 10, 50_000, 10_000)
    emnist = gpu.run_shape(build_spec("quick", {"datasets": ["emnist_balanced"], "unseen_class": None}),
                           RunKey("bp", "emnist_balanced", 0))
    assert (emnist["inputs"], emnist["classes"]) == (784, 47)
    mnist, cifar = (gpu.estimate_run_memory(build_spec("quick", {"datasets": [d]}), RunKey("ff", d, 0))
                    for d in ("mnist", "cifar10"))
    assert cifar > mnist


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_type_has_a_memory_estimate(model):
    """Admission estimates every run a GPU worker may get from its model type's
    ``memory`` (fflab.models.MODELS): positive parts that grow with the data."""
    spec = build_spec("paper", {"models": [model]})
    assert gpu.estimate_run_memory(spec, RunKey(model, "mnist", 0)) > gpu.CUDA_CONTEXT_BYTES
    small, large = (gpu.run_memory_parts(model, n, 10_000, 784, 3, None) for n in (1000, 2000))
    assert all(small[part] > 0 for part in small) and large["training"] > small["training"]


def test_the_estimate_follows_the_spec():
    paper = build_spec("paper")
    ff, bpff, bp = (gpu.estimate_run_memory(paper, RunKey(model, "mnist", 0)) for model in ("ff", "bpff", "bp"))
    assert bp < ff < bpff  # minibatches < FF's frozen layers < autograd over the whole batch
    assert 1.5 * GIB < ff < 4 * GIB and bpff < 10 * GIB  # paper sizes: a few GiB each
    wide = build_spec("paper", {"network": {"width": 8192}})
    assert gpu.estimate_run_memory(wide, RunKey("bpff", "mnist", 0)) > 80 * GIB  # no single GPU holds it
    small = build_spec("paper", {"data": {"train_subset": 6000}})
    tensors = ff - gpu.CUDA_CONTEXT_BYTES
    assert gpu.estimate_run_memory(small, RunKey("ff", "mnist", 0)) - gpu.CUDA_CONTEXT_BYTES < tensors / 5


MEASURE = r"""
import importlib, json, sys, torch
from fflab.models import MODELS
from fflab.models.common import TrainingJob
from fflab.spec import NetworkSpec, TrainingSpec
name, n, batch = sys.argv[1], int(sys.argv[2]), (None if sys.argv[3] == "none" else int(sys.argv[3]))
module, _, attribute = name.partition(":")
model = getattr(importlib.import_module(module), attribute) if attribute else MODELS[name]
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
def train(n):
    images, labels = torch.rand(n, 784, generator=g), torch.arange(n) % 10
    net = model.build(NetworkSpec())
    training = TrainingSpec(epochs=1, learning_rate=1e-2, batch_size=batch if batch is None else min(batch, n))
    open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from here
    before = rss("VmRSS:")
    model.train(TrainingJob(net=net, images=images, labels=labels, training=training, generator=g))
    return rss("VmHWM:") - before
train(64)  # loads the libraries and their buffers first
print(json.dumps({"peak_above_data": train(n)}))
"""


def measured_training_memory(model: str, n: int, batch: int | None) -> int:
    """Peak RSS above the data of one epoch of the paper's network (784 x 3) on ``n``
    images, in a fresh process (``model``: a name in MODELS or ``module:ModelType``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(64 * 1024),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", MEASURE, model, str(n), str(batch).lower()],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_above_data"]


def check_the_estimate_covers_the_memory_training_takes(model, memory, name: str) -> None:
    """One epoch on N=4000 images: the estimate's training and parameter parts
    (``memory``, a model type's) cover the measured peak, within 3x. Minibatches
    of 512 where the model's paper default has minibatches."""
    n = 4000
    batch = None if model.training_defaults["batch_size"] is None else 512
    measured = measured_training_memory(name, n, batch)
    use = memory(RunShape(n, 10_000, 784, 3, batch))
    estimate = gpu.FLOAT_BYTES * (use.training + 4 * use.weights)
    assert measured <= estimate <= 3 * measured, (measured, estimate)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_the_estimate_covers_the_memory_training_takes(model):
    """Train one epoch of the paper's network (784 x 3) on N=4000 images on the CPU,
    where the same tensors are allocated as on a GPU, in a fresh process, and
    measure its peak RSS above the data: the estimate's training and parameter
    parts cover it, and are not wasteful (within 3x).

    glibc's malloc would keep freed tensors of a few MB in its heap (its mmap
    threshold rises to 32 MB after the first free), so the peak RSS moved by 20% from
    one run to the next (SymBa: 228-270 MB); a fixed threshold maps every tensor
    apart and returns it when freed, so the peak is that of the live tensors, as the
    estimate counts them (the caching allocator's share is ALLOCATOR_FACTOR's)."""
    entry = MODELS[model]
    check_the_estimate_covers_the_memory_training_takes(entry, entry.memory, model)


@pytest.mark.slow
def test_a_toy_model_types_memory_estimate_is_checked_like_the_others():
    """tests/toy_model.py's model type passes the check with its estimate, and fails
    it with one that leaves out its training working set."""
    from toy_model import TOY

    check_the_estimate_covers_the_memory_training_takes(TOY, TOY.memory, "toy_model:TOY")
    with pytest.raises(AssertionError):
        check_the_estimate_covers_the_memory_training_takes(
            TOY, lambda shape: MemoryUse(TOY.memory(shape).weights, 0), "toy_model:TOY")


# ----------------------------------------------------------------------------- admission


def test_admission_on_a_simulated_80_gib_gpu():
    total, margin = 80 * GIB, 0.10  # 72 GiB usable
    fits = admission_decision(10 * GIB, total, 80 * GIB, [], 4, margin)
    assert fits.admitted and fits.fits_empty
    full = admission_decision(10 * GIB, total, 14 * GIB, [22 * GIB] * 3, 4, margin)
    assert not full.admitted and full.fits_empty and "3 runs reserve 66.00 GiB of the 72.00 GiB usable" in full.reason
    slots = admission_decision(1 * GIB, total, 70 * GIB, [GIB] * 4, 4, margin)
    assert not slots.admitted and "FFLAB_RUNS_PER_GPU=4" in slots.reason
    # Another program holds most of the device: what is free now decides.
    busy = admission_decision(10 * GIB, total, 12 * GIB, [], 4, margin)
    assert not busy.admitted and busy.fits_empty and "12.00 GiB is free now" in busy.reason
    never = admission_decision(73 * GIB, total, 80 * GIB, [], 4, margin)
    assert not never.admitted and not never.fits_empty and "cannot fit" in never.reason
    assert admission_decision(72 * GIB, total, 80 * GIB, [], 4, margin).admitted  # exactly the usable memory
    with pytest.raises(ValueError, match="margin_fraction"):
        admission_decision(GIB, total, total, [], 4, 1.0)


class SimulatedGpu:
    """A device of ``total`` bytes of which programs other than ours use ``foreign``;
    each run in the ledger's file uses what was reserved for it while its process
    lives (a GPU frees a dead process's memory)."""

    def __init__(self, total: int, foreign: int = 0):
        self.total, self.foreign, self.ledger = total, foreign, None

    def memory(self) -> tuple[int, int]:
        entries = json.loads(self.ledger.path.read_text()) if self.ledger.path.is_file() else []
        used = sum(entry["bytes"] for entry in entries if self.ledger.alive(entry["pid"]))
        return self.total, self.total - self.foreign - used


def ledger_on(tmp_path: Path, device: SimulatedGpu, runs_per_gpu: int = 4) -> DeviceLedger:
    device.ledger = DeviceLedger(tmp_path / "gpu0.json", device.memory, runs_per_gpu, 0.10)
    return device.ledger


def test_the_ledger_admits_until_the_memory_is_reserved(tmp_path):
    device = SimulatedGpu(40 * GIB)  # 36 GiB usable
    ledger = ledger_on(tmp_path, device)
    assert [ledger.admit(f"run{i}", 10 * GIB).admitted for i in range(4)] == [True, True, True, False]
    ledger.release("run1")
    assert ledger.admit("run3", 10 * GIB).admitted
    assert sorted(entry["run"] for entry in ledger.admitted()) == ["run0", "run2", "run3"]
    ledger.release("run2")
    assert ledger.admit("run0", 10 * GIB).admitted  # a redelivered run replaces its own entry
    assert sorted(entry["run"] for entry in ledger.admitted()) == ["run0", "run3"]


def test_the_ledger_forgets_runs_of_dead_processes(tmp_path):
    ledger = ledger_on(tmp_path, SimulatedGpu(40 * GIB))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert ledger.admit("held", 30 * GIB, pid=child.pid).admitted
        assert not ledger.admit("next", 30 * GIB).admitted  # its process lives: it keeps its memory
    finally:
        child.kill()
        child.wait()
    assert ledger.admit("next", 30 * GIB).admitted  # killed (a pool child lost): its reservation goes
    assert [entry["run"] for entry in ledger.admitted()] == ["next"]


def _hammer(path: str, worker: int, rounds: int, violations) -> None:
    device = SimulatedGpu(40 * GIB)
    ledger = ledger_on(Path(path), device, runs_per_gpu=3)
    for round_ in range(rounds):
        run = f"w{worker}-r{round_}"
        if ledger.admit(run, 11 * GIB).admitted:
            held = ledger.admitted()
            if len(held) > 3 or sum(entry["bytes"] for entry in held) > 36 * GIB:
                violations.put(held)
            ledger.release(run)


def test_processes_sharing_a_gpu_never_over_admit(tmp_path):
    """Six processes admit and release 11 GiB runs on a 40 GiB GPU (3 fit) as fast
    as they can: the flock makes their decisions one after the other."""
    context = multiprocessing.get_context("fork")
    violations = context.Queue()
    workers = [context.Process(target=_hammer, args=(str(tmp_path), i, 40, violations)) for i in range(6)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert violations.empty()
    assert json.loads((tmp_path / "gpu0.json").read_text()) == []


# ----------------------------------------------------------------------------- in the worker


@pytest.fixture()
def queued_runs(worker_env):
    """Three runs of a tiny BP experiment, each handed to the (recording) broker by
    fair-share dispatch: a worker of three slots is registered."""
    from fflab import accounts
    from service_helpers import TINY

    tasks, settings, dispatcher = worker_env
    spec = build_spec(TINY["preset"], {**{k: v for k, v in TINY.items() if k != "preset"},
                                       "models": ["bp"], "seeds": [0, 1, 2]})
    with session_scope(settings.resolved_database_url) as session:
        user = accounts.create_user(session, "alice")
        jobs.create_experiment(session, settings, user, spec, "private")
    with get_sessionmaker(settings.resolved_database_url)() as session:
        jobs.register_worker(session, "pool", "pool@test", "test", 1, ["cpu"], concurrency=3)
        jobs.dispatch(session, settings, dispatcher)
    assert len(dispatcher.runs) == 3
    return tasks, settings, dispatcher, spec


def run_row(settings, run_pk: int) -> Run:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        run = session.get(Run, run_pk)
        session.expunge(run)
        return run


def test_admission_waits_releases_and_refuses_through_the_database(queued_runs, tmp_path):
    from worker import gpu_runs

    tasks, settings, dispatcher, spec = queued_runs
    (first, _, first_task), (second, _, second_task), (third, _, third_task) = dispatcher.runs[:3]
    device = SimulatedGpu(12 * GIB)  # 10.8 GiB usable
    ledger = ledger_on(tmp_path, device)
    estimate = gpu.estimate_run_memory(spec, RunKey("bp", "mnist", 0))
    ended, dispatched = [], []

    def fail(run_pk, status, error, task_id):
        ended.append((run_pk, status, error))

    def admitted(run_pk, task_id, settings=settings, sleep=lambda s: None, clock=lambda: 0.0):
        return gpu_runs.admitted_run(settings, run_pk, task_id, fail, lambda: dispatched.append(run_pk),
                                     ledger=ledger, on_gpu=lambda spec: True, sleep=sleep, clock=clock)

    ledger.admit("elsewhere", int(10.8 * GIB) - 3 * estimate // 2)  # room for one of these runs, not two
    with admitted(first, first_task) as go:
        assert go
        assert {entry["run"] for entry in ledger.admitted()} == {"elsewhere", str(first)}
        # The second waits: with no time to wait it goes back to the queue, saying why.
        with admitted(second, second_task, settings.model_copy(update={"gpu_admission_wait_s": 0})) as go2:
            assert not go2
    assert {entry["run"] for entry in ledger.admitted()} == {"elsewhere"}  # released at the end
    second_row = run_row(settings, second)
    assert second_row.status == "queued" and second_row.task_id is None and dispatched == [second]
    assert second_row.error.startswith("waiting: no GPU memory came free within FFLAB_GPU_ADMISSION_WAIT_S=0 s")

    # The third waits until the other run ends (at its second poll), then starts.
    polls = []
    assert ledger.admit("hog", estimate).admitted  # another run of this size
    with admitted(third, third_task, sleep=lambda s: polls.append(s) or (len(polls) == 2 and ledger.release("hog"))
                  ) as go3:
        assert go3 and len(polls) == 2
    assert ended == []

    # A run that could not fit even on the empty device fails at once.
    device.total = estimate
    with admitted(first, first_task) as go:
        assert not go
    assert ended and ended[0][:2] == (first, "failed") and "cannot fit" in ended[0][2]


@pytest.mark.slow
def test_a_run_out_of_gpu_memory_is_requeued_then_succeeds(queued_runs, monkeypatch):
    """The first try of a run raises CUDA's out-of-memory error: the run goes back
    to the queue with the reason, is sent again and succeeds on its next delivery
    (recording the device it trained on). A run out of memory on every try fails
    after FFLAB_TASK_MAX_ATTEMPTS, naming the reason."""
    from fflab.pipeline import experiment as experiment_pipeline

    tasks, settings, dispatcher, _ = queued_runs
    real_execute = experiment_pipeline.execute_run
    tries: dict[int, int] = {}

    def execute(spec, key, run_dir, **kwargs):
        tries[key.seed] = tries.get(key.seed, 0) + 1
        if key.seed == 1 or (key.seed == 0 and tries[0] == 1):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.2 GiB "
                                              "total capacity)")
        return real_execute(spec, key, run_dir, **kwargs)

    monkeypatch.setattr(experiment_pipeline, "execute_run", execute)
    first, _, task_id = dispatcher.runs[0]
    run_as_worker(tasks.run_task, first, task_id)
    row = run_row(settings, first)
    assert row.status == "queued" and row.task_id is not None and row.task_id != task_id  # sent again at once
    assert row.error == ("requeued after try 1: the GPU ran out of memory (CUDA out of memory. Tried to "
                         "allocate 2.00 GiB (GPU 0; 79.2 GiB total capacity))")
    run_as_worker(tasks.run_task, first, row.task_id)
    row = run_row(settings, first)
    assert row.status == "succeeded" and row.error is None and row.attempts == 2
    assert row.metrics["schema_version"] == "1.1"
    assert row.metrics["device_info"]["kind"] == "cpu" and row.metrics["device_info"]["total_memory_bytes"] > 0

    second = dispatcher.runs[1][0]
    for _ in range(settings.task_max_attempts):
        run_as_worker(tasks.run_task, second, run_row(settings, second).task_id)
    row = run_row(settings, second)
    assert row.status == "failed" and row.attempts == settings.task_max_attempts
    assert row.error.startswith("the GPU ran out of memory (CUDA out of memory.")
    assert row.error.endswith("on each of its 3 tries; the limit is FFLAB_TASK_MAX_ATTEMPTS=3")


def test_readyz_and_metrics_show_the_gpus_workers_hold(worker_env):
    from fastapi.testclient import TestClient

    from api.main import create_app

    _, settings, _ = worker_env
    h100 = gpu.parse_nvidia_smi(SMI)[0].device_info().as_dict()
    with session_scope(settings.resolved_database_url) as session:
        jobs.register_worker(session, "w1", "fflab-gpu0@lab", "lab", 4242, ["gpu"], concurrency=4, devices=[h100])
        jobs.register_worker(session, "w2", "fflab-cpu@lab", "lab", 4243, ["cpu"])
    with TestClient(create_app(settings.model_copy(update={"metrics_token": "scrape"}))) as client:
        ready = client.get("/readyz", headers={"Authorization": "Bearer scrape"}).json()
        anonymous = client.get("/readyz").json()
        metrics = client.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
    # Without the metrics token or an admin key: each check's state, no hosts, no folders, no addresses.
    assert anonymous["gpus"] == [] and anonymous["disk"] == {}
    assert set(anonymous["checks"]) == set(ready["checks"])
    assert all(":" not in state for state in anonymous["checks"].values())
    assert ready["gpus"] == [{"worker": "fflab-gpu0@lab", "hostname": "lab", "slots": 4, "index": 0,
                              "name": "NVIDIA H100 80GB HBM3", "total_memory_bytes": 81559 * 2**20}]
    assert ('fflab_worker_gpu_memory_bytes{gpu="0",hostname="lab",name="NVIDIA H100 80GB HBM3",'
            'worker="fflab-gpu0@lab"} 8.5520809984e+10')  # 81559 MiB in metrics
    assert 'fflab_worker_slots{hostname="lab",worker="fflab-gpu0@lab"} 4.0' in metrics
    assert 'fflab_worker_slots{hostname="lab",worker="fflab-cpu@lab"} 1.0' in metrics
    assert 'gpu="None"' not in metrics  # the CPU worker's RAM is not a GPU


# ----------------------------------------------------------------------------- make gpu-check


def test_budget_arithmetic_shrinks_seeds_and_epochs_together():
    from benchmarks.gpu_check import paper_run_counts, scale_to_fit, sweep_cost_s

    assert scale_to_fit(700, 600).scaled is False
    quarter = scale_to_fit(100 + 0.25 * 400, 500, fixed_cost_s=100)  # a quarter of the proportional part
    assert (quarter.seeds, quarter.epochs) == (8, 469)  # sqrt(1/4) x 15 seeds; 469 x 8 ~ 1/4 x 1000 x 15
    assert quarter.work_fraction == pytest.approx(0.25, abs=0.001) and quarter.scaled
    assert "8 of 15 seeds x 469 of 1000 epochs" in quarter.note
    tiny = scale_to_fit(10, 10_000)
    assert (tiny.seeds, tiny.epochs) == (1, 15)  # 1/1000 of the work: one seed, 15 epochs
    assert (scale_to_fit(1, 100_000).seeds, scale_to_fit(1, 100_000).epochs) == (1, 10)  # never below
    assert scale_to_fit(50, float("inf")).epochs == 10
    one_seed = scale_to_fit(30, 120, full_seeds=1)
    assert (one_seed.seeds, one_seed.epochs) == (1, 250)
    assert paper_run_counts(15) == {"ff": 45, "bpff": 30, "bp": 30}  # 90 runs + 15 unseen-class runs
    # 45 FF x 1000 x 10 ms + 30 BP/FF x 1000 x 30 ms + 30 BP x 20 x 0.5 s, 105 runs x 8 s over 4 slots, start 30 s
    assert sweep_cost_s(0.01, 0.03, 0.5, runs_per_gpu=4) == pytest.approx(30 + 450 + 900 + 300 + 210)
    assert sweep_cost_s(0.01, 0.03, 0.5, gpus=2, runs_per_gpu=4) == pytest.approx(30 + 825 + 105)


def test_tf32_verdict_on_hand_built_records():
    from benchmarks.gpu_check import tf32_verdict

    fp32 = {"accuracy": 0.95, "fraction_positive_weights": [0.5, 0.2, 0.3], "train_seconds": 20.0,
            "ensemble_sizes_method1": [[10, 12, None], [5, 5, 5], [3, 3, 3]]}
    close = {**fp32, "accuracy": 0.948, "train_seconds": 8.0, "ensemble_sizes_method1": [[11, 12, None], [5, 5, 6],
                                                                                        [3, 3, 3]]}
    verdict = tf32_verdict(fp32, close)
    assert verdict["use_tf32"] and verdict["train_speedup"] == 2.5
    assert verdict["ensemble_size_relative_difference_per_layer"] == pytest.approx([1 / 22, 1 / 15, 0.0])
    worse = tf32_verdict(fp32, {**close, "accuracy": 0.90, "fraction_positive_weights": [0.5, 0.25, 0.3]})
    assert not worse["use_tf32"]
    assert [reason.split(" moved")[0] for reason in worse["reasons"]] == ["accuracy", "fraction of positive weights"]
    assert not tf32_verdict(fp32, {**close, "train_seconds": 19.0})["use_tf32"]  # no faster: not worth it


def test_gpu_check_without_cuda_skips_cleanly(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--budget", "300", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gpu-check skipped: no CUDA: nothing was run" in done.stdout
    report = json.loads(out.read_text())
    assert report["status"] == "skipped" and report["reason"] == "skipped: no CUDA"
    assert report["budget_s"] == 300 and report["stages"] == {}


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@skip_without_cuda
@pytest.mark.parametrize("model", list(MODELS))
def test_the_estimate_covers_what_a_paper_run_allocates_on_cuda(model):
    """One epoch of a paper-sized run (N=60000, 784 x 3) on the GPU: the most its
    tensors took (torch.cuda.max_memory_reserved) is within the estimate without
    the context, and the estimate is not wasteful (within 3x of the tensors)."""
    from fflab.models.common import TrainingJob
    from fflab.spec import NetworkSpec

    spec = build_spec("paper", {"models": [model]})
    n = 60_000
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 784, generator=generator).cuda()
    labels = (torch.arange(n) % 10).cuda()
    net = MODELS[model].build(NetworkSpec()).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    training = spec.training(model).model_copy(update={"epochs": 1})
    MODELS[model].train(TrainingJob(net=net, images=images, labels=labels, training=training, generator=generator))
    torch.cuda.synchronize()
    reserved = torch.cuda.max_memory_reserved()
    estimate = gpu.estimate_run_memory(spec, RunKey(model, "mnist", 0)) - gpu.CUDA_CONTEXT_BYTES
    assert reserved <= estimate <= 3 * torch.cuda.max_memory_allocated(), (reserved, estimate)


def test_the_usage_estimates_follow_the_data_set():
    """fflab.usage: a colour run stores and computes more than a grey one of the same
    shape, and EMNIST balanced's 47 classes cost BP's head and FF's evaluation more."""
    from fflab import usage

    def size(dataset: str, model: str = "ff") -> usage.RunSize:
        return usage.RunSize.of(build_spec("quick", {"datasets": [dataset], "unseen_class": None}),
                                RunKey(model, dataset, 0))

    grey, colour, letters = size("mnist"), size("cifar10"), size("emnist_balanced")
    assert (grey.inputs, colour.inputs, letters.classes) == (784, 3072, 47)
    assert colour.forward_macs - grey.forward_macs == (3072 - 784) * grey.width
    spec = build_spec("quick", {"datasets": ["mnist", "cifar10"], "unseen_class": None})
    assert usage.estimate_run_seconds(spec, RunKey("ff", "cifar10", 0)) > usage.estimate_run_seconds(
        spec, RunKey("ff", "mnist", 0))
