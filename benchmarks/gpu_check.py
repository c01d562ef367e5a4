"""`make gpu-check`: prove the GPU path on a machine with CUDA, in one command, within a budget.

    python -m benchmarks.gpu_check --budget 600 --out benchmarks/gpu_check.json

Stages, in order, each in a process of its own with a time limit:

1. ``cuda_tests``: ``pytest -m cuda``, the test suite's device variants (engine
   against reference, checkpoint resume, prediction, the memory estimate).
2. ``bench``: ``benchmarks.ff_bench --device cuda --n 60000``, the engine against
   the reference and the roofline (``make bench`` on the GPU).
3. ``tf32``: one FF run of the paper's schedule (MNIST, N=60000, full batch)
   with FP32 and with TF32 products (the spec's ``tf32``), from the same seed,
   through the product's pipeline (fflab.pipeline.experiment.execute_run): accuracy, ensemble sizes and the fraction of positive weights side by
   side, and a verdict (``tf32_verdict``).
4. ``paper_sweep``: the ``paper`` preset (90 runs and the unseen-class runs)
   through the service: ``fflab serve --no-worker``, one ``fflab worker --gpu N``
   per visible GPU (FFLAB_RUNS_PER_GPU runs each: its slots in fair-share
   dispatch, which hands it no more) and a CPU worker for the aggregation, on the embedded defaults in a temporary folder; timed from
   submission to the end, with per-model times from the runs' metrics and GPU
   utilisation sampled with nvidia-smi.

The budget. Stages 1 and 2 have fixed sizes (about ``FIXED_STAGE_S`` each); what
is left is shared by stages 3 and 4 (``TF32_SHARE``). Their size is then chosen
from the epoch times stage 2 measured (``sweep_cost_s``): if the paper's full size
would not fit its share, seeds and epochs shrink together so that the work
(seeds x epochs) shrinks in proportion (``scale_to_fit``), and the report says so
(``scaled``, ``work_fraction``) and projects the full size from the measurement.

Without CUDA it prints why, writes a report with ``"status": "skipped"`` and
``"reason": "skipped: no CUDA"``, and exits 0. Exit code 1: a stage failed or
timed out (the report says which); 0 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "gpu_check.json"
DEFAULT_BUDGET_S = 600.0
SKIPPED = "skipped: no CUDA"

# The paper preset's size (fflab.spec): 15 seeds, FF and BP/FF 1000 epochs, BP 20;
# 3 models x 2 data sets x 15 seeds, plus FF without class 0 on Fashion-MNIST per seed.
PAPER_SEEDS, PAPER_EPOCHS, PAPER_BP_EPOCHS = 15, 1000, 20
PAPER_N = 60_000
MIN_EPOCHS = 10
# Stages of fixed size: what they are expected to take (start-up, data, their work).
FIXED_STAGE_S = {"cuda_tests": 90.0, "bench": 90.0}
TF32_SHARE = 0.2  # of what the fixed stages leave
# Assumed until measured: per run, the evaluation on the test set, the CPU analysis
# (ensembles, weights) and the uploads; per sweep, starting the service.
RUN_OVERHEAD_S = 8.0
SERVICE_START_S = 30.0
TIME_LIMIT_FACTOR = 1.5  # a stage is stopped at this times its share (at least a minute)


# --------------------------------------------------------------------------- budget arithmetic


@dataclass(frozen=True)
class Scale:
    """How much of the paper's size a stage runs: ``seeds`` and ``epochs`` (FF per
    layer and BP/FF), ``work_fraction`` = seeds x epochs over the full size's."""

    seeds: int
    epochs: int
    work_fraction: float
    scaled: bool
    note: str


def scale_to_fit(available_s: float, full_cost_s: float, fixed_cost_s: float = 0.0,
                 full_seeds: int = PAPER_SEEDS, full_epochs: int = PAPER_EPOCHS,
                 min_epochs: int = MIN_EPOCHS) -> Scale:
    """The largest size whose estimated cost fits ``available_s``, the cost being
    ``fixed_cost_s`` plus a part proportional to seeds x epochs (``full_cost_s`` at
    full size). Seeds and epochs shrink together: seeds by the square root of the
    fraction f, epochs so that seeds x epochs is f of the full work (at least
    ``min_epochs`` and one seed)."""
    if full_cost_s <= fixed_cost_s:
        fraction = 1.0
    else:
        fraction = (available_s - fixed_cost_s) / (full_cost_s - fixed_cost_s)
    if fraction >= 1:
        return Scale(full_seeds, full_epochs, 1.0, False, "full size")
    fraction = max(fraction, 0.0)
    seeds = min(full_seeds, max(1, round(full_seeds * math.sqrt(fraction))))
    epochs = min(full_epochs, max(min_epochs, round(full_epochs * fraction * full_seeds / seeds)))
    work = seeds * epochs / (full_seeds * full_epochs)
    note = (f"scaled to fit the budget: {seeds} of {full_seeds} seeds x {epochs} of {full_epochs} epochs "
            f"= {work:.3f} of the full work (estimated full cost {full_cost_s:.0f} s, {available_s:.0f} s "
            f"available)")
    return Scale(seeds, epochs, work, True, note)


def paper_run_counts(seeds: int) -> dict[str, int]:
    """Runs of the paper preset with ``seeds`` seeds, by model (FF counts the
    unseen-class runs)."""
    return {"ff": 2 * seeds + seeds, "bpff": 2 * seeds, "bp": 2 * seeds}


def sweep_cost_s(ff_epoch_s: float, bpff_epoch_s: float, bp_epoch_s: float, seeds: int = PAPER_SEEDS,
                 epochs: int = PAPER_EPOCHS, bp_epochs: int = PAPER_BP_EPOCHS, gpus: int = 1,
                 runs_per_gpu: int = 1, run_overhead_s: float = RUN_OVERHEAD_S,
                 start_s: float = SERVICE_START_S) -> float:
    """Estimated wall time of the paper sweep: the GPU work of every run, one run
    after the other on each of ``gpus`` (products this size keep a GPU busy, so
    runs sharing one do not finish sooner: an upper bound where they are
    launch-bound), the per-run CPU work spread over every slot
    (``gpus`` x ``runs_per_gpu``), and the service's start. ``ff_epoch_s``: one
    epoch of every FF layer at N=60000; ``bpff_epoch_s`` and ``bp_epoch_s``: one
    epoch at N=60000."""
    runs = paper_run_counts(seeds)
    gpu = (runs["ff"] * epochs * ff_epoch_s + runs["bpff"] * epochs * bpff_epoch_s
           + runs["bp"] * bp_epochs * bp_epoch_s)
    return start_s + gpu / gpus + sum(runs.values()) * run_overhead_s / (gpus * runs_per_gpu)


def time_limit(share_s: float) -> float:
    return max(60.0, share_s * TIME_LIMIT_FACTOR)


# --------------------------------------------------------------------------- TF32 verdict


def _layer_means(sizes: list[list[int | None]]) -> list[float | None]:
    means = []
    for layer in sizes:
        known = [size for size in layer if size is not None]
        means.append(sum(known) / len(known) if known else None)
    return means


def tf32_verdict(fp32: dict, tf32: dict, accuracy_tolerance: float = 0.005, fraction_tolerance: float = 0.01,
                 ensemble_tolerance: float = 0.15, min_speedup: float = 1.1) -> dict:
    """Compare two runs' summary records (fflab.pipeline.paper_analyses.run_record) from the same
    seed, FP32 and TF32 products. TF32 is recommended when the test accuracy moves
    by at most ``accuracy_tolerance``, every layer's fraction of positive weights
    by at most ``fraction_tolerance``, every layer's mean Method 1 ensemble size
    by at most ``ensemble_tolerance`` (relative), and training is at least
    ``min_speedup`` times faster. One seed: a screen, not a proof."""
    accuracy = tf32["accuracy"] - fp32["accuracy"]
    fractions = [b - a for a, b in zip(fp32["fraction_positive_weights"], tf32["fraction_positive_weights"])]
    ensembles = []
    for a, b in zip(_layer_means(fp32["ensemble_sizes_method1"]), _layer_means(tf32["ensemble_sizes_method1"])):
        ensembles.append(None if a is None or b is None else (b - a) / max(a, 1.0))
    speedup = fp32["train_seconds"] / tf32["train_seconds"] if tf32["train_seconds"] > 0 else None
    reasons = []
    if abs(accuracy) > accuracy_tolerance:
        reasons.append(f"accuracy moved by {accuracy:+.4f} (tolerance {accuracy_tolerance})")
    if any(abs(d) > fraction_tolerance for d in fractions):
        reasons.append(f"fraction of positive weights moved by up to {max(map(abs, fractions)):.4f} "
                       f"(tolerance {fraction_tolerance})")
    if any(d is None or abs(d) > ensemble_tolerance for d in ensembles):
        reasons.append(f"mean ensemble size moved by {ensembles} (relative tolerance {ensemble_tolerance})")
    if speedup is None or speedup < min_speedup:
        reasons.append(f"training speedup {speedup} is below {min_speedup}")
    return {
        "accuracy_difference": accuracy,
        "fraction_positive_difference_per_layer": fractions,
        "ensemble_size_relative_difference_per_layer": ensembles,
        "train_speedup": speedup,
        "use_tf32": not reasons,
        "reasons": reasons or ["within every tolerance and faster"],
    }


# --------------------------------------------------------------------------- stages


def run_child(command: list[str], limit_s: float, log_path: Path) -> dict:
    """Run a stage's process with a time limit; its output goes to ``log_path``."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            returncode = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
    seconds = time.monotonic() - started
    tail = log_path.read_text(errors="replace").splitlines()[-15:]
    return {"command": " ".join(command), "seconds": round(seconds, 1), "returncode": returncode,
            "timed_out": returncode is None, "limit_s": round(limit_s), "log": str(log_path), "tail": tail}


PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected)")


def stage_cuda_tests(workdir: Path, limit_s: float) -> dict:
    result = run_child([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"],
                       limit_s, workdir / "cuda_tests.log")
    counts = {}
    for line in result["tail"]:
        for number, what in PYTEST_COUNTS.findall(line):
            counts[what.rstrip("s") if what.startswith("error") else what] = int(number)
    result["counts"] = counts
    result["ok"] = result["returncode"] == 0 and counts.get("passed", 0) > 0
    return result


def stage_bench(workdir: Path, limit_s: float, repeats: int) -> dict:
    out = workdir / "bench.json"
    result = run_child([sys.executable, "-m", "benchmarks.ff_bench", "--device", "cuda", "--n", str(PAPER_N),
                        "--repeats", str(repeats), "--out", str(out)], limit_s, workdir / "bench.log")
    result["ok"] = result["returncode"] == 0 and out.is_file()
    if result["ok"]:
        bench = json.loads(out.read_text())
        bp = bench.get("bp", {})
        scale = PAPER_N / bp["images"] if bp else None
        result["summary"] = {
            "ff_epoch_s": bench["ff"]["epoch"],  # reference, engine, roofline: one epoch of every layer
            "ff_speedup_vs_reference": bench["ff_speedup_vs_reference"],
            "ff_engine_over_roofline": bench["ff_engine_over_roofline"],
            "measurement_errors": bench["measurement_errors"],
            "bpff_epoch_s_at_60000": bp["bpff"]["product_s_per_epoch"] * scale if bp else None,
            "bp_epoch_s_at_60000": bp["bp"]["product_s_per_epoch"] * scale if bp else None,
            "memory": bench.get("memory"),
        }
    return result


def tf32_child(epochs: int, out: Path) -> None:
    """Stage 3's body, in its own process: the same FF run with FP32 and TF32."""
    import torch

    from fflab.pipeline.experiment import execute_run
    from fflab.spec import RunKey, build_spec

    key = RunKey("ff", "mnist", 0)
    records = {}
    with tempfile.TemporaryDirectory(prefix="fflab-tf32-") as tmp:
        for name, tf32 in (("fp32", False), ("tf32", True)):
            spec = build_spec("paper", {"seeds": [0], "ff": {"epochs": epochs}, "device": "cuda", "tf32": tf32})
            torch.cuda.synchronize()
            records[name] = execute_run(spec, key, Path(tmp) / name)
    keep = ("accuracy", "fraction_positive_weights", "ensemble_sizes_method1", "ensemble_sizes_method2",
            "train_seconds", "mean_shared_units")
    out.write_text(json.dumps({
        "epochs": epochs, "n": PAPER_N, "dataset": "mnist", "seed": 0,
        "fp32": {k: records["fp32"][k] for k in keep}, "tf32": {k: records["tf32"][k] for k in keep},
        "verdict": tf32_verdict(records["fp32"], records["tf32"]),
    }, indent=2))


def stage_tf32(workdir: Path, limit_s: float, scale: Scale) -> dict:
    out = workdir / "tf32.json"
    result = run_child([sys.executable, "-m", "benchmarks.gpu_check", "--tf32-child", str(scale.epochs),
                        "--out", str(out)], limit_s, workdir / "tf32.log")
    result["scale"] = asdict(scale)
    result["ok"] = result["returncode"] == 0 and out.is_file()
    if result["ok"]:
        result["comparison"] = json.loads(out.read_text())
    return result


class UtilisationSampler:
    """nvidia-smi's utilisation and memory in use of every GPU, every ``interval`` s."""

    QUERY = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]

    def __init__(self, interval: float = 2.0):
        self.interval, self.samples = interval, []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                text = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            for line in text.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 3 and all(p.isdigit() for p in parts):
                    self.samples.append({"gpu": int(parts[0]), "utilisation": int(parts[1]),
                                         "memory_used_mib": int(parts[2])})

    def __enter__(self) -> UtilisationSampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=15)

    def summary(self) -> dict:
        by_gpu: dict[int, list[dict]] = {}
        for sample in self.samples:
            by_gpu.setdefault(sample["gpu"], []).append(sample)
        return {str(gpu): {"samples": len(rows),
                           "mean_utilisation_percent": sum(r["utilisation"] for r in rows) / len(rows),
                           "peak_memory_used_mib": max(r["memory_used_mib"] for r in rows)}
                for gpu, rows in by_gpu.items()}


def per_model_times(runs: list[dict]) -> dict:
    """Per model: runs, and the sum and mean of train, evaluate and analyse seconds
    (from each run's metrics), and the devices the runs trained on."""
    out: dict[str, dict] = {}
    for run in runs:
        metrics = run.get("metrics") or {}
        timings = metrics.get("timings") or {}
        row = out.setdefault(run["model"], {"runs": 0, "train_s": 0.0, "evaluate_s": 0.0, "analyse_s": 0.0,
                                            "devices": []})
        row["runs"] += 1
        for key, name in (("train_s", "train_seconds"), ("evaluate_s", "evaluate_seconds"),
                          ("analyse_s", "analyse_seconds")):
            row[key] += timings.get(name, 0.0)
        device = metrics.get("device_info")
        if device and device not in row["devices"]:
            row["devices"].append(device)
    for row in out.values():
        for key in ("train_s", "evaluate_s", "analyse_s"):
            row[f"mean_{key}"] = row[key] / row["runs"]
    return out


def stage_paper_sweep(workdir: Path, limit_s: float, scale: Scale, gpus: list[int], runs_per_gpu: int,
                      overrides: dict | None = None) -> dict:
    """The paper preset (at ``scale``, with ``overrides`` of its spec) through a
    service of this machine's own. Without ``gpus`` the runs go to the CPU worker
    (a dry run of the orchestration on a machine without a GPU)."""
    import httpx

    from fflab.client import Client

    var = workdir / "service"
    port = free_port()
    env = {**os.environ, "FFLAB_VAR_DIR": str(var), "FFLAB_API_PORT": str(port),
           "FFLAB_GPUS_AVAILABLE": "true" if gpus else "false",
           "FFLAB_RUNS_PER_GPU": str(runs_per_gpu),
           "FFLAB_SWEEP_INTERVAL_S": "2", "FFLAB_PROGRESS_INTERVAL_S": "5", "FFLAB_WORKER_NICE": "0"}
    for name in ("FFLAB_DATABASE_URL", "FFLAB_BROKER_URL", "FFLAB_RESULT_BACKEND", "FFLAB_S3_BUCKET",
                 "FFLAB_API_URL", "FFLAB_API_KEY", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    fflab = [sys.executable, "-m", "fflab"]
    commands = {"api": fflab + ["serve", "--no-worker"], "cpu-worker": fflab + ["worker", "--queue", "cpu"]}
    commands.update({f"gpu{index}-worker": fflab + ["worker", "--gpu", str(index)] for index in gpus})
    result: dict = {"scale": asdict(scale), "gpus": gpus, "runs_per_gpu": runs_per_gpu, "ok": False}
    processes: dict[str, subprocess.Popen] = {}
    logs = []
    started = time.monotonic()
    try:
        var.mkdir(parents=True)
        # The API first: it migrates the database and writes the admin key.
        for name, command in commands.items():
            log = open(workdir / f"sweep-{name}.log", "w")
            logs.append(log)
            processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                               start_new_session=True)
            if name == "api":
                wait_until(lambda: (var / "admin.key").is_file(), 120, "the API's admin key")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), 180, "/readyz (the API and a worker per queue)")
        result["readyz"] = httpx.get(f"{url}/readyz", timeout=10).json()
        result["service_start_s"] = round(time.monotonic() - started, 1)
        body = {"preset": "paper", "name": "gpu-check", "seeds": list(range(scale.seeds)),
                "ff": {"epochs": scale.epochs}, "bpff": {"epochs": scale.epochs},
                "device": "cuda" if gpus else "cpu", **(overrides or {})}
        with Client(url, (var / "admin.key").read_text().strip(), timeout=60) as api, \
                UtilisationSampler() as sampler:
            submitted = time.monotonic()
            created = api.submit(body)
            deadline = started + limit_s
            try:
                final = api.wait(created["id"], timeout=max(1.0, deadline - time.monotonic()), interval=2.0)
            except TimeoutError:
                api.cancel(created["id"])
                final = api.experiment(created["id"])
                result["timed_out"] = True
            result["wall_s"] = round(time.monotonic() - submitted, 1)
            result["status"] = final["status"]
            result["error"] = final.get("error")
            runs = [api.run(created["id"], run["run_id"]) for run in api.runs(created["id"])]
        result["runs_total"] = len(runs)
        result["runs_succeeded"] = sum(run["status"] == "succeeded" for run in runs)
        result["per_model"] = per_model_times(runs)
        result["gpu_utilisation"] = sampler.summary()
        if result["runs_succeeded"] == len(runs):
            # Linear in seeds x epochs: the per-run overhead grows with seeds only, so
            # this overstates it when the sweep was scaled down.
            result["projected_full_preset_s"] = round(result["wall_s"] / scale.work_fraction)
        result["ok"] = final["status"] == "succeeded"
    except Exception as error:  # noqa: BLE001 - the report names it
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()  # a warm shutdown; its group is killed if it hangs
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for log in logs:
            log.close()
        result["seconds"] = round(time.monotonic() - started, 1)
        result["logs"] = [log.name for log in logs]
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.5)


# --------------------------------------------------------------------------- main


def cuda_device() -> dict | None:
    """The first CUDA device's facts, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    from fflab.devices import describe_device

    return {**describe_device(torch.device("cuda", 0)).as_dict(), "count": torch.cuda.device_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda}


def summary_lines(report: dict) -> list[str]:
    if report["status"] == "skipped":
        return [f"gpu-check {report['reason']}: nothing was run (report: {report['out']})"]
    device = report["device"]
    lines = [f"gpu-check on {device['name']} ({device['total_memory_bytes'] / 2**30:.0f} GiB, "
             f"{device['count']} visible), budget {report['budget_s']:.0f} s, took {report['seconds']:.0f} s"]
    stages = report["stages"]
    for name, stage in stages.items():
        state = "ok" if stage.get("ok") else ("TIMED OUT" if stage.get("timed_out") else "FAILED")
        lines.append(f"  {name}: {state} in {stage.get('seconds', 0):.0f} s")
    tests = stages.get("cuda_tests", {})
    if tests.get("counts"):
        lines.append(f"  cuda tests: {tests['counts']}")
    bench = stages.get("bench", {}).get("summary")
    if bench:
        epoch = bench["ff_epoch_s"]
        lines.append(f"  FF epoch at N={PAPER_N}: engine {epoch['engine']:.4f} s, reference {epoch['reference']:.4f} s, "
                     f"roofline {epoch['roofline']:.4f} s; speedup {bench['ff_speedup_vs_reference']}, "
                     f"engine/roofline {bench['ff_engine_over_roofline']}")
    comparison = stages.get("tf32", {}).get("comparison")
    if comparison:
        verdict = comparison["verdict"]
        lines.append(f"  TF32 ({comparison['epochs']} epochs): accuracy {comparison['fp32']['accuracy']:.4f} (FP32) vs "
                     f"{comparison['tf32']['accuracy']:.4f} (TF32), speedup {verdict['train_speedup']}; "
                     f"use TF32: {verdict['use_tf32']} ({'; '.join(verdict['reasons'])})")
    sweep = stages.get("paper_sweep", {})
    if "wall_s" in sweep:
        scale = sweep["scale"]
        lines.append(f"  paper sweep: {sweep['runs_succeeded']}/{sweep['runs_total']} runs in {sweep['wall_s']:.0f} s "
                     f"({scale['note']}); projected full preset: {sweep.get('projected_full_preset_s')} s")
    for note in report["scaled"]:
        lines.append(f"  note: {note}")
    lines.append(f"report: {report['out']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds of GPU time for the whole check (default 600)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="+", choices=("cuda_tests", "bench", "tf32", "paper_sweep"),
                        help="run only these stages")
    parser.add_argument("--tf32-child", type=int, metavar="EPOCHS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tf32_child is not None:
        tf32_child(args.tf32_child, args.out)
        return 0

    began = time.monotonic()
    report: dict = {
        "command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "budget_s": args.budget, "out": str(args.out), "scaled": [], "stages": {},
    }
    device = cuda_device()
    if device is None:
        report.update(status="skipped", reason=SKIPPED)
        write_report(report, args.out)
        print("\n".join(summary_lines(report)))
        return 0
    from fflab.gpu import visible_gpus
    from fflab.settings import get_settings

    report.update(status="running", device=device)
    stages = set(args.only or ("cuda_tests", "bench", "tf32", "paper_sweep"))
    workdir = Path(tempfile.mkdtemp(prefix="fflab-gpu-check-"))
    report["workdir"] = str(workdir)
    fixed = sum(FIXED_STAGE_S[name] for name in FIXED_STAGE_S if name in stages)
    if "cuda_tests" in stages:
        report["stages"]["cuda_tests"] = stage_cuda_tests(workdir, time_limit(FIXED_STAGE_S["cuda_tests"]))
    bench_summary = None
    if stages & {"bench", "tf32", "paper_sweep"}:  # the later stages are sized from its epoch times
        repeats = 3 if args.budget >= DEFAULT_BUDGET_S else 1
        if repeats < 3:
            report["scaled"].append(f"bench: {repeats} timed round instead of 3 (budget below {DEFAULT_BUDGET_S:g} s)")
        report["stages"]["bench"] = stage_bench(workdir, time_limit(FIXED_STAGE_S["bench"]), repeats)
        bench_summary = report["stages"]["bench"].get("summary")
    left = max(0.0, args.budget - (time.monotonic() - began)) if fixed else args.budget
    if bench_summary is None and stages & {"tf32", "paper_sweep"}:
        report["scaled"].append("no epoch times from the bench: tf32 and the sweep run at their smallest size")
    ff_epoch = bench_summary["ff_epoch_s"]["engine"] if bench_summary else float("inf")
    if "tf32" in stages:
        share = left * (TF32_SHARE if "paper_sweep" in stages else 1.0)
        scale = scale_to_fit(share, 2 * PAPER_EPOCHS * ff_epoch + 2 * RUN_OVERHEAD_S, 2 * RUN_OVERHEAD_S,
                             full_seeds=1)
        if scale.scaled:
            report["scaled"].append(f"tf32: {scale.note}")
        report["stages"]["tf32"] = stage_tf32(workdir, time_limit(share), scale)
    if "paper_sweep" in stages:
        share = max(0.0, args.budget - (time.monotonic() - began))
        gpus = [gpu.index for gpu in visible_gpus()] or list(range(device["count"]))
        if bench_summary and bench_summary["bpff_epoch_s_at_60000"] is not None:
            full = sweep_cost_s(ff_epoch, bench_summary["bpff_epoch_s_at_60000"],
                                bench_summary["bp_epoch_s_at_60000"], gpus=len(gpus),
                                runs_per_gpu=get_settings().runs_per_gpu)
        else:
            full = float("inf")
        scale = scale_to_fit(share, full, SERVICE_START_S)
        if scale.scaled:
            report["scaled"].append(f"paper sweep: {scale.note}")
        report["stages"]["paper_sweep"] = stage_paper_sweep(workdir, time_limit(share), scale, gpus,
                                                            get_settings().runs_per_gpu)
    report["seconds"] = round(time.monotonic() - began, 1)
    failed = [name for name, stage in report["stages"].items() if not stage.get("ok")]
    report["status"] = "failed" if failed else "ok"
    if failed:
        report["failed_stages"] = failed
    write_report(report, args.out)
    print("\n".join(summary_lines(report)))
    return 1 if failed else 0


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
