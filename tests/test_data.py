import numpy as np
import pytest
import torch

from fflab import data


def test_stratified_subset_keeps_class_proportions_and_is_reproducible():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    index = data.stratified_subset(labels, 100, seed=3)
    assert index.shape == (100,)
    assert np.unique(index).size == 100
    assert np.bincount(labels[index]).tolist() == [10, 20, 30, 40]
    assert np.array_equal(index, data.stratified_subset(labels, 100, seed=3))
    assert not np.array_equal(index, data.stratified_subset(labels, 100, seed=4))


def test_stratified_subset_hands_out_the_remainder():
    labels = np.repeat(np.arange(3), [10, 10, 10])
    assert np.bincount(labels[data.stratified_subset(labels, 10, seed=0)]).sum() == 10


def test_stratified_subset_rejects_bad_sizes():
    with pytest.raises(ValueError, match="subset size"):
        data.stratified_subset(np.zeros(5), 6, seed=0)


def test_standardise_uses_mnist_statistics():
    raw = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    out = data.standardise(raw)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(-0.1307 / 0.3081)
    assert out[0, 1].item() == pytest.approx((1 - 0.1307) / 0.3081)


def test_real_data_sets_validate(data_root):
    for dataset in data.PAPER_DATASETS:
        data.validate(dataset, data_root)


def test_load_split_subset_and_left_out_class(data_root):
    split = data.load_split("fashion_mnist", True, subset=900, exclude_classes=(0,), seed=1)
    counts = torch.bincount(split.labels, minlength=10).tolist()
    assert counts == [0] + [100] * 9
    assert split.images.shape == (900, 784)
    assert split.images.dtype == torch.float32
    full_test = data.load_split("mnist", False)
    assert len(full_test) == 10_000
    assert full_test.images.mean().item() == pytest.approx(0.0, abs=0.02)


def test_missing_data_fails_with_instructions(tmp_path):
    with pytest.raises(data.DataError, match="fflab fetch-data"):
        data.load_split("mnist", True, root=tmp_path)


def test_validate_rejects_a_relabelled_file(tmp_path, data_root):
    target = data.raw_dir("mnist", tmp_path)
    target.mkdir(parents=True)
    for name in data.RAW_FILES:
        (target / name).write_bytes((data.raw_dir("mnist", data_root) / name).read_bytes())
    labels = target / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8] = (raw[8] + 1) % 10  # relabel one test image
    labels.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="class counts"):
        data.validate("mnist", tmp_path)


def test_fetch_data_reports_files_already_present(data_root):
    assert data.fetch_data(("mnist",), data_root) == {"mnist": "already present"}
