"""Where things are in a results folder (layout: fflab.results), and reading
back what training stored."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fflab.models import MODELS
from fflab.spec import ExperimentSpec, RunKey

if TYPE_CHECKING:
    from fflab.models.bp import BPClassifier
    from fflab.models.common import GoodnessNetwork

# What training writes into a run's folder besides its metrics document.
REPRESENTATIONS_FILE = "representations.npz"
TRAINED_FILES = (REPRESENTATIONS_FILE, "weights.pt")


def run_dir_of(experiment_dir: Path, key: RunKey) -> Path:
    return experiment_dir / "runs" / key.run_id


def write_spec(spec: ExperimentSpec, experiment_dir: Path) -> None:
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")


def read_spec(experiment_dir: Path) -> ExperimentSpec:
    path = experiment_dir / "spec.json"
    if not path.is_file():
        raise FileNotFoundError(f"{experiment_dir} is not a results folder: it has no spec.json")
    return ExperimentSpec.model_validate_json(path.read_text())


def write_representations(run_dir: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Store a run's test-set arrays (labels, predictions, correct, layer1..layerL
    (N, width) float32, label_goodness (N, 10, L) float32 for the goodness models)
    in ``representations.npz``, every value as it is, deflate-compressed
    (``np.savez_compressed``: a standard .npz that ``np.load`` reads).

    Lossless on purpose: rounding the layers to float16 changed ensembles (Method
    1 of a BP layer doubled where activities within 2.4e-4 of 1.0 became exactly
    1.0, the saturation Method 1's threshold reads), so the analyses' inputs stay
    the float32 the network computed (docs/science.md, "Stored representations")."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / REPRESENTATIONS_FILE
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **arrays as allow_pickle
    return path


def load_representations(run_dir: Path) -> dict[str, np.ndarray]:
    """The run's stored test-set arrays: labels, predictions, correct, layer1..layerL
    (N, width) and any model-specific ones (label_goodness). Reads the compressed
    files ``write_representations`` stores and the uncompressed ones (``np.savez``)
    of runs trained before; the arrays are the same either way."""
    with np.load(run_dir / REPRESENTATIONS_FILE) as stored:
        return {name: stored[name] for name in stored.files}


def layer_count(stored: dict[str, np.ndarray]) -> int:
    return sum(1 for name in stored if name.startswith("layer"))


def analysed_rows(stored: dict[str, np.ndarray], unseen_class: int | None, correct_only: bool) -> np.ndarray:
    """Boolean mask of the test images the analyses use: the correctly classified
    ones (paper), plus every image of a class left out of training, which can
    never be classified correctly."""
    if not correct_only:
        return np.ones_like(stored["correct"], dtype=bool)
    keep = stored["correct"].astype(bool)
    if unseen_class is not None:
        keep |= stored["labels"] == unseen_class
    return keep


def load_weight_matrices(run_dir: Path) -> list[np.ndarray]:
    """The hidden layers' (out, in) weight matrices, in order."""
    state = torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
    names = sorted(
        (n for n in state if n.startswith("layers.") and n.endswith(".weight")),
        key=lambda n: int(n.split(".")[1]),
    )
    return [state[n].numpy() for n in names]


def load_network(spec: ExperimentSpec, key: RunKey, run_dir: Path) -> GoodnessNetwork | BPClassifier:
    """The run's trained network (its model type's, from weights.pt), on the CPU, in eval mode."""
    net = MODELS.lookup(key.model).build(spec.network, key.dataset)
    net.load_state_dict(torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True))
    return net.eval()
