"""Does TF32 keep FF's accuracy? Train the paper's FF twice from the same seed,
with FP32 and with TF32 matrix products, and compare test accuracy and losses.

    python -m benchmarks.tf32_check --n 10000 --epochs 200            # CPU: TF32 emulated
    python -m benchmarks.tf32_check --device cuda --n 60000 --epochs 1000   # GPU: real TF32

On CUDA the engine's ``tf32`` switch is used. On CPU, TF32 is emulated: the
operands of every product the engine makes (``torch.addmm``/``addmm_``) are
rounded to TF32's 10-bit mantissa (round to nearest) before an FP32 product,
which is what TF32 tensor cores compute up to accumulation order. Writes
``benchmarks/tf32_check.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from fflab.data import load_split
from fflab.models.common import GoodnessNetwork, label_goodness, predict_from_goodness, resolve_device, seed_everything
from fflab.models.ff import train_ff
from fflab.spec import TrainingSpec, build_spec

ROOT = Path(__file__).resolve().parents[1]


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)  # keep 10 of 23 mantissa bits


@contextmanager
def emulated_tf32():
    addmm, addmm_ = torch.addmm, torch.Tensor.addmm_

    def addmm_tf32(input, mat1, mat2, *args, **kwargs):
        return addmm(input, round_to_tf32(mat1), round_to_tf32(mat2), *args, **kwargs)

    def addmm__tf32(self, mat1, mat2, *args, **kwargs):
        return addmm_(self, round_to_tf32(mat1), round_to_tf32(mat2), *args, **kwargs)

    torch.addmm, torch.Tensor.addmm_ = addmm_tf32, addmm__tf32
    try:
        yield
    finally:
        torch.addmm, torch.Tensor.addmm_ = addmm, addmm_


def run(images, labels, test, epochs: int, seed: int, tf32: bool, device: torch.device) -> dict:
    spec = build_spec("paper")
    generator = seed_everything(seed)
    net = GoodnessNetwork(spec.network).to(device)
    training = TrainingSpec(epochs=epochs, learning_rate=spec.ff.learning_rate)
    started = time.perf_counter()
    if device.type == "cuda":
        history = train_ff(net, images, labels, training, generator, tf32=tf32)
    else:
        with emulated_tf32() if tf32 else contextmanager(lambda: (yield))():
            history = train_ff(net, images, labels, training, generator)
    seconds = time.perf_counter() - started
    scores = label_goodness(net, test.images)
    accuracy = (predict_from_goodness(scores, "sum") == test.labels).float().mean().item()
    return {
        "tf32": tf32,
        "seconds": seconds,
        "test_accuracy": accuracy,
        "final_loss_per_layer": [losses[-1] for losses in history],
        "weights": [layer.weight.detach().cpu() for layer in net.layers],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "tf32_check.json")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    train = load_split(args.dataset, True, subset=args.n if args.n < 60000 else None, seed=0)
    test = load_split(args.dataset, False, seed=0)
    images, labels = train.images.to(device), train.labels.to(device)
    result = {
        "command": "python -m benchmarks.tf32_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device),
        "emulated": device.type != "cuda",
        "n": args.n,
        "epochs": args.epochs,
        "seeds": {},
    }
    for seed in args.seeds:
        runs = [run(images, labels, test, args.epochs, seed, tf32, device) for tf32 in (False, True)]
        difference = [
            ((a - b).norm() / a.norm()).item() for a, b in zip(runs[0].pop("weights"), runs[1].pop("weights"))
        ]
        result["seeds"][seed] = {
            "fp32": runs[0],
            "tf32": runs[1],
            "accuracy_difference": runs[1]["test_accuracy"] - runs[0]["test_accuracy"],
            "relative_weight_difference_per_layer": difference,
        }
        for name in ("fp32", "tf32"):
            r = runs[0] if name == "fp32" else runs[1]
            print(f"seed {seed} {name}: test accuracy {r['test_accuracy']:.4f}, final losses "
                  f"{', '.join(f'{x:.4f}' for x in r['final_loss_per_layer'])}, {r['seconds']:.0f}s", flush=True)
        print(f"seed {seed}: accuracy difference (tf32 - fp32) {result['seeds'][seed]['accuracy_difference']:+.4f}; "
              f"relative weight difference per layer {', '.join(f'{x:.3f}' for x in difference)}", flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
