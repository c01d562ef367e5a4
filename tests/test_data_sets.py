"""The data sets beyond the paper's (KMNIST, EMNIST balanced and letters, CIFAR-10,
SVHN), on small files written in each one's real on-disk format (the files
torchvision's class reads), never downloaded: loading, normalisation, labels,
``fetch-data --from``, and a few epochs of FF on a planted signal."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from scipy.io import savemat

from fflab import data
from fflab.cli import main as cli
from fflab.models import MODELS
from fflab.models.common import LabelLayout, embed_labels, label_layout
from fflab.pipeline.train import train_and_evaluate
from fflab.spec import ExperimentSpec, RunKey, build_spec

NEW = ("kmnist", "emnist_balanced", "emnist_letters", "cifar10", "svhn")
PER_CLASS = {"train": 12, "test": 4}


def planted_images(labels: np.ndarray, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """(N, C, H, W) uint8: noise (dark for grey images, mid-grey for colour ones, as
    the real data sets' means are), and 24 pixels of each channel that only the
    image's class lights up: a fifth of them, the same in every image of the class."""
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    spots = np.random.default_rng(99).choice(height * width, size=(labels.max() + 1, height * width // 5))
    low = 0 if channels == 1 else 60
    images = rng.integers(low, low + 60, size=(labels.size, channels, height * width), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i][:, spots[label]] = 250
    return images.reshape(labels.size, channels, height, width)


def split_labels(n_classes: int, split: str, seed: int) -> np.ndarray:
    labels = np.repeat(np.arange(n_classes), PER_CLASS[split])
    return np.random.default_rng(seed).permutation(labels)


def write_idx(path: Path, array: np.ndarray, packed: bool = False) -> None:
    """An IDX file (ubyte): magic 0x0803 for images, 0x0801 for labels, big-endian sizes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if packed:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def write_dataset(dataset: str, root: Path, packed: bool = False) -> dict[str, tuple[int, ...]]:
    """The data set's files, in torchvision's layout under ``root``, with planted
    classes; returns the class counts per split (the 'published' ones of these files)."""
    entry = data.DATASETS[dataset]
    folder = root / entry.folder
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    splits = {}
    for index, split in enumerate(("train", "test")):
        labels = split_labels(entry.n_classes, split, seed=index)
        images = planted_images(labels, entry.image_shape, seed=10 + index)
        counts[split] = (PER_CLASS[split],) * entry.n_classes
        splits[split] = (images, labels)
    if entry.layout == "idx":
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images, labels = splits[split]
            write_idx(folder / f"{prefix}-images-idx3-ubyte", images[:, 0], packed)
            write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, packed)
    elif entry.layout == "emnist":
        for split, (images, labels) in splits.items():
            # EMNIST's files hold every image transposed; letters' labels are 1-26.
            write_idx(folder / f"emnist-{entry.split}-{split}-images-idx3-ubyte", images[:, 0].transpose(0, 2, 1), packed)
            write_idx(folder / f"emnist-{entry.split}-{split}-labels-idx1-ubyte", labels + entry.label_offset, packed)
    elif entry.layout == "cifar10":
        images, labels = splits["train"]
        for part, rows in enumerate(np.array_split(np.arange(labels.size), 5), start=1):
            batch = {"batch_label": f"training batch {part} of 5", "labels": labels[rows].tolist(),
                     "data": images[rows].reshape(rows.size, -1), "filenames": [f"{i}.png" for i in rows]}
            (folder / f"data_batch_{part}").write_bytes(pickle.dumps(batch))
        images, labels = splits["test"]
        (folder / "test_batch").write_bytes(pickle.dumps(
            {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(), "data": images.reshape(labels.size, -1)}))
        (folder / "batches.meta").write_bytes(pickle.dumps(
            {"label_names": list(entry.class_names), "num_cases_per_batch": 10000, "num_vis": 3072}))
    else:  # SVHN: X is (32, 32, 3, N), y is (N, 1) with 10 for the digit 0
        for split, (images, labels) in splits.items():
            savemat(folder / f"{split}_32x32.mat",
                    {"X": images.transpose(2, 3, 1, 0), "y": np.where(labels == 0, 10, labels).reshape(-1, 1)})
    return counts


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for dataset in NEW:
        write_dataset(dataset, root)
    return root


def test_the_registry_describes_every_data_set():
    assert data.PAPER_DATASETS == ("mnist", "fashion_mnist")
    assert {name: (entry.n_classes, entry.inputs) for name, entry in data.DATASETS.items()} == {
        "mnist": (10, 784), "fashion_mnist": (10, 784), "kmnist": (10, 784), "emnist_balanced": (47, 784),
        "emnist_letters": (26, 784), "cifar10": (10, 3072), "svhn": (10, 3072)}
    for name, entry in data.DATASETS.items():
        assert len(entry.mean) == len(entry.std) == entry.channels
        for split in ("train", "test"):
            assert len(data.EXPECTED_CLASS_COUNTS[(name, split)]) == entry.n_classes
    assert sum(data.EXPECTED_CLASS_COUNTS[("svhn", "train")]) == 73257
    assert data.DATASETS["emnist_letters"].class_names[0] == "a"
    assert data.DATASETS["emnist_balanced"].class_names[:11] == tuple("0123456789A")


@pytest.mark.parametrize("dataset", NEW)
def test_loads_through_torchvision_with_the_data_sets_shape_labels_and_statistics(root, dataset):
    entry = data.DATASETS[dataset]
    train = data.load_split(dataset, True, root=root)
    test = data.load_split(dataset, False, root=root)
    assert train.images.shape == (PER_CLASS["train"] * entry.n_classes, entry.inputs)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert torch.bincount(test.labels).tolist() == [PER_CLASS["test"]] * entry.n_classes  # letters: 0-25
    # The same images as written, standardised per channel with the data set's mean and std.
    labels = split_labels(entry.n_classes, "train", seed=0)
    raw = torch.from_numpy(planted_images(labels, entry.image_shape, seed=10))
    assert torch.equal(train.labels, torch.from_numpy(labels))
    expected = (raw.float() / 255 - torch.tensor(entry.mean).view(1, -1, 1, 1)) / torch.tensor(entry.std).view(1, -1, 1, 1)
    assert torch.allclose(train.images, expected.reshape(len(labels), -1), atol=1e-5)


def test_standardise_is_per_channel_and_channel_major():
    raw = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    raw[0, 1] = 255
    out = data.standardise(raw, "cifar10")
    assert out.shape == (1, 3072)
    assert out[0, :1024].eq(-1).all() and out[0, 1024:2048].eq(1).all() and out[0, 2048:].eq(-1).all()
    with pytest.raises(ValueError, match="3 channel"):
        data.standardise(torch.zeros(1, 28, 28, dtype=torch.uint8), "svhn")


def test_subset_and_left_out_class_of_a_47_class_data_set(root):
    split = data.load_split("emnist_balanced", True, subset=94, exclude_classes=(46,), seed=0, root=root)
    assert len(split) == 94 and int(split.labels.max()) == 45


def test_validate_checks_torchvisions_checksums_and_the_published_counts(root, monkeypatch):
    with pytest.raises(data.DataError, match="checksums"):  # these files are not the published CIFAR-10
        data.validate("cifar10", root)
    with pytest.raises(data.DataError, match="expected 60000 images of 1x28x28"):
        data.validate("kmnist", root)
    monkeypatch.setitem(data.EXPECTED_CLASS_COUNTS, ("kmnist", "train"), (13,) * 9 + (3,))
    with pytest.raises(data.DataError, match="class counts"):
        data.validate("kmnist", root)
    monkeypatch.setitem(data.EXPECTED_CLASS_COUNTS, ("kmnist", "train"), (12,) * 10)
    monkeypatch.setitem(data.EXPECTED_CLASS_COUNTS, ("kmnist", "test"), (4,) * 10)
    data.validate("kmnist", root)


def test_missing_data_names_the_data_set_and_both_ways_to_get_it(tmp_path):
    with pytest.raises(data.DataError) as error:
        data.load_split("svhn", True, root=tmp_path)
    message = str(error.value)
    for part in ("svhn is not in the data root", "train_32x32.mat", "fflab fetch-data --dataset svhn",
                 "fflab fetch-data --from DIR"):
        assert part in message


def test_fetch_data_from_a_folder_imports_what_it_finds_and_names_what_is_missing(tmp_path, monkeypatch):
    source, target = tmp_path / "torchvision", tmp_path / "root"
    counts = {"kmnist": write_dataset("kmnist", source, packed=True),  # .gz, as torchvision downloads them
              "cifar10": write_dataset("cifar10", source / "elsewhere")}  # found below the top folder
    for dataset, by_split in counts.items():
        for split, expected in by_split.items():
            monkeypatch.setitem(data.EXPECTED_CLASS_COUNTS, (dataset, split), expected)
    monkeypatch.setattr(data, "_checksums_match", lambda dataset, root: True)  # not the published files
    monkeypatch.setenv("FFLAB_DATA_ROOT", str(target))

    result = CliRunner().invoke(cli, ["fetch-data", "--from", str(source)])
    assert result.exit_code == 0, result.output
    assert "kmnist: found, checked" in result.output and "cifar10: found, checked" in result.output
    assert "svhn: missing" in result.output and "mnist: missing" in result.output
    assert "found 2 of 7" in result.output
    assert data.has_files("kmnist", target) and data.has_files("cifar10", target)
    assert len(data.load_split("cifar10", False, root=target)) == 40

    # Files that do not validate: named, and the command fails.
    monkeypatch.setitem(data.EXPECTED_CLASS_COUNTS, ("kmnist", "test"), (5,) * 4 + (3,) * 5 + (5,))
    result = CliRunner().invoke(cli, ["fetch-data", "--from", str(source), "--dataset", "kmnist"])
    assert result.exit_code != 0 and "kmnist: INVALID" in result.output and "class counts" in result.output, result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["fetch-data", "--from", str(empty)])
    assert result.exit_code != 0 and "no data set found" in result.output


def test_colour_labels_go_into_every_channel_as_the_authors_code_does():
    images = torch.zeros(2, 3072)
    images[0, 5] = 2.0
    every = embed_labels(images, torch.tensor([3, 9]), "image_max", LabelLayout.of(3072, 10, 3, "every"))
    for offset in (0, 1024, 2048):
        assert every[0, offset + 3] == 2.0 and every[0, offset : offset + 10].count_nonzero() == 1
        assert every[1, offset + 9] == 0.0  # an all-zero image's maximum
    first = LabelLayout.of(3072, 10, 3, "first")
    assert first.offsets == (0,)
    assert embed_labels(images, torch.tensor([3, 9]), "image_max", first)[0, 1027] == 0.0
    w = torch.randn(4, 3072)
    assert torch.allclose(LabelLayout.of(3072, 10, 3).label_weights(w), (w[:, :10] + w[:, 1024:1034] + w[:, 2048:2058]).t())


@pytest.mark.parametrize("dataset", ["emnist_letters", "svhn"])
def test_networks_follow_the_data_sets_input_size_and_classes(dataset):
    entry = data.DATASETS[dataset]
    network = build_spec("quick").network
    ff = MODELS["ff"].build(network, dataset)
    assert ff.layers[0].in_features == entry.inputs
    assert label_layout(ff).n_classes == entry.n_classes
    assert MODELS["bp"].build(network, dataset).head.out_features == entry.n_classes


def test_the_unseen_class_must_be_a_class_of_the_data_set():
    ExperimentSpec(datasets=["emnist_letters"], unseen_class=25)
    with pytest.raises(ValidationError) as error:
        ExperimentSpec(datasets=["emnist_letters", "mnist"], unseen_class=12)
    (problem,) = error.value.errors()
    assert problem["loc"] == ("unseen_class",) and "mnist has 10 (0-9)" in problem["msg"]
    assert ExperimentSpec().datasets == ["mnist", "fashion_mnist"]  # the paper's, by default


def small_spec(dataset: str, model: str = "ff", epochs: int = 30) -> ExperimentSpec:
    return build_spec("quick", {
        "datasets": [dataset], "models": [model], "seeds": [0], "unseen_class": None, "snapshots": [],
        "device": "cpu", "network": {"layers": 1, "width": 100},
        model: {"epochs": epochs, "learning_rate": 0.003, "batch_size": 20},
    })


@pytest.mark.parametrize("dataset", ["cifar10", "svhn", "emnist_letters"])
def test_ff_learns_a_planted_signal(root, tmp_path, dataset):
    """30 epochs of FF (one layer of 100 units) on 120-312 images: finite, falling loss
    and test accuracy well above chance (the classes are planted pixels)."""
    torch.set_num_threads(1)
    entry = data.DATASETS[dataset]
    metrics = train_and_evaluate(small_spec(dataset), RunKey("ff", dataset, 0), tmp_path / "run", data_root=root)
    (losses,) = metrics.loss_history
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert len(metrics.per_class_accuracy) == entry.n_classes
    assert metrics.accuracy > 0.6  # chance: 0.1 (CIFAR-10, SVHN), 0.04 (EMNIST letters)


def test_bp_trains_on_the_47_classes_of_emnist_balanced(root, tmp_path):
    torch.set_num_threads(1)
    metrics = train_and_evaluate(small_spec("emnist_balanced", "bp", epochs=10), RunKey("bp", "emnist_balanced", 0),
                                 tmp_path / "run", data_root=root)
    (losses,) = metrics.loss_history
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert len(metrics.per_class_accuracy) == 47


@pytest.mark.parametrize("negative_labels", ["fixed", "subsampled", "per_epoch"])
def test_the_ff_engine_trains_colour_images_as_the_straightforward_implementation(negative_labels):
    """The engine's shared layer-1 product and sparse gradient with three label blocks
    (every channel) give what autograd on the embedded images gives."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.reference import reference_label_goodness, reference_train_ff
    from fflab.models.common import GoodnessNetwork, label_goodness, seed_everything
    from fflab.models.ff import train_ff
    from fflab.spec import NetworkSpec, TrainingSpec

    labels = torch.arange(10).repeat(6)
    images = data.standardise(torch.from_numpy(planted_images(labels.numpy(), (3, 32, 32), seed=1)), "cifar10")
    network, training = NetworkSpec(layers=2, width=24), TrainingSpec(epochs=3, learning_rate=0.01, batch_size=25)
    nets = []
    for trainer in (reference_train_ff, train_ff):
        generator = seed_everything(0)
        net = GoodnessNetwork(network, in_features=3072, n_classes=10, channels=3).double()
        history = trainer(net, images.double(), labels, training, generator, negative_labels)
        nets.append((net, history))
    (ref, ref_history), (eng, eng_history) = nets
    for (name, expected), actual in zip(ref.state_dict().items(), eng.state_dict().values()):
        torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0, msg=lambda m: f"{name}: {m}")
    assert eng_history == [pytest.approx(losses, abs=1e-10) for losses in ref_history]
    torch.testing.assert_close(label_goodness(eng, images.double()), reference_label_goodness(eng, images.double()))
