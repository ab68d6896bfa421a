"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format, at 32x32 or a timm model's size."""

from __future__ import annotations

import numbers
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive

from aligned.config import ConfigError, positive_int
from aligned.data.imagenet import (
    TransformedSubset,
    holdout_indices,
    holdout_sample_ids,
    image_loader,
    timm_data_config,
)
from aligned.data.split_loaders import SplitLoaders

NATIVE_SIZE = 32
CIFAR_TRAIN_IMAGES = 50_000  # in both variants
# Seconds a download may wait for the server; without a network it fails now, not after TCP's
# two-minute connect timeout (torchvision's urlopen sets none).
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class CIFARVariant:
    dataset: type[CIFAR10]  # torchvision's class: file names, md5 sums and download URL
    title: str
    num_classes: int
    # Per-channel statistics of the 50k training images. (The often-copied CIFAR-10 std
    # (0.2023, 0.1994, 0.2010) is a per-image average, not the data set's std.)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


VARIANTS = {
    "cifar10": CIFARVariant(
        CIFAR10, "CIFAR-10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": CIFARVariant(
        CIFAR100, "CIFAR-100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}


class CIFARDataModule(SplitLoaders):
    """CIFAR-10 or CIFAR-100 (``variant``) as 3xHxW images from torchvision's files in ``data_dir``.

    "val" is a seeded holdout of ``val_size`` of the 50k training images (depends only on
    ``split_seed``), evaluated without augmentation; "test" is the official 10k test set.
    Training augmentation is the standard one for CIFAR: random crop after zero padding by 1/8
    of the side (4 pixels at 32) and horizontal flips.

    At 32x32 images are normalised with the variant's statistics. With ``timm_model`` (fine-tuning
    a pretrained model, e.g. DeiT-S at 224) the input size, interpolation, mean and std are the
    model's pretrained config; images are resized to that size and then augmented as at 32
    (padding 28 at 224), so the augmentation keeps its meaning at any size. Evaluation only
    resizes: no center crop (timm's crop_pct), which would cut away the border of a 32-pixel
    image where CIFAR objects often reach.

    ``download`` fetches the archive in ``prepare_data`` when files are missing; offline, the
    error says where to put the files. ``num_classes``, ``image_size`` and ``in_chans`` are facts
    the model configs interpolate; they are checked.
    """

    metrics = ("accuracy",)
    inputs = "images"  # what its batches hold; train.py checks that model and data agree
    # The settings that choose each split's samples (test: the official test set).
    split_settings = {"val": ("split_seed", "val_size"), "test": ()}

    def __init__(
        self,
        variant: str = "cifar10",
        data_dir: str = "./data",
        download: bool = True,
        timm_model: str | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        in_chans: int = 3,
        val_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 128,
        # Decoding a 32x32 array is cheap; 4 workers keep up even when resizing to 224 for a
        # ViT-S, without oversubscribing CPUs when several GPU processes share a node.
        num_workers: int = 4,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"data.variant must be one of {sorted(VARIANTS)}; got '{variant}'.")
        self.variant = VARIANTS[variant]
        if num_classes is not None and num_classes != self.variant.num_classes:
            raise ConfigError(
                f"{self.variant.title} has {self.variant.num_classes} classes; got "
                f"data.num_classes={num_classes}. Remove this override."
            )
        if in_chans != 3:
            raise ConfigError(f"CIFAR images have 3 channels; got data.in_chans={in_chans}.")
        if timm_model is None:
            size = image_size or NATIVE_SIZE
            self.data_config = {
                "input_size": (3, size, size),
                "interpolation": "bicubic",
                "mean": self.variant.mean,
                "std": self.variant.std,
            }
        else:
            self.data_config = timm_data_config(timm_model, image_size)
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.download = download
        self.num_classes = self.variant.num_classes
        self.image_size = self.data_config["input_size"][-1]
        self.in_chans = in_chans
        if isinstance(val_size, bool) or not isinstance(val_size, numbers.Integral) \
                or not 0 < val_size < CIFAR_TRAIN_IMAGES:
            raise ConfigError(
                f"data.val_size is the number of training images held out for validation, an "
                f"integer between 1 and {CIFAR_TRAIN_IMAGES - 1} (of CIFAR's "
                f"{CIFAR_TRAIN_IMAGES}), e.g. 5000; got {val_size!r}."
            )
        self.val_size = int(val_size)
        self.split_seed = split_seed
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.splits: dict[str, Dataset] = {}

    @property
    def folder(self) -> Path:
        return self.data_dir / self.variant.dataset.base_folder

    def missing_files(self) -> list[Path]:
        dataset = self.variant.dataset
        names = [name for name, _ in dataset.train_list + dataset.test_list]
        paths = [self.folder / name for name in [*names, dataset.meta["filename"]]]
        return [path for path in paths if not path.is_file()]

    def not_found(self, reason: str) -> ConfigError:
        dataset = self.variant.dataset
        first = self.folder / dataset.train_list[0][0]
        hint = ""
        if (self.data_dir / first.name).is_file() and self.data_dir.name == dataset.base_folder:
            parent = self.data_dir.parent
            hint = (f" data.data_dir is the folder above {dataset.base_folder}/: {parent}; "
                    f"set data.data_dir={parent}.")
        elif (self.data_dir / first.name).is_file():  # the batch files extracted without folder
            hint = (f" The files sit directly in {self.data_dir}, but torchvision reads them from "
                    f"its subfolder {dataset.base_folder}/: move them there (cd {self.data_dir} "
                    f"&& mkdir -p {dataset.base_folder} && mv {' '.join(self.file_patterns())} "
                    f"{dataset.base_folder}/).")
        return ConfigError(
            f"{self.variant.title} not found in {self.data_dir} ({reason}). Extract "
            f"{dataset.filename} (from {dataset.url}) there so that {first} exists "
            f"(tar xzf {dataset.filename} -C {self.data_dir}), or run once with internet access "
            f"and data.download true (the default).{hint}"
        )

    def file_patterns(self) -> list[str]:
        """The variant's file names, the training batches as one shell pattern (data_batch_*)."""
        dataset = self.variant.dataset
        train = [name for name, _ in dataset.train_list]
        first = [os.path.commonprefix(train) + "*"] if len(train) > 1 else train
        return [*first, *(name for name, _ in dataset.test_list), dataset.meta["filename"]]

    def prepare_data(self) -> None:
        """Download and extract the archive if files are missing (Lightning: one process)."""
        if not self.download or not self.missing_files():
            return
        dataset = self.variant.dataset
        try:
            with socket_timeout(DOWNLOAD_TIMEOUT_S):
                download_and_extract_archive(
                    dataset.url, str(self.data_dir), filename=dataset.filename, md5=dataset.tgz_md5
                )
        except Exception as error:  # DNS, proxy, timeout or a bad archive: the fix is the same
            raise self.not_found(f"download failed: {error}") from None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if missing := self.missing_files():
            raise self.not_found(f"{missing[0].name} is missing")
        train_tf, eval_tf = self.transforms()
        train_images = self.load(train=True)
        train, val = holdout_indices(len(train_images), self.val_size, self.split_seed)
        self.splits = {
            "train": TransformedSubset(train_images, train, train_tf),
            "val": TransformedSubset(train_images, val, eval_tf),
            "test": self.load(train=False, transform=eval_tf),
        }

    def sample_ids(self, split: str) -> set[tuple[str, int]]:
        """Which images ``split`` holds (after ``setup``)."""
        return holdout_sample_ids(self.splits, split)

    def load(self, train: bool, transform: T.Compose | None = None) -> CIFAR10:
        try:
            return self.variant.dataset(str(self.data_dir), train=train, transform=transform)
        except RuntimeError:  # torchvision's md5 check failed
            raise ConfigError(
                f"{self.folder} is corrupted (md5 sums differ from {self.variant.title}'s); "
                f"delete it and extract {self.variant.dataset.filename} again."
            ) from None

    def transforms(self) -> tuple[T.Compose, T.Compose]:
        """(train, eval) transforms: resize if needed, augment (train only), normalise."""
        size = self.image_size
        resize = []
        if size != NATIVE_SIZE:
            interpolation = T.InterpolationMode(self.data_config["interpolation"])
            resize = [T.Resize((size, size), interpolation=interpolation)]
        normalise = [T.ToTensor(), T.Normalize(self.data_config["mean"], self.data_config["std"])]
        augment = [T.RandomCrop(size, padding=size // 8), T.RandomHorizontalFlip()]
        return T.Compose([*resize, *augment, *normalise]), T.Compose([*resize, *normalise])

    def loader(self, split: str) -> DataLoader:
        return image_loader(
            self.splits[split], self.batch_size, self.num_workers, self.pin_memory,
            shuffle=split == "train",
        )


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Set the default socket timeout (what urllib uses when none is given) for a block."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
