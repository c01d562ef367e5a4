"""Bring your own representations: the npz format of a network's activity recorded
outside fflab (docs/representations.md), its validator and its writer.

A representations file is a standard ``.npz`` (``np.savez`` / ``np.savez_compressed``)
of plain arrays:

- per hidden layer an (N, units) real activity matrix: ``layer1``, ``layer2``, ...
  (numbered from 1, no gap), or any names listed, in order, by ``layers`` (a 1-D
  string array);
- ``labels``: (N,) integers in 0..classes-1, every class with at least one image;
  ``classes`` is ``len(class_names)`` when given, else ``max(labels) + 1``;
- optional ``class_names`` (classes,) strings; ``predictions`` (N,) integers in
  0..classes-1 (the network's predicted class: the analyses then use the correctly
  classified images, as the paper does);
- optional ``weights_<layer>`` (units, inputs) real: the layer's incoming weights;
- optional snapshots over training, all three together: ``snapshot_epochs`` (S,)
  increasing integers, ``snapshot_rows`` (M,) distinct row indices into the N images
  (the probe set), ``snapshot_<layer>`` (S, M, units) per layer, and optionally
  ``snapshot_accuracy`` (S,) in [0, 1];
- optional ``description``: a 0-d string array holding a JSON object.

``read_representations`` loads one safely: it reads every array's header before its
data (a declared shape beyond the limits is refused before anything is allocated),
never unpickles (``allow_pickle=False``: object arrays are refused) and checks every
rule, raising ``RepresentationsError`` naming the key and what is allowed
(``NotAnNpz`` when the file is not an npz archive at all). Pure numpy and pydantic:
no torch.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fflab.settings import Settings

# Keys with a fixed meaning; a layer's name may be none of them.
LABELS, PREDICTIONS, LAYERS, CLASS_NAMES, DESCRIPTION = "labels", "predictions", "layers", "class_names", "description"
WEIGHTS_PREFIX, SNAPSHOT_PREFIX = "weights_", "snapshot_"
SNAPSHOT_EPOCHS, SNAPSHOT_ROWS, SNAPSHOT_ACCURACY = "snapshot_epochs", "snapshot_rows", "snapshot_accuracy"
RESERVED = (LABELS, PREDICTIONS, LAYERS, CLASS_NAMES, DESCRIPTION, SNAPSHOT_EPOCHS, SNAPSHOT_ROWS, SNAPSHOT_ACCURACY)
LAYER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
DEFAULT_LAYER = re.compile(r"layer([1-9][0-9]*)")
MAX_DESCRIPTION_CHARS = 65_536
MAX_CLASS_NAME_CHARS = 64
MAX_SNAPSHOTS = 50
MIN_CLASSES = 2


class RepresentationsError(ValueError):
    """A file that breaks a rule of the format: ``key`` is the array (or ``file``),
    ``allowed`` what the format allows there."""

    def __init__(self, key: str, problem: str, allowed: str) -> None:
        self.key, self.problem, self.allowed = key, problem, allowed
        super().__init__(f"{key}: {problem}; allowed: {allowed}")


class NotAnNpz(RepresentationsError):
    """The file is not an npz (zip) archive at all."""


class RepresentationLimits(BaseModel):
    """What one file may hold (the service reads these from its Settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_units: int = Field(8192, ge=1, description="Most units per layer (and inputs per weight matrix).")
    max_images: int = Field(100_000, ge=2, description="Most images (rows) N.")
    max_layers: int = Field(16, ge=1, description="Most layers.")
    max_classes: int = Field(1000, ge=MIN_CLASSES, description="Most classes.")
    max_decoded_bytes: int = Field(2 << 30, ge=1024, description="Most bytes of all arrays together, as "
                                   "their headers declare them (decompressed): refused before any is read.")


def limits_from_settings(settings: Settings) -> RepresentationLimits:
    """The limits a deployment sets (``FFLAB_REPRESENTATIONS_MAX_*``)."""
    return RepresentationLimits(max_units=settings.representations_max_units,
                                max_images=settings.representations_max_images,
                                max_decoded_bytes=4 * settings.representations_max_bytes)


@dataclass(frozen=True)
class Snapshots:
    """Activity of a probe set of the images at epochs during training."""

    epochs: np.ndarray  # (S,) int64, increasing
    rows: np.ndarray  # (M,) int64, distinct indices into the N images
    layers: list[np.ndarray]  # per layer (S, M, units) float32
    accuracy: np.ndarray | None = None  # (S,) float64 in [0, 1]


@dataclass(frozen=True)
class Representations:
    """A validated representations file: per layer (N, units) float32 activities,
    (N,) int64 labels in 0..classes-1 and what else it gave."""

    layer_names: list[str]
    layers: list[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    predictions: np.ndarray | None = None
    weights: list[np.ndarray | None] = field(default_factory=list)  # per layer, None: not given
    snapshots: Snapshots | None = None
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def units(self) -> list[int]:
        return [int(layer.shape[1]) for layer in self.layers]


# The kind of a service experiment made from an uploaded representations file
# (POST /v1/representations): its stored spec says ``"kind": "representations"``;
# an experiment trained from an ExperimentSpec has no kind (``training``).
REPRESENTATIONS_KIND: Final = "representations"
TRAINING_KIND = "training"


def experiment_kind(spec: Mapping[str, Any]) -> str:
    """The kind of an experiment from its stored spec: ``representations`` for an
    uploaded representations file, ``training`` otherwise."""
    return REPRESENTATIONS_KIND if spec.get("kind") == REPRESENTATIONS_KIND else TRAINING_KIND


def layer_keys(names: list[str]) -> tuple[str, ...]:
    """Every key the arrays of layers ``names`` may use."""
    return tuple(key for name in names for key in (name, WEIGHTS_PREFIX + name, SNAPSHOT_PREFIX + name))


# ------------------------------------------------------------------ reading safely


def _headers(archive: zipfile.ZipFile) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each member's key, declared shape and dtype, read from the .npy headers alone."""
    found: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for info in archive.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if not info.filename.endswith(".npy") or "/" in info.filename:
            raise RepresentationsError(key, "is not an array of the npz (a .npy member)",
                                       "only .npy members, as np.savez writes them")
        if key in found:
            raise RepresentationsError(key, "is in the archive twice", "each key once")
        try:
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise ValueError(f"npy format version {version}")
        except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
            raise RepresentationsError(key, f"has no readable .npy header ({error})",
                                       "arrays as numpy writes them; the file may be truncated") from None
        if dtype.hasobject:
            raise RepresentationsError(key, f"is an object array ({dtype})",
                                       "numbers and strings only: no pickled objects")
        found[key] = (tuple(int(n) for n in shape), dtype)
    return found


def _read(archive: zipfile.ZipFile, key: str) -> np.ndarray:
    try:
        with archive.open(key + ".npy") as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
        raise RepresentationsError(key, f"cannot be read ({error})",
                                   "a complete array as numpy writes it; the file may be truncated") from None


def _kind(key: str, dtype: np.dtype, kinds: str, allowed: str) -> None:
    if dtype.kind not in kinds:
        raise RepresentationsError(key, f"has dtype {dtype}", allowed)


def _shape(key: str, shape: tuple[int, ...], expected: tuple[int | None, ...], allowed: str) -> None:
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected, strict=False)):
        raise RepresentationsError(key, f"has shape {shape}", allowed)


def _bounded(key: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise RepresentationsError(key, f"has {value} {what}", f"at most {limit} {what}")


def _finite(key: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise RepresentationsError(key, f"holds {bad} NaN or infinite values", "finite numbers only")


def _layer_names(headers: dict[str, tuple[tuple[int, ...], np.dtype]], archive: zipfile.ZipFile,
                 limits: RepresentationLimits) -> list[str]:
    if LAYERS in headers:
        shape, dtype = headers[LAYERS]
        _kind(LAYERS, dtype, "U", "a 1-D array of layer names (strings)")
        _shape(LAYERS, shape, (None,), "a 1-D array of layer names")
        _bounded(LAYERS, shape[0], limits.max_layers, "layers")
        names = [str(name) for name in _read(archive, LAYERS)]
        if not names:
            raise RepresentationsError(LAYERS, "is empty", "1 or more layer names")
        for name in names:
            if not LAYER_NAME.fullmatch(name) or name in RESERVED or name.startswith((WEIGHTS_PREFIX, SNAPSHOT_PREFIX)):
                raise RepresentationsError(LAYERS, f"names a layer {name!r}",
                                           "names of 1-64 letters, digits, _ or . starting with a letter, not "
                                           f"{', '.join(RESERVED)} nor starting with weights_ or snapshot_")
        if len(set(names)) != len(names):
            raise RepresentationsError(LAYERS, "names a layer twice", "distinct names")
        for name in names:
            if name not in headers:
                raise RepresentationsError(name, "is missing (named by layers)", "an (N, units) array per layer named")
        return names
    numbered = sorted(int(m.group(1)) for key in headers if (m := DEFAULT_LAYER.fullmatch(key)))
    if not numbered:
        raise RepresentationsError("layer1", "is missing: the file has no layer",
                                   "layer1, layer2, ... (N, units) arrays, or their names listed in layers")
    if numbered != list(range(1, len(numbered) + 1)):
        missing = min(set(range(1, len(numbered) + 1)) - set(numbered))
        raise RepresentationsError(f"layer{missing}", "is missing", "layers numbered 1, 2, ... without a gap")
    _bounded("layers", len(numbered), limits.max_layers, "layers")
    return [f"layer{index}" for index in numbered]


def read_representations(source: str | Path | IO[bytes], limits: RepresentationLimits | None = None
                         ) -> Representations:
    """Load and check a representations file (a path or a seekable binary file).

    Raises ``NotAnNpz`` for a file that is not an npz archive and
    ``RepresentationsError`` (naming the key and what is allowed) for any broken
    rule; the shapes are checked against ``limits`` from the arrays' headers,
    before their data are read."""
    limits = limits or RepresentationLimits()
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise NotAnNpz("file", f"is not an npz archive ({error})",
                       "an .npz file as np.savez or np.savez_compressed writes it") from None
    with archive:
        return _check(archive, limits)


def _check(archive: zipfile.ZipFile, limits: RepresentationLimits) -> Representations:
    headers = _headers(archive)
    declared = {key: int(np.prod(shape, dtype=object)) * dtype.itemsize for key, (shape, dtype) in headers.items()}
    if sum(declared.values()) > limits.max_decoded_bytes:
        largest = max(declared, key=lambda key: declared[key])
        raise RepresentationsError(largest, f"declares {declared[largest]} bytes ({sum(declared.values())} in all)",
                                   f"at most {limits.max_decoded_bytes} bytes of arrays in all")
    names = _layer_names(headers, archive, limits)
    allowed_keys = set(RESERVED) | set(layer_keys(names))
    for key in headers:
        if key not in allowed_keys:
            raise RepresentationsError(key, "is not a key of the format",
                                       f"{', '.join(RESERVED)}, and per layer <name>, weights_<name>, "
                                       f"snapshot_<name> for the layers {', '.join(names)}")

    if LABELS not in headers:
        raise RepresentationsError(LABELS, "is missing", "(N,) integer labels in 0..classes-1")
    shape, dtype = headers[LABELS]
    _kind(LABELS, dtype, "iu", "integer labels")
    _shape(LABELS, shape, (None,), "(N,): one label per image")
    n = shape[0]
    _bounded(LABELS, n, limits.max_images, "images")
    if n < 2:
        raise RepresentationsError(LABELS, f"has {n} images", "at least 2 images")

    units: list[int] = []
    for name in names:
        shape, dtype = headers[name]
        _kind(name, dtype, "fiu", "real numbers (float, or integer)")
        _shape(name, shape, (n, None), f"(N, units) with N = {n}, the number of labels")
        _bounded(name, shape[1], limits.max_units, "units")
        if shape[1] < 1:
            raise RepresentationsError(name, "has 0 units", "at least 1 unit")
        units.append(shape[1])
    for name, width in zip(names, units, strict=True):
        key = WEIGHTS_PREFIX + name
        if key in headers:
            shape, dtype = headers[key]
            _kind(key, dtype, "fiu", "real numbers")
            _shape(key, shape, (width, None), f"(units, inputs) with units = {width}, the units of {name}")
            _bounded(key, shape[1], limits.max_units, "inputs")

    class_names: list[str] | None = None
    if CLASS_NAMES in headers:
        shape, dtype = headers[CLASS_NAMES]
        _kind(CLASS_NAMES, dtype, "U", "a 1-D array of strings")
        _shape(CLASS_NAMES, shape, (None,), "(classes,) strings")
        _bounded(CLASS_NAMES, shape[0], limits.max_classes, "classes")
        class_names = [str(name) for name in _read(archive, CLASS_NAMES)]
        if len(class_names) < MIN_CLASSES or any(not name.strip() or len(name) > MAX_CLASS_NAME_CHARS
                                                 for name in class_names):
            raise RepresentationsError(CLASS_NAMES, f"has {len(class_names)} names, some empty or too long",
                                       f"at least {MIN_CLASSES} names of 1-{MAX_CLASS_NAME_CHARS} characters")

    labels = _read(archive, LABELS).astype(np.int64)
    if labels.min() < 0:
        raise RepresentationsError(LABELS, f"holds {int(labels.min())}", "labels in 0..classes-1")
    n_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
    if labels.max() >= n_classes:
        raise RepresentationsError(LABELS, f"holds {int(labels.max())} but class_names names {n_classes} classes",
                                   f"labels in 0..{n_classes - 1}")
    if n_classes > limits.max_classes:
        raise RepresentationsError(LABELS, f"has {n_classes} classes", f"at most {limits.max_classes} classes")
    if n_classes < MIN_CLASSES:
        raise RepresentationsError(LABELS, f"has {n_classes} class", f"at least {MIN_CLASSES} classes")
    counts = np.bincount(labels, minlength=n_classes)
    if not counts.all():
        empty = [int(c) for c in np.flatnonzero(counts == 0)]
        raise RepresentationsError(LABELS, f"has no image of class {', '.join(map(str, empty[:10]))}",
                                   f"at least one image of every class 0..{n_classes - 1}")

    predictions = None
    if PREDICTIONS in headers:
        shape, dtype = headers[PREDICTIONS]
        _kind(PREDICTIONS, dtype, "iu", "integer predicted classes")
        _shape(PREDICTIONS, shape, (n,), f"(N,) with N = {n}, the number of labels")
        predictions = _read(archive, PREDICTIONS).astype(np.int64)
        if predictions.min() < 0 or predictions.max() >= n_classes:
            raise RepresentationsError(PREDICTIONS, f"holds values from {int(predictions.min())} to "
                                       f"{int(predictions.max())}", f"predicted classes in 0..{n_classes - 1}")

    layers = []
    weights: list[np.ndarray | None] = []
    for name in names:
        array = _read(archive, name)
        _finite(name, array)
        layers.append(array.astype(np.float32))
        if WEIGHTS_PREFIX + name in headers:
            matrix = _read(archive, WEIGHTS_PREFIX + name)
            _finite(WEIGHTS_PREFIX + name, matrix)
            weights.append(matrix.astype(np.float32))
        else:
            weights.append(None)

    return Representations(
        layer_names=names, layers=layers, labels=labels,
        class_names=class_names if class_names is not None else [str(c) for c in range(n_classes)],
        predictions=predictions, weights=weights, snapshots=_snapshots(archive, headers, names, units, n, limits),
        description=_description(archive, headers),
    )


def _snapshots(archive: zipfile.ZipFile, headers: dict[str, tuple[tuple[int, ...], np.dtype]], names: list[str],
               units: list[int], n: int, limits: RepresentationLimits) -> Snapshots | None:
    keys = [SNAPSHOT_EPOCHS, SNAPSHOT_ROWS] + [SNAPSHOT_PREFIX + name for name in names]
    present = [key for key in keys + [SNAPSHOT_ACCURACY] if key in headers]
    if not present:
        return None
    for key in keys:
        if key not in headers:
            raise RepresentationsError(key, f"is missing while {present[0]} is given",
                                       f"snapshots as {', '.join(keys)} together (and optionally snapshot_accuracy)")
    shape, dtype = headers[SNAPSHOT_EPOCHS]
    _kind(SNAPSHOT_EPOCHS, dtype, "iu", "integer epochs")
    _shape(SNAPSHOT_EPOCHS, shape, (None,), "(S,) epochs")
    s = shape[0]
    if not 1 <= s <= MAX_SNAPSHOTS:
        raise RepresentationsError(SNAPSHOT_EPOCHS, f"has {s} snapshots", f"1 to {MAX_SNAPSHOTS} snapshots")
    shape, dtype = headers[SNAPSHOT_ROWS]
    _kind(SNAPSHOT_ROWS, dtype, "iu", "integer row indices")
    _shape(SNAPSHOT_ROWS, shape, (None,), "(M,) row indices into the N images")
    m = shape[0]
    if not 1 <= m <= n:
        raise RepresentationsError(SNAPSHOT_ROWS, f"has {m} rows", f"1 to N = {n} distinct rows")
    for name, width in zip(names, units, strict=True):
        key = SNAPSHOT_PREFIX + name
        shape, dtype = headers[key]
        _kind(key, dtype, "fiu", "real numbers")
        _shape(key, shape, (s, m, width), f"(S, M, units) = ({s}, {m}, {width})")
    epochs = _read(archive, SNAPSHOT_EPOCHS).astype(np.int64)
    if epochs.min() < 0 or np.any(np.diff(epochs) <= 0):
        raise RepresentationsError(SNAPSHOT_EPOCHS, f"is {epochs.tolist()}", "strictly increasing epochs >= 0")
    rows = _read(archive, SNAPSHOT_ROWS).astype(np.int64)
    if rows.min() < 0 or rows.max() >= n or np.unique(rows).size != m:
        raise RepresentationsError(SNAPSHOT_ROWS, "holds repeated rows or rows outside 0..N-1",
                                   f"distinct rows in 0..{n - 1}")
    accuracy = None
    if SNAPSHOT_ACCURACY in headers:
        shape, dtype = headers[SNAPSHOT_ACCURACY]
        _kind(SNAPSHOT_ACCURACY, dtype, "f", "float accuracies")
        _shape(SNAPSHOT_ACCURACY, shape, (s,), f"(S,) with S = {s}")
        accuracy = _read(archive, SNAPSHOT_ACCURACY).astype(np.float64)
        if not np.all((accuracy >= 0) & (accuracy <= 1)):
            raise RepresentationsError(SNAPSHOT_ACCURACY, "holds values outside [0, 1]", "accuracies in [0, 1]")
    layers = []
    for name in names:
        array = _read(archive, SNAPSHOT_PREFIX + name)
        _finite(SNAPSHOT_PREFIX + name, array)
        layers.append(array.astype(np.float32))
    return Snapshots(epochs=epochs, rows=rows, layers=layers, accuracy=accuracy)


def _description(archive: zipfile.ZipFile, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, Any]:
    if DESCRIPTION not in headers:
        return {}
    shape, dtype = headers[DESCRIPTION]
    allowed = f"a JSON object as a 0-d string array of at most {MAX_DESCRIPTION_CHARS} characters"
    if dtype.kind != "U" or shape != () or dtype.itemsize // 4 > MAX_DESCRIPTION_CHARS:
        raise RepresentationsError(DESCRIPTION, f"has dtype {dtype} and shape {shape}", allowed)
    try:
        value = json.loads(str(_read(archive, DESCRIPTION)))
    except ValueError:
        raise RepresentationsError(DESCRIPTION, "is not JSON", allowed) from None
    if not isinstance(value, dict):
        raise RepresentationsError(DESCRIPTION, f"is a JSON {type(value).__name__}", allowed)
    return value


# ------------------------------------------------------------------ writing


def representation_arrays(representations: Representations) -> dict[str, np.ndarray]:
    """The arrays of the file that holds ``representations`` (what ``write_representations_file`` saves)."""
    names = representations.layer_names
    arrays: dict[str, np.ndarray] = {LABELS: representations.labels}
    if names != [f"layer{i}" for i in range(1, len(names) + 1)]:
        arrays[LAYERS] = np.array(names)
    for name, layer, weights in zip(names, representations.layers, representations.weights or [None] * len(names),
                                    strict=True):
        arrays[name] = layer
        if weights is not None:
            arrays[WEIGHTS_PREFIX + name] = weights
    if representations.class_names != [str(c) for c in range(representations.n_classes)]:
        arrays[CLASS_NAMES] = np.array(representations.class_names)
    if representations.predictions is not None:
        arrays[PREDICTIONS] = representations.predictions
    if representations.snapshots is not None:
        snapshots = representations.snapshots
        arrays[SNAPSHOT_EPOCHS], arrays[SNAPSHOT_ROWS] = snapshots.epochs, snapshots.rows
        arrays.update({SNAPSHOT_PREFIX + name: layer for name, layer in zip(names, snapshots.layers, strict=True)})
        if snapshots.accuracy is not None:
            arrays[SNAPSHOT_ACCURACY] = snapshots.accuracy
    if representations.description:
        arrays[DESCRIPTION] = np.array(json.dumps(representations.description))
    return arrays


def write_representations_file(representations: Representations, path: str | Path) -> Path:
    """Write ``representations`` as a compressed npz of the format (``read_representations`` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        np.savez_compressed(out, **representation_arrays(representations))  # type: ignore[arg-type]
    return path
