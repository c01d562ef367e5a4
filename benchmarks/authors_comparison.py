"""fflab's FF against a plain re-implementation of the authors' loop, over seeds.

    python -m benchmarks.authors_comparison --seeds 0-9 --setting minibatch1024 \\
        --setting full_batch [--train-subset 10000 --epochs 60]
    python -m benchmarks.authors_comparison --summary            # statistics only

For every seed and setting it trains, one after the other in this process on one
thread, (1) fflab's FF (``fflab.pipeline.train.train_and_evaluate``, the path of
``fflab run``) with the reviewer's options and (2) the reference of
``benchmarks/authors_reference.py``, on the same training images (fflab's
stratified subset) and the full MNIST test set. Each finished run is appended to
``benchmarks/authors_comparison.json`` at once (runs already there are
skipped, so an interrupted sweep resumes). Then, per setting: mean +- SE of the
test accuracy, classes below 10% accuracy, Method 1 layer-1 ensemble size
(quantile 0.95, mean over classes, correctly classified test images), fraction
of positive weights per layer, for both, and Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``) on accuracy and layer-1 size.

The options (the reviewer's): 3 x 784 sigmoid, l2 normalisation of every
layer's input including the labelled image, l_inf goodness, theta 0.5, label =
the data's maximum (``batch_max``), negatives = N of the 9N wrong-label copies
drawn once (``subsampled``), softmax-sum prediction, Adam lr 1e-2.

The two implementations draw independent random numbers: fflab seeds the global
RNG with ``seed`` (initial weights) and its generator with ``seed``; the
reference uses ``seed + 1000`` for both (``--reference-seed-offset``), so that
the two samples are independent, as Welch's test assumes.

``--ref-option key=value`` changes an ``AuthorsOptions`` field of the reference
(an ablation); such runs are recorded under their own variant name and compared
with fflab's runs of the same setting.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FFLAB_DATA_ROOT", str(ROOT / "data"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import authors_reference as ref  # noqa: E402

RESULTS = ROOT / "benchmarks" / "authors_comparison.json"
QUANTILE = 0.95
N_CLASSES = 10


# ---------------------------------------------------------------------- settings


def batch_size_of(setting: str) -> int | None:
    if setting == "full_batch":
        return None
    if setting.startswith("minibatch") and setting[len("minibatch"):].isdigit():
        return int(setting[len("minibatch"):])
    raise argparse.ArgumentTypeError(f"setting must be full_batch or minibatch<N>; got {setting!r}")


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds += list(range(int(a), int(b) + 1))
        else:
            seeds.append(int(part))
    return seeds


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(text, text)


def fflab_overrides(args, setting: str, seed: int) -> dict:
    """``fflab run --preset paper --set ...`` with the reviewer's options, as a dict."""
    return {
        "name": "authors-comparison",
        "models": ["ff"],
        "datasets": ["mnist"],
        "seeds": [seed],
        "unseen_class": None,
        "device": "cpu",
        "network": {
            "layers": args.layers, "width": args.width, "activation": "sigmoid", "goodness": "l_inf",
            "normalization": "l2", "normalize_first_layer": True, "first_layer_normalization": "l2",
            "threshold": 0.5, "label_value": "batch_max",
        },
        "prediction": "softmax_sum",
        "negative_labels": "subsampled",
        "data": {"train_subset": args.train_subset},
        "ff": {"epochs": args.epochs, "learning_rate": 1e-2, "batch_size": batch_size_of(setting)},
    }


# ---------------------------------------------------------------------- analysis


def summarise_run(layers: list[np.ndarray], labels: np.ndarray, predictions: np.ndarray,
                  weights: list[np.ndarray]) -> dict:
    """Accuracy (overall, per class), Method 1 sizes per layer and class (quantile 0.95,
    correctly classified test images), fraction of positive weights per layer."""
    from fflab.analysis.ensembles import class_ensembles, ensemble_sizes
    from fflab.analysis.weights import fraction_positive_weights

    correct = predictions == labels
    per_class = [float(correct[labels == c].mean()) for c in range(N_CLASSES)]
    sizes = []
    for layer in layers:
        ens = class_ensembles(layer[correct], labels[correct], "method1", classes=range(N_CLASSES), quantile=QUANTILE)
        sizes.append(ensemble_sizes(ens, range(N_CLASSES)).tolist())
    return {
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "classes_below_10pct": [c for c in range(N_CLASSES) if per_class[c] < 0.1],
        "method1_sizes": sizes,
        "method1_mean": [float(np.mean(s)) for s in sizes],
        "positive_weight_fraction": [fraction_positive_weights(w) for w in weights],
    }


# ---------------------------------------------------------------------- runs


def run_fflab(args, setting: str, seed: int) -> dict:
    from fflab.pipeline.train import train_and_evaluate
    from fflab.spec import RunKey, build_spec

    spec = build_spec("paper", fflab_overrides(args, setting, seed))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        metrics = train_and_evaluate(spec, RunKey("ff", "mnist", seed), Path(tmp))
        seconds = time.perf_counter() - started
        arrays = np.load(Path(tmp) / "representations.npz")
        layers = [arrays[f"layer{i}"] for i in range(1, args.layers + 1)]
        state = torch.load(Path(tmp) / "weights.pt", weights_only=True)
        weights = [state[f"layers.{i}.weight"].numpy() for i in range(args.layers)]
        summary = summarise_run(layers, arrays["labels"], arrays["predictions"], weights)
    summary["train_seconds"] = metrics.timings.train_seconds
    summary["seconds"] = seconds
    summary["final_losses"] = [h[-1] for h in metrics.loss_history]
    assert abs(summary["accuracy"] - metrics.accuracy) < 1e-12
    return summary


_DATA: dict = {}


def data(train_subset: int | None):
    if train_subset not in _DATA:
        train = ref.load_mnist(True, train_subset)
        test = ref.load_mnist(False)
        # Same images as fflab's (checked once): fflab.data.load_split, data seed 0.
        from fflab.data import load_split
        from fflab.pipeline.train import DATA_SEED

        fl = load_split("mnist", True, train_subset, seed=DATA_SEED)
        assert torch.equal(fl.labels, train[1]) and torch.allclose(fl.images, train[0], atol=1e-6)
        _DATA[train_subset] = (train, test)
    return _DATA[train_subset]


def run_reference(args, setting: str, seed: int, options: dict) -> dict:
    (x_train, y_train), (x_test, y_test) = data(args.train_subset)
    opts = ref.AuthorsOptions(layers=args.layers, width=args.width, epochs=args.epochs,
                              batch_size=batch_size_of(setting), seed_offset=args.reference_seed_offset,
                              **options)
    started = time.perf_counter()
    run = ref.train_authors(x_train, y_train, opts, seed)
    train_seconds = time.perf_counter() - started
    predictions = ref.predict(run.net, x_test).numpy()
    layers = ref.representations(run.net, x_test, y_test)
    weights = [layer.linear.weight.detach().numpy() for layer in run.net.layers]
    summary = summarise_run(layers, y_test.numpy(), predictions, weights)
    summary["train_seconds"] = train_seconds
    summary["seconds"] = time.perf_counter() - started
    summary["final_losses"] = [h[-1] for h in run.history]
    return summary


# ---------------------------------------------------------------------- storage


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return json.loads(path.read_text())["runs"]


def append_result(path: Path, record: dict) -> None:
    runs = load_results(path)
    runs.append(record)
    document = {
        "description": "fflab FF vs benchmarks/authors_reference.py (the authors' loop); "
                       "one record per finished run (benchmarks/authors_comparison.py).",
        "runs": runs,
    }
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1))
    os.replace(partial, path)


def identity(impl: str, variant: str, setting: str, seed: int, args) -> dict:
    return {"impl": impl, "variant": variant, "setting": setting, "seed": seed,
            "train_subset": args.train_subset, "epochs": args.epochs, "layers": args.layers, "width": args.width}


def same_identity(record: dict, ident: dict) -> bool:
    return all(record.get(k) == v for k, v in ident.items())


# ---------------------------------------------------------------------- statistics


def mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    se = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return float(values.mean()), float(se)


def welch(a, b) -> dict:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return {"t": float("nan"), "df": float("nan"), "p": float("nan")}
    result = stats.ttest_ind(a, b, equal_var=False)
    return {"t": float(result.statistic), "df": float(result.df), "p": float(result.pvalue)}


def statistics(runs: list[dict]) -> list[dict]:
    """One row per (train_subset, epochs, layers, width, setting, reference variant)."""
    rows = []
    groups = sorted({(r["train_subset"], r["epochs"], r["layers"], r["width"], r["setting"]) for r in runs},
                    key=str)
    for subset, epochs, layers, width, setting in groups:
        here = [r for r in runs if (r["train_subset"], r["epochs"], r["layers"], r["width"], r["setting"])
                == (subset, epochs, layers, width, setting)]
        fl = [r for r in here if r["impl"] == "fflab"]
        for variant in sorted({r["variant"] for r in here if r["impl"] == "authors"}, key=lambda v: v != "code"):
            au = [r for r in here if r["impl"] == "authors" and r["variant"] == variant]
            row = {"train_subset": subset, "epochs": epochs, "layers": layers, "width": width, "setting": setting,
                   "variant": variant}
            for name, group in (("fflab", fl), ("authors", au)):
                row[name] = {
                    "n": len(group),
                    "seeds": sorted(r["seed"] for r in group),
                    "accuracy": mean_se([r["accuracy"] for r in group]) if group else None,
                    "classes_below_10pct": mean_se([len(r["classes_below_10pct"]) for r in group]) if group else None,
                    "runs_with_a_class_below_10pct": sum(bool(r["classes_below_10pct"]) for r in group),
                    "method1_layer_sizes": [mean_se([r["method1_mean"][i] for r in group]) for i in range(layers)]
                    if group else None,
                    "positive_weight_fraction": [mean_se([r["positive_weight_fraction"][i] for r in group])
                                                 for i in range(layers)] if group else None,
                    "train_seconds": mean_se([r["train_seconds"] for r in group]) if group else None,
                }
            row["welch_accuracy"] = welch([r["accuracy"] for r in fl], [r["accuracy"] for r in au])
            row["welch_layer1_size"] = welch([r["method1_mean"][0] for r in fl], [r["method1_mean"][0] for r in au])
            rows.append(row)
    return rows


def fmt(ms, digits=3) -> str:
    if ms is None:
        return "-"
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s == s else f"{m:.{digits}f}"


def print_statistics(rows: list[dict]) -> None:
    for row in rows:
        print(f"\n== {row['setting']}  (train_subset {row['train_subset']}, {row['epochs']} epochs, "
              f"{row['layers']}x{row['width']}); reference variant: {row['variant']}")
        print(f"{'':34}{'fflab':>26}{'authors (reference)':>26}")
        f, a = row["fflab"], row["authors"]
        print(f"{'n (seeds)':34}{f['n']:>26}{a['n']:>26}")
        print(f"{'accuracy':34}{fmt(f['accuracy']):>26}{fmt(a['accuracy']):>26}")
        print(f"{'classes < 10% acc. (per run)':34}{fmt(f['classes_below_10pct'], 2):>26}"
              f"{fmt(a['classes_below_10pct'], 2):>26}")
        print(f"{'runs with a class < 10%':34}{f['runs_with_a_class_below_10pct']:>26}"
              f"{a['runs_with_a_class_below_10pct']:>26}")
        for i in range(row["layers"]):
            print(f"{f'Method 1 size, layer {i + 1} (q 0.95)':34}"
                  f"{fmt(f['method1_layer_sizes'][i] if f['method1_layer_sizes'] else None, 1):>26}"
                  f"{fmt(a['method1_layer_sizes'][i] if a['method1_layer_sizes'] else None, 1):>26}")
        for i in range(row["layers"]):
            print(f"{f'positive weights, layer {i + 1}':34}"
                  f"{fmt(f['positive_weight_fraction'][i] if f['positive_weight_fraction'] else None, 4):>26}"
                  f"{fmt(a['positive_weight_fraction'][i] if a['positive_weight_fraction'] else None, 4):>26}")
        print(f"{'train seconds':34}{fmt(f['train_seconds'], 0):>26}{fmt(a['train_seconds'], 0):>26}")
        for name in ("accuracy", "layer1_size"):
            w = row[f"welch_{name}"]
            print(f"Welch fflab vs authors, {name}: t = {w['t']:.2f}, df = {w['df']:.1f}, p = {w['p']:.3g}")


# ---------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-9"))
    parser.add_argument("--setting", action="append", type=str, help="full_batch or minibatch<N> (repeatable)")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--width", type=int, default=784)
    parser.add_argument("--impl", action="append", choices=("fflab", "authors"),
                        help="which implementations to train (default both)")
    parser.add_argument("--ref-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an AuthorsOptions field of the reference (ablation), repeatable")
    parser.add_argument("--reference-seed-offset", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--summary", action="store_true", help="only print the statistics of the stored runs")
    args = parser.parse_args(argv)

    if not args.summary:
        settings = args.setting or ["minibatch1024", "full_batch"]
        for s in settings:
            batch_size_of(s)
        impls = args.impl or ["fflab", "authors"]
        options = dict(kv.split("=", 1) for kv in args.ref_option)
        options = {k: parse_value(v) for k, v in options.items()}
        ref.AuthorsOptions(**options)  # fail early on a bad option
        if args.reference_seed_offset != 1000:
            options_named = options | {"seed_offset": args.reference_seed_offset}
        else:
            options_named = options
        variant = ",".join(f"{k}={v}" for k, v in sorted(options_named.items())) or "code"
        for seed in args.seeds:
            for setting in settings:
                for impl in impls:
                    ident = identity(impl, "code" if impl == "fflab" else variant, setting, seed, args)
                    if any(same_identity(r, ident) for r in load_results(args.results)):
                        print(f"skip (done): {ident}", flush=True)
                        continue
                    torch.set_num_threads(1)
                    started = time.strftime("%H:%M:%S")
                    summary = (run_fflab(args, setting, seed) if impl == "fflab"
                               else run_reference(args, setting, seed, options))
                    record = ident | {"reference_seed_offset": args.reference_seed_offset} | summary
                    append_result(args.results, record)
                    print(f"[{started} -> {time.strftime('%H:%M:%S')}] {impl:7} {variant if impl == 'authors' else '':20}"
                          f" {setting:14} seed {seed}: acc {summary['accuracy']:.4f}, below10 "
                          f"{summary['classes_below_10pct']}, M1 {[f'{v:.1f}' for v in summary['method1_mean']]}, "
                          f"pos.w {[f'{v:.3f}' for v in summary['positive_weight_fraction']]}, "
                          f"{summary['seconds']:.0f} s", flush=True)
    print_statistics(statistics(load_results(args.results)))


if __name__ == "__main__":
    main()
