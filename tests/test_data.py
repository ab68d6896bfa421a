"""The embedded digits data module: real images, deterministic stratified splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aligned.config import ConfigError
from aligned.data.digits import DigitsDataModule, random_shift


def split_labels(module):
    return {name: ds.tensors[1].numpy() for name, ds in module.splits.items()}


def test_splits_cover_all_1797_images_stratified_and_disjoint():
    module = DigitsDataModule()
    module.setup()
    labels = split_labels(module)
    assert sum(len(v) for v in labels.values()) == 1797
    assert {name: len(v) for name, v in labels.items()} == {"train": 1077, "val": 360, "test": 360}
    for split in labels.values():  # stratified: every class present in proportion
        counts = np.bincount(split, minlength=10)
        assert counts.min() >= 0.08 * len(split) and counts.max() <= 0.12 * len(split)
    images = {name: ds.tensors[0].flatten(1) for name, ds in module.splits.items()}
    assert not (torch.cdist(images["test"], images["train"]).min(dim=1).values == 0).all()
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.int64


def test_split_depends_only_on_split_seed():
    first, second, other = DigitsDataModule(), DigitsDataModule(), DigitsDataModule(split_seed=1)
    for module in (first, second, other):
        module.setup()
    torch.testing.assert_close(first.splits["test"].tensors[0], second.splits["test"].tensors[0])
    assert not torch.equal(first.splits["test"].tensors[1], other.splits["test"].tensors[1])


def test_upsampling_changes_image_size():
    module = DigitsDataModule(image_size=16)
    module.setup()
    assert module.splits["val"].tensors[0].shape[1:] == (1, 16, 16)


def test_wrong_class_count_is_rejected():
    with pytest.raises(ConfigError, match="10 classes"):
        DigitsDataModule(num_classes=5)


def test_random_shift_translates_each_image_within_bounds():
    torch.manual_seed(0)
    images = torch.zeros(32, 1, 8, 8)
    images[:, :, 4, 4] = 1.0  # a single bright pixel
    shifted = random_shift(images, max_shift=1)
    assert shifted.shape == images.shape
    rows, cols = torch.nonzero(shifted[:, 0] == 1.0)[:, 1:].T
    assert len(rows) == 32  # the pixel survives in every image
    assert rows.min() >= 3 and rows.max() <= 5 and cols.min() >= 3 and cols.max() <= 5
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 1  # offsets differ per image
