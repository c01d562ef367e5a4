"""FF training speed: the straightforward reference, the product's engine and the
engine's roofline, timed in one process on the same data and the paper's shapes.

    python -m benchmarks.ff_bench --n 60000 --repeats 3

Shapes: 784-784-784, sigmoid, l_inf goodness, l_inf normalisation between
hidden layers, full batch of 2 x N images (positive and negative), Adam lr 1e-2
(the ``paper`` preset). For every layer it times, per training epoch,

1. ``reference``: ``benchmarks/reference.py``, FF written the way public FF code
   does it (separate forward passes for positive and negative data, autograd
   backward, normalisation recomputed every epoch);
2. ``engine``: ``fflab.models.ff_engine.FFEngine``, what ``train_ff`` runs;
3. ``roofline``: the bare matrix products the engine cannot avoid. With l_inf
   goodness every pre-activation must be computed to find each row's maximum,
   so per epoch: layer 1, one (N x 784) @ (784 x 784) product (positive and
   negative data share it); layers 2 and 3, one (2N x 784) @ (784 x 784) product
   (positive and negative inputs differ in every entry), i.e. 2 N 784^2 and
   4 N 784^2 multiply-adds. Bias included (``addmm``), written into a
   preallocated output. The sparse weight gradient, Adam and the row maxima are
   O(N x 784) and are the engine's overhead above this.

Epochs are interleaved (reference, engine, roofline, in rotating order) after
one warm-up round, so that load from other processes hits the three alike. Each
time is the minimum over the rounds: contention from other processes only ever
adds time, so the least disturbed round is the best estimate of the cost, and
noise cannot push it below what the work needs. The spread (min, median, max) of
every time is reported, and the ratios by the median wall time and the median CPU
time beside the headline. A ratio to the roofline below 1 (a variant beating the
lower bound of its own work) is a measurement error: it is reported as such and
recorded as null, never as a result. It also times prediction on the test set (ten labels, three
layers), peak memory (a child process per variant: peak RSS after the data is
loaded, ``ru_maxrss``; CUDA: max allocated), and BP/FF and BP epochs against
plain PyTorch loops. It prints a table and writes ``benchmarks/latest.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.reference import ReferenceFF, reference_label_goodness
from fflab.data import load_split
from fflab.models.bp import BPClassifier, train_bp
from fflab.models.bpff import train_bpff
from fflab.models.common import (
    GoodnessNetwork,
    embed_labels,
    goodness_loss,
    label_goodness,
    minibatches,
    resolve_device,
    seed_everything,
    wrong_labels,
)
from fflab.models.ff_engine import FFEngine, matmul_precision
from fflab.spec import TrainingSpec, build_spec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "latest.json"
SEED = 0


# ------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def timed_wall_and_cpu(fn, device: torch.device) -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads) of ``fn()``."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


ESTIMATORS = {
    # The headline: contention from other processes only ever adds time, so the best
    # round is the least disturbed one, and noise cannot push it below the true cost.
    "min_wall": lambda wall, cpu: min(wall),
    # For comparison: the median wall time of the rounds (what earlier versions
    # reported; under load it can fall anywhere), and the median CPU time (not
    # charged while the scheduler runs another process, but it counts the time
    # threads spin waiting for each other).
    "median_wall": lambda wall, cpu: statistics.median(wall),
    "median_cpu": lambda wall, cpu: statistics.median(cpu),
}
HEADLINE = "min_wall"
VARIANTS = ("reference", "engine", "roofline")


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def layer_row(wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict:
    """One layer's times (the headline estimator per variant), their spread, every
    estimator, and the layer's ratios."""
    row = {name: ESTIMATORS[HEADLINE](wall[name], cpu[name]) for name in VARIANTS}
    row["wall_s"], row["cpu_s"] = wall, cpu
    row["spread_s"] = {name: spread(wall[name]) for name in VARIANTS}
    row["by_estimator"] = {
        estimator: {name: fn(wall[name], cpu[name]) for name in VARIANTS} for estimator, fn in ESTIMATORS.items()
    }
    row["speedup_vs_reference"] = row["reference"] / row["engine"]
    row["engine_over_roofline"] = row["engine"] / row["roofline"]
    return row


def bounded_ratio(name: str, value: float, errors: list[str]) -> float | None:
    """A time over the roofline (its lower bound): below 1 it is a measurement error,
    noted in ``errors`` and returned as None."""
    if value < 1:
        errors.append(f"{name} = {value:.2f} < 1: a variant cannot beat the roofline of its own work; "
                      f"the timing is wrong (other processes, frequency changes), not the engine fast")
        return None
    return value


def ff_totals(layers: list[dict]) -> dict:
    """Whole-epoch times (sums of the layers') and ratios, by every estimator; the
    headline ratios are None, and ``measurement_errors`` says why, where a ratio to
    the roofline came out below 1 (for the whole epoch or any layer)."""
    errors: list[str] = []
    ratios = {}
    for estimator in ESTIMATORS:
        sums = {name: sum(row["by_estimator"][estimator][name] for row in layers) for name in VARIANTS}
        ratios[estimator] = {
            "epoch_s": sums,
            "ff_speedup_vs_reference": sums["reference"] / sums["engine"],
            "ff_engine_over_roofline": sums["engine"] / sums["roofline"],
        }
    headline = ratios[HEADLINE]
    for index, row in enumerate(layers, start=1):
        for name in ("reference", "engine"):
            bounded_ratio(f"layer {index} {name}/roofline", row[name] / row["roofline"], errors)
    bounded_ratio("ff_reference_over_roofline",
                  headline["epoch_s"]["reference"] / headline["epoch_s"]["roofline"], errors)
    over_roofline = bounded_ratio("ff_engine_over_roofline", headline["ff_engine_over_roofline"], errors)
    return {
        "estimator": HEADLINE,
        "epoch": headline["epoch_s"],
        "epoch_spread_s": {name: spread([sum(values) for values in zip(*(row["wall_s"][name] for row in layers))])
                           for name in VARIANTS},
        "ff_speedup_vs_reference": None if errors else headline["ff_speedup_vs_reference"],
        "ff_engine_over_roofline": over_roofline if not errors else None,
        "ratios_by_estimator": ratios,
        "measurement_errors": errors,
    }


def best(values: list[float]) -> float:
    """The least disturbed of repeated timings (see ESTIMATORS)."""
    return min(values)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_data(dataset: str, n: int, device: torch.device):
    train = load_split(dataset, True, subset=n if n < 60000 else None, seed=SEED)
    test = load_split(dataset, False, seed=SEED)
    return train.images.to(device), train.labels.to(device), test.images


def paper_setup(device: torch.device):
    spec = build_spec("paper")
    training = TrainingSpec(epochs=spec.ff.epochs, learning_rate=spec.ff.learning_rate, batch_size=None)
    seed_everything(SEED)
    net = GoodnessNetwork(spec.network).to(device)
    return spec, training, net


class Roofline:
    """The engine's unavoidable products for the current layer (see module doc)."""

    def __init__(self, engine: FFEngine):
        self.engine = engine
        width = engine.net.spec.width
        self.out = torch.empty(2 * engine.n, width, dtype=engine.base.dtype, device=engine.device)

    def __call__(self) -> None:
        engine = self.engine
        layer = engine.net.layers[engine.index]
        with torch.no_grad(), matmul_precision(engine.device, engine.tf32):
            if engine.index == 0:
                torch.addmm(layer.bias, engine.base, layer.weight.t(), out=self.out[: engine.n])
            else:
                torch.addmm(layer.bias, engine.x, layer.weight.t(), out=self.out)


# -------------------------------------------------------------- FF timing


def bench_ff(images, labels, test_images, repeats: int, device: torch.device) -> dict:
    spec, training, net = paper_setup(device)
    reference = ReferenceFF(copy.deepcopy(net), images, labels, training, torch.Generator().manual_seed(SEED))
    engine = FFEngine(net, images, labels, training, torch.Generator().manual_seed(SEED))
    roofline = Roofline(engine)
    layers = []
    for index in range(spec.network.layers):
        reference.begin_layer(index)
        engine.begin_layer(index)
        wall: dict[str, list[float]] = {"reference": [], "engine": [], "roofline": []}
        cpu: dict[str, list[float]] = {"reference": [], "engine": [], "roofline": []}
        variants = [("reference", reference.epoch), ("engine", engine.epoch), ("roofline", roofline)]
        for repeat in range(repeats + 1):  # the first round warms up; the order rotates
            for name, fn in variants[repeat % 3 :] + variants[: repeat % 3]:
                seconds, cpu_seconds = timed_wall_and_cpu(fn, device)
                if repeat > 0:
                    wall[name].append(seconds)
                    cpu[name].append(cpu_seconds)
        reference.end_layer()
        engine.end_layer()
        row = layer_row(wall, cpu)
        layers.append(row)
        print(
            f"  layer {index + 1} (best of {repeats}): reference {row['reference']:.3f}s  engine "
            f"{row['engine']:.3f}s  roofline {row['roofline']:.3f}s",
            flush=True,
        )

    # Prediction on the test set with the (briefly) trained net: ten labels, three layers.
    prediction = {"engine": [], "reference": []}
    for repeat in range(repeats + 1):
        for name, fn in (("engine", label_goodness), ("reference", reference_label_goodness)):
            seconds = timed(lambda fn=fn: fn(net, test_images), device)
            if repeat > 0:
                prediction[name].append(seconds)
    agree = (label_goodness(net, test_images) - reference_label_goodness(net, test_images)).abs().max().item()
    return {
        "layers": layers,
        **ff_totals(layers),
        "prediction": {
            "images": test_images.shape[0],
            "engine_s": best(prediction["engine"]),
            "reference_s": best(prediction["reference"]),
            "speedup": best(prediction["reference"]) / best(prediction["engine"]),
            "max_abs_difference": agree,
        },
    }


# ------------------------------------------------------------ peak memory


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_since_reset_mb() -> float | None:
    """VmHWM: the peak RSS of this process image (reset by ``reset_peak_rss``).
    Unlike ``ru_maxrss`` it does not inherit the parent's peak across fork+exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux: reset the peak RSS (ru_maxrss, VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_child(variant: str, dataset: str, n: int, device: torch.device) -> dict:
    """Run in a fresh process: peak memory of one epoch per layer of ``variant``
    (``data``: loading the data and building the net only)."""
    images, labels, _ = load_data(dataset, n, device)
    _, training, net = paper_setup(device)
    result = {"rss_before_training_mb": current_rss_mb(), "peak_reset": reset_peak_rss()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if variant != "data":
        cls = FFEngine if variant == "engine" else ReferenceFF
        trainer = cls(net, images, labels, training, torch.Generator().manual_seed(SEED))
        for index in range(len(net.layers)):
            trainer.begin_layer(index)
            trainer.epoch()
            trainer.end_layer()
    result["ru_maxrss_mb"] = peak_rss_mb()
    result["peak_rss_mb"] = peak_rss_since_reset_mb()
    if result["peak_reset"] and result["peak_rss_mb"] is not None:
        result["training_extra_mb"] = result["peak_rss_mb"] - result["rss_before_training_mb"]
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def bench_memory(dataset: str, n: int, device: torch.device) -> dict:
    out = {}
    for variant in ("engine", "reference"):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.ff_bench", "--memory-child", variant,
             "--n", str(n), "--dataset", dataset, "--device", device.type],
            capture_output=True, text=True, cwd=ROOT,
        )
        if done.returncode != 0:
            out[variant] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            out[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------- BP/FF and BP


def plain_bpff_epochs(net, positive, negative, optimizer, epochs: int, threshold: float, progress) -> None:
    """BP/FF as a plain PyTorch loop: forward both signs, summed l_inf goodness, backward, step."""

    def total_goodness(x):
        g = 0.0
        for index, layer in enumerate(net.layers):
            x = torch.sigmoid(layer(net.layer_input(x, index)))
            g = g + x.amax(dim=1)
        return g

    for _ in range(epochs):
        loss = goodness_loss(total_goodness(positive), total_goodness(negative), threshold)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        progress(None)


def plain_bp_epochs(net, images, labels, optimizer, epochs: int, batch_size: int, generator, progress) -> None:
    for _ in range(epochs):
        for batch in minibatches(images.shape[0], batch_size, generator):
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        progress(None)


def second_epoch_seconds(run, device: torch.device) -> float:
    """``run(progress)`` trains two epochs and calls ``progress`` after each: the
    second epoch's time (the first includes setup and Adam's state allocation)."""
    stamps: list[float] = []

    def progress(_event) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    run(progress)
    return stamps[1] - stamps[0]


def bench_bp(images, labels, repeats: int, device: torch.device) -> dict:
    """Epochs of the product's loop and of a plain one, interleaved, 2R+1 rounds."""
    rounds = 2 * repeats + 1
    spec = build_spec("paper")
    result = {"images": images.shape[0], "rounds": rounds}
    # BP/FF, full batch.
    seed_everything(SEED)
    net = GoodnessNetwork(spec.network).to(device)
    plain_net = copy.deepcopy(net)
    classes = labels.unique().sort().values.cpu()
    generator = torch.Generator().manual_seed(SEED)
    positive = embed_labels(images, labels, spec.network.label_value)
    negative = embed_labels(
        images, wrong_labels(labels.cpu(), classes, generator).to(device), spec.network.label_value
    )
    threshold = spec.network.threshold * spec.network.layers
    two_epochs = TrainingSpec(epochs=2, learning_rate=spec.bpff.learning_rate, batch_size=None)
    times = {"product": [], "plain": []}
    for round_ in range(rounds):
        runs = [
            ("product", lambda progress: train_bpff(net, images, labels, two_epochs,
                                                    torch.Generator().manual_seed(SEED), progress=progress)),
            ("plain", lambda progress: plain_bpff_epochs(plain_net, positive, negative,
                                                         torch.optim.Adam(plain_net.parameters(), lr=two_epochs.learning_rate),
                                                         2, threshold, progress)),
        ]
        for name, run in runs[round_ % 2 :] + runs[: round_ % 2]:  # alternate which goes first
            times[name].append(second_epoch_seconds(run, device))
    result["bpff"] = {"product_s_per_epoch": best(times["product"]), "plain_s_per_epoch": best(times["plain"])}
    result["bpff"]["product_over_plain"] = result["bpff"]["product_s_per_epoch"] / result["bpff"]["plain_s_per_epoch"]
    # BP, minibatch 2048.
    two_epochs = TrainingSpec(epochs=2, learning_rate=spec.bp.learning_rate, batch_size=spec.bp.batch_size)
    seed_everything(SEED)
    net = BPClassifier(spec.network).to(device)
    plain_net = copy.deepcopy(net)
    times = {"product": [], "plain": []}
    for round_ in range(rounds):
        runs = [
            ("product", lambda progress: train_bp(net, images, labels, two_epochs, torch.Generator().manual_seed(SEED),
                                                  progress=progress)),
            ("plain", lambda progress: plain_bp_epochs(plain_net, images, labels,
                                                       torch.optim.Adam(plain_net.parameters(), lr=two_epochs.learning_rate),
                                                       2, two_epochs.batch_size, torch.Generator().manual_seed(SEED),
                                                       progress)),
        ]
        for name, run in runs[round_ % 2 :] + runs[: round_ % 2]:  # alternate which goes first
            times[name].append(second_epoch_seconds(run, device))
    result["bp"] = {"product_s_per_epoch": best(times["product"]), "plain_s_per_epoch": best(times["plain"])}
    result["bp"]["product_over_plain"] = result["bp"]["product_s_per_epoch"] / result["bp"]["plain_s_per_epoch"]
    return result


# -------------------------------------------------------------------- main


def ff_report_lines(ff: dict, repeats: int) -> list[str]:
    """The FF table: per layer the best of the rounds, then the spread of every time,
    the headline ratios (or the measurement errors that void them) and the ratios by
    the other estimators."""
    lines = [
        f"{'layer':<8}{'reference s':>13}{'engine s':>11}{'roofline s':>12}{'ref/engine':>12}{'engine/roof':>13}",
    ]
    for index, row in enumerate(ff["layers"], start=1):
        over = row["engine_over_roofline"]
        lines.append(
            f"{index:<8}{row['reference']:>13.3f}{row['engine']:>11.3f}{row['roofline']:>12.3f}"
            f"{row['speedup_vs_reference']:>12.2f}{(f'{over:.2f}' if over >= 1 else 'error'):>13}"
        )
    epoch = ff["epoch"]

    def shown(value: float | None) -> str:
        return "error" if value is None else f"{value:.2f}"

    lines.append(
        f"{'all':<8}{epoch['reference']:>13.3f}{epoch['engine']:>11.3f}{epoch['roofline']:>12.3f}"
        f"{shown(ff['ff_speedup_vs_reference']):>12}{shown(ff['ff_engine_over_roofline']):>13}"
    )
    lines.append(f"spread over the {repeats} rounds, seconds (min / median / max; epoch: the rounds' sums "
                 f"over the layers):")
    for label, spreads in [*((f"layer {i}", row["spread_s"]) for i, row in enumerate(ff["layers"], start=1)),
                           ("epoch", ff["epoch_spread_s"])]:
        lines.append(f"  {label:<8}" + "  ".join(
            f"{name} {spreads[name]['min']:.3f} / {spreads[name]['median']:.3f} / {spreads[name]['max']:.3f}"
            for name in VARIANTS))
    for error in ff["measurement_errors"]:
        lines.append(f"MEASUREMENT ERROR: {error}")
    if ff["measurement_errors"]:
        lines.append("no ratio is reported from this run: rerun it on a quieter machine")
        return lines
    other = ff["ratios_by_estimator"]
    for key in ("ff_speedup_vs_reference", "ff_engine_over_roofline"):
        lines.append(
            f"{key} = {ff[key]:.2f}   (best round of each; by the median wall time: "
            f"{other['median_wall'][key]:.2f}; by the median CPU time: {other['median_cpu'][key]:.2f})"
        )
    return lines


def report(result: dict) -> str:
    ff = result["ff"]
    lines = [
        f"FF epoch, N={result['n']} (2 x N images, full batch), {result['device']}, "
        f"best of {result['repeats']} rounds",
        *ff_report_lines(ff, result["repeats"]),
    ]
    before, after = (", ".join(f"{x:.1f}" for x in result[key])
                     for key in ("load_average_before", "load_average_after_ff"))
    lines.append(
        f"load average (1, 5, 15 min) before: {before}, after FF: {after} (other processes share the cores)"
    )
    p = ff["prediction"]
    lines.append(
        f"prediction, {p['images']} test images x 10 labels: engine {p['engine_s']:.3f}s, "
        f"reference {p['reference_s']:.3f}s ({p['speedup']:.2f}x), max |difference| {p['max_abs_difference']:.1e}"
    )
    if "memory" in result:
        for variant, values in result["memory"].items():
            if "error" in values:
                lines.append(f"peak memory ({variant}): failed: {values['error']}")
                continue
            text = f"peak memory, {variant} (1 epoch per layer, child process): "
            if "training_extra_mb" in values:
                text += (f"peak RSS {values['peak_rss_mb']:.0f} MB, {values['training_extra_mb']:.0f} MB above "
                         f"the {values['rss_before_training_mb']:.0f} MB of data and net before training")
            else:
                text += f"ru_maxrss {values['ru_maxrss_mb']:.0f} MB"
            if "cuda_max_allocated_mb" in values:
                text += f", CUDA max allocated {values['cuda_max_allocated_mb']:.0f} MB"
            lines.append(text)
    lines.append(f"peak memory (this process): ru_maxrss_mb {result['ru_maxrss_mb']:.0f}")
    if "bp" in result:
        bp = result["bp"]
        lines.append(
            f"BP/FF ({bp['images']} images, full batch): product {bp['bpff']['product_s_per_epoch']:.3f}s/epoch, "
            f"plain loop {bp['bpff']['plain_s_per_epoch']:.3f}s/epoch, ratio {bp['bpff']['product_over_plain']:.2f}"
        )
        lines.append(
            f"BP ({bp['images']} images, batch 2048): product {bp['bp']['product_s_per_epoch']:.3f}s/epoch, "
            f"plain loop {bp['bp']['plain_s_per_epoch']:.3f}s/epoch, ratio {bp['bp']['product_over_plain']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60000, help="training images (default 60000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per layer (the best is taken)")
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--bp-n", type=int, default=10000, help="images for the BP/FF and BP check")
    parser.add_argument("--skip-bp", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--memory-child", choices=("data", "engine", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.dataset, args.n, device)))
        return None

    command = "python -m benchmarks.ff_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command.strip()}\nloading {args.dataset}, N={args.n}, device {device}", flush=True)
    images, labels, test_images = load_data(args.dataset, args.n, device)
    result = {
        "command": command.strip(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "device": str(device),
        "n": args.n,
        "repeats": args.repeats,
        "dataset": args.dataset,
    }
    result["load_average_before"] = os.getloadavg()
    result["ff"] = bench_ff(images, labels, test_images, args.repeats, device)
    result["load_average_after_ff"] = os.getloadavg()
    result["ff_speedup_vs_reference"] = result["ff"]["ff_speedup_vs_reference"]
    result["ff_engine_over_roofline"] = result["ff"]["ff_engine_over_roofline"]
    result["measurement_errors"] = result["ff"]["measurement_errors"]
    if not args.skip_bp:
        n_bp = min(args.bp_n, args.n)
        result["bp"] = bench_bp(images[:n_bp], labels[:n_bp], args.repeats, device)
    result["ru_maxrss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if not args.skip_memory:
        result["memory"] = bench_memory(args.dataset, args.n, device)
    print(report(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(args.out, Path.cwd())}")
    return result


if __name__ == "__main__":
    main()
