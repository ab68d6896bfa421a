"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from aligned.config import ConfigError, positive_int
from aligned.data.sampling import shuffling, split_fraction
from aligned.data.split_loaders import SplitLoaders
from aligned.data.stratified_split import check_split_sizes, stratified_split

NUM_CLASSES = 10
IMAGE_SIZE = 8
IN_CHANS = 1
NUM_IMAGES = 1797


class DigitsDataModule(SplitLoaders):
    """Digits as 1x8x8 images, standardised with the train split's mean and std.

    Training batches are augmented with random translations of up to ``max_shift`` pixels
    (zero padding), the usual augmentation for digits; ``max_shift=0`` turns it off.
    The train/val/test split is stratified and depends only on ``split_seed`` (not on the
    training seed), so runs with different seeds are evaluated on the same images.
    ``num_classes``, ``image_size`` and ``in_chans`` are facts of this data set that model configs
    interpolate; they are checked, and ``image_size`` may upsample (bilinear) for larger patches.
    Val and test come in batches of ``eval_batch_size`` (256 by default, apart from the training
    batch size): the splits are small, and minibatch CKA is averaged over these batches.
    """

    inputs = "images"  # what its batches hold; train.py checks that model and data agree
    # The settings that choose each split's samples (evaluate.py compare_to checks them).
    split_settings = {"val": ("split_seed", "val_fraction", "test_fraction"),
                      "test": ("split_seed", "test_fraction")}

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        num_classes: int = NUM_CLASSES,
        image_size: int = IMAGE_SIZE,
        in_chans: int = IN_CHANS,
        max_shift: int = 1,
        eval_batch_size: int = 256,
    ) -> None:
        super().__init__()
        if num_classes != NUM_CLASSES or in_chans != IN_CHANS:
            raise ConfigError(
                f"Digits has {NUM_CLASSES} classes and {IN_CHANS} channel; got "
                f"data.num_classes={num_classes}, data.in_chans={in_chans}. Remove these overrides."
            )
        val_fraction = split_fraction("data.val_fraction", val_fraction)
        test_fraction = split_fraction("data.test_fraction", test_fraction)
        check_split_sizes(NUM_IMAGES, NUM_CLASSES, val_fraction, test_fraction, "digits")
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.eval_batch_size = positive_int("data.eval_batch_size", eval_batch_size)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_classes = num_classes
        self.image_size = image_size
        self.max_shift = max_shift
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        digits = load_digits()
        images = digits.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
        labels = digits.target.astype(np.int64)
        self.indices = stratified_split(labels, self.val_fraction, self.test_fraction,
                                        self.split_seed)  # into load_digits()
        train = self.indices["train"]
        x = torch.from_numpy(images)
        if self.image_size != IMAGE_SIZE:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        y = torch.from_numpy(labels)
        self.splits = {name: TensorDataset(x[idx], y[idx]) for name, idx in self.indices.items()}

    def sample_ids(self, split: str) -> set[int]:
        """Which of scikit-learn's 1,797 digits ``split`` holds (after ``setup``)."""
        return {int(i) for i in self.indices[split]}

    def on_after_batch_transfer(self, batch: list, dataloader_idx: int) -> list:
        if self.trainer is not None and self.trainer.training and self.max_shift > 0:
            images, labels = batch
            batch = [random_shift(images, self.max_shift), labels]
        return batch

    def loader(self, split: str) -> DataLoader:
        train = split == "train"
        return DataLoader(self.splits[split],
                          batch_size=self.batch_size if train else self.eval_batch_size,
                          **shuffling(self.splits[split], train))


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image (B, C, H, W) by its own random offset in [-max_shift, max_shift]."""
    b, _, h, w = images.shape
    # Pad with the background value (the minimum after standardisation), then crop.
    padded = F.pad(images, [max_shift] * 4, value=images.min().item())
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (B, 1, 1, W)
    batch_index = torch.arange(b, device=images.device)[:, None, None, None]
    return padded[batch_index, torch.arange(images.shape[1])[None, :, None, None], rows, cols]
