"""How a change to the quick preset moves the paper's findings, for one model.

    python -m benchmarks.quick_probe --model ff --set ff.batch_size=250 --seeds 0 1 2
    python -m benchmarks.quick_probe --model bp --set bp.batch_size=2048

Trains the model on the quick preset's MNIST subset with the overrides, evaluates
on all 10000 test images, and prints one JSON line per seed: accuracy (for FF
also per layer and with the softmax rule), Method 1 ensemble sizes (quantile
0.95, correctly classified images, classes with none left out), the fraction of
positive weights per layer, and CPU seconds of training. docs/science.md records
what it measured.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fflab import analysis
from fflab.cli.options import parse_overrides
from fflab.data import load_split
from fflab.models.bp import BPClassifier, bp_predict_and_represent, train_bp
from fflab.models.common import (
    GoodnessNetwork,
    goodness_representations,
    label_goodness,
    predict_from_goodness,
    seed_everything,
)
from fflab.models.ff import train_ff
from fflab.spec import build_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["ff", "bp"], required=True)
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    spec = build_spec("quick", parse_overrides(tuple(args.assignments)))
    train = load_split("mnist", True, spec.data.train_subset, seed=0)
    test = load_split("mnist", False, None, seed=0)
    for seed in args.seeds:
        generator = seed_everything(seed)
        started = time.process_time()
        extra: dict = {}
        if args.model == "ff":
            net = GoodnessNetwork(spec.network)
            train_ff(net, train.images, train.labels, spec.ff, generator, spec.negative_labels)
            cpu = time.process_time() - started
            net.eval()
            scores = label_goodness(net, test.images)
            predictions = predict_from_goodness(scores, spec.prediction)
            extra = {
                "accuracy_softmax_sum": float((predict_from_goodness(scores, "softmax_sum") == test.labels).float().mean()),
                "accuracy_per_layer": [float((scores[:, :, layer].argmax(1) == test.labels).float().mean())
                                       for layer in range(scores.shape[2])],
            }
            layers = goodness_representations(net, test.images, test.labels)
        else:
            net = BPClassifier(spec.network)
            train_bp(net, train.images, train.labels, spec.bp, generator)
            cpu = time.process_time() - started
            net.eval()
            predictions, layers = bp_predict_and_represent(net, test.images)
        correct = (predictions == test.labels).numpy()
        labels = test.labels.numpy()[correct]
        sizes = []
        for layer in layers:
            X = layer.numpy()[correct]
            per_class = [analysis.method1_ensemble(X[labels == c], 0.95).units.size
                         for c in range(10) if (labels == c).any()]
            sizes.append(round(float(np.mean(per_class)), 1) if per_class else None)
        print(json.dumps({
            "model": args.model, "set": args.assignments, "seed": seed,
            "accuracy": round(float(correct.mean()), 4),
            "ensemble_sizes": sizes,
            "fraction_positive_weights": [round(float((lin.weight > 0).float().mean()), 4) for lin in net.layers],
            "train_cpu_seconds": round(cpu, 1),
            **{k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v]) for k, v in extra.items()},
        }), flush=True)


if __name__ == "__main__":
    main()
