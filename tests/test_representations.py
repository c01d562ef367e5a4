"""Bring your own representations: the file format's validator (every rule, hostile
files) and fflab.capture on a torch network trained outside fflab."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fflab.representations import (
    NotAnNpz,
    RepresentationLimits,
    RepresentationsError,
    read_representations,
    write_representations_file,
)

ROOT = Path(__file__).resolve().parents[1]
N, CLASSES = 60, 3


def arrays(**changes: Any) -> dict[str, Any]:
    """A valid file's arrays (two layers, three classes, predictions, weights), with changes (None: drop)."""
    rng = np.random.default_rng(0)
    labels = np.arange(N) % CLASSES
    base: dict[str, Any] = {
        "layer1": rng.random((N, 12)).astype(np.float32), "layer2": rng.random((N, 8)),
        "labels": labels, "predictions": labels.copy(),
        "weights_layer1": rng.normal(size=(12, 5)), "weights_layer2": rng.normal(size=(8, 12)),
        "description": np.array(json.dumps({"network": "toy"})),
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def npz(**changes: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays(**changes))
    return buffer.getvalue()


def refusal(data: bytes, limits: RepresentationLimits | None = None) -> RepresentationsError:
    with pytest.raises(RepresentationsError) as caught:
        read_representations(io.BytesIO(data), limits)
    return caught.value


def huge_member() -> bytes:
    """An npz whose layer1 declares 10^6 x 10^6 float32 in its header and holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("layer1.npy", header.getvalue() + b"\0" * 16)
        member = io.BytesIO()
        np.lib.format.write_array(member, np.arange(4))
        archive.writestr("labels.npy", member.getvalue())
    return buffer.getvalue()


def test_a_valid_file_reads_back_as_written(tmp_path: Path) -> None:
    found = read_representations(io.BytesIO(npz()))
    assert found.layer_names == ["layer1", "layer2"] and found.units == [12, 8]
    assert found.n_images == N and found.class_names == ["0", "1", "2"]
    assert found.layers[1].dtype == np.float32 and found.description == {"network": "toy"}
    assert [w.shape for w in found.weights if w is not None] == [(12, 5), (8, 12)]
    again = read_representations(write_representations_file(found, tmp_path / "again.npz"))
    assert again.layer_names == found.layer_names and np.array_equal(again.layers[0], found.layers[0])
    assert np.array_equal(again.predictions, found.predictions)


def test_named_layers_class_names_and_snapshots() -> None:
    rng = np.random.default_rng(1)
    data = npz(layer1=None, layer2=None, weights_layer1=None, weights_layer2=None,
               layers=np.array(["fc1", "fc2"]), fc1=rng.random((N, 4)), fc2=rng.random((N, 3)),
               class_names=np.array(["cat", "dog", "eel"]), snapshot_epochs=np.array([1, 3]),
               snapshot_rows=np.arange(10), snapshot_fc1=rng.random((2, 10, 4)), snapshot_fc2=rng.random((2, 10, 3)))
    found = read_representations(io.BytesIO(data))
    assert found.layer_names == ["fc1", "fc2"] and found.class_names == ["cat", "dog", "eel"]
    assert found.snapshots is not None and found.snapshots.epochs.tolist() == [1, 3]


@pytest.mark.parametrize(("data", "key", "words"), [
    (npz(layer2=np.zeros((N, 8, 2))), "layer2", "(N, units)"),
    (npz(layer2=np.zeros((N - 1, 8))), "layer2", f"N = {N}"),
    (npz(labels=np.zeros((N, 1), dtype=int)), "labels", "(N,)"),
    (npz(labels=np.arange(N) * 0.5), "labels", "integer"),
    (npz(layer1=np.full((N, 12), np.nan)), "layer1", "finite"),
    (npz(layer2=np.full((N, 8), np.inf)), "layer2", "finite"),
    (npz(labels=np.arange(N) % CLASSES - 1), "labels", "0..classes-1"),
    (npz(class_names=np.array(["a", "b"])), "labels", "0..1"),
    (npz(labels=np.where(np.arange(N) % CLASSES == 1, 2, np.arange(N) % CLASSES)), "labels", "every class"),
    (npz(predictions=np.full(N, 7)), "predictions", "0..2"),
    (npz(weights_layer1=np.zeros((11, 5))), "weights_layer1", "units = 12"),
    (npz(layer3=np.zeros((N, 2)), layer1=None, weights_layer1=None), "layer1", "without a gap"),
    (npz(extra=np.zeros(3)), "extra", "per layer"),
    (npz(description=np.array("[1, 2]")), "description", "JSON object"),
    (npz(description=np.array("{not json")), "description", "JSON object"),
    (npz(layers=np.array(["labels"]), labels=np.arange(N) % CLASSES), "layers", "not labels"),
    (npz(snapshot_epochs=np.array([1, 2])), "snapshot_rows", "together"),
    (npz(labels=None), "labels", "integer labels"),
])
def test_every_broken_rule_names_its_key_and_what_is_allowed(data: bytes, key: str, words: str) -> None:
    error = refusal(data)
    assert error.key == key, str(error)
    assert words in error.allowed, str(error)
    assert str(error).startswith(f"{key}: ")


def test_limits_on_units_images_and_declared_sizes() -> None:
    assert refusal(npz(), RepresentationLimits(max_units=10)).allowed == "at most 10 units"
    assert "at most 50 images" in refusal(npz(), RepresentationLimits(max_images=50)).allowed
    assert refusal(npz(), RepresentationLimits(max_layers=1)).key == "layers"
    # A header that declares 4 TB is refused from the header, before anything is allocated.
    error = refusal(huge_member())
    assert error.key == "layer1" and "bytes" in error.allowed


def test_files_that_are_not_npz_truncated_or_carry_pickles() -> None:
    for data in (b"", b"not a zip at all", b"PK\x03\x04garbage"):
        with pytest.raises(NotAnNpz):
            read_representations(io.BytesIO(data))
    whole = npz()
    with pytest.raises(RepresentationsError):  # the central directory is gone: not an npz any more
        read_representations(io.BytesIO(whole[: len(whole) // 2]))
    # A member cut short (the directory intact): the array cannot be read.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, value in arrays().items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(value))
            archive.writestr(f"{key}.npy", member.getvalue()[:-40] if key == "layer1" else member.getvalue())
    assert refusal(buffer.getvalue()).key == "layer1"
    # Object arrays (pickles) are refused from their header, never unpickled.
    pickled = io.BytesIO()
    np.savez(pickled, **arrays(labels=np.array([object()] * N, dtype=object)))
    error = refusal(pickled.getvalue())
    assert error.key == "labels" and "no pickled objects" in error.allowed


# ------------------------------------------------------------------ capture and analyse


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small torch MLP trained outside fflab on 2000 MNIST images for 3 epochs, captured with fflab.capture."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import fflab
    from fflab.data import load_split

    torch.manual_seed(0)
    train = load_split("mnist", True, 2000, seed=0)
    test = load_split("mnist", False, 500, seed=0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(784, 64))
    model.add_module("act1", torch.nn.ReLU())
    model.add_module("fc2", torch.nn.Linear(64, 32))
    model.add_module("act2", torch.nn.ReLU())
    model.add_module("out", torch.nn.Linear(32, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    images = train.images.reshape(len(train), -1).float()
    for _ in range(3):
        for batch in DataLoader(TensorDataset(images, train.labels), batch_size=100, shuffle=True):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
            optimiser.step()
    model.train()
    loader = DataLoader(TensorDataset(test.images.reshape(len(test), -1).float(), test.labels), batch_size=128)
    path = fflab.capture(model, loader, layers=["act1", "act2"], path=tmp_path_factory.mktemp("captured") / "mlp.npz",
                         description={"network": "MLP 784-64-32-10", "trained": "3 epochs, 2000 images"})
    assert model.training  # its mode is given back
    with pytest.raises(ValueError, match="is not a module of the model; its modules: fc1, act1"):
        fflab.capture(model, loader, layers=["fc9"], path=path.parent / "never.npz")
    return path


def test_capture_writes_a_valid_file(captured: Path) -> None:
    found = read_representations(captured)
    assert found.layer_names == ["act1", "act2"] and found.units == [64, 32] and found.n_images == 500
    assert found.predictions is not None and (found.predictions == found.labels).mean() > 0.7
    assert found.weights == [None, None]  # ReLU modules: no weights of their own
    assert found.description["network"] == "MLP 784-64-32-10"
    assert (found.layers[0] >= 0).all()


def test_import_fflab_stays_light() -> None:
    code = "import sys, fflab; assert 'torch' not in sys.modules; assert callable(fflab.capture); print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
