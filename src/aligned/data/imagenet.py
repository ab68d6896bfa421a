"""ImageNet, or any data set stored as class folders, with timm's standard transforms.

Also the helpers every image data module here shares: the input a timm model expects, a seeded
holdout split, a per-split transform over one loaded data set, and the data loaders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import pil_loader

from aligned.config import ConfigError, positive_int
from aligned.data.sampling import shuffling, split_fraction
from aligned.data.split_loaders import SplitLoaders

DEFAULT_IMAGE_SIZE = 224


def timm_data_config(timm_model: str, image_size: int | None = None) -> dict[str, Any]:
    """Input size, interpolation, mean, std and crop_pct of ``timm_model``'s pretrained weights.

    Read from timm's registry of pretrained configs, so nothing is built or downloaded. The model
    config interpolates ``img_size`` from ``data.image_size``, so a different size is an error.
    """
    try:
        pretrained_cfg = get_pretrained_cfg(timm_model)
    except RuntimeError as error:  # a known architecture with an unknown ".tag"
        raise ConfigError(f"data.timm_model={timm_model}: {error}") from None
    if pretrained_cfg is None:
        raise ConfigError(
            f"data.timm_model={timm_model} is not a timm model with pretrained weights; "
            "use the model's timm name, e.g. deit_small_patch16_224."
        )
    config = resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict())
    expected = config["input_size"][-1]
    if image_size is not None and image_size != expected:
        raise ConfigError(
            f"{timm_model} expects {expected}x{expected} inputs but data.image_size={image_size}; "
            f"set data.image_size={expected}."
        )
    return config


def load_image(path: str) -> Image.Image:
    """torchvision's PIL loader, with one line naming a file that is not a readable image (a
    truncated download, a stray file with an image extension) instead of PIL's traceback."""
    try:
        return pil_loader(path)
    except (OSError, SyntaxError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the file system's error (permissions, too many open files): not the image
        raise ConfigError(f"{path} is not a readable image ({error}); remove or replace it.") \
            from None


def holdout_indices(
    num_items: int, val_size: int, seed: int, setting: str = "data.val_size"
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random (train, val) split of ``range(num_items)``; depends only on ``seed``.
    ``setting`` is the config key that sized the holdout, named in the error."""
    if not 0 < val_size < num_items:
        raise ConfigError(
            f"The validation holdout needs between 1 and {num_items - 1} of the {num_items} "
            f"training images; got {val_size}. Change {setting}."
        )
    order = np.random.default_rng(seed).permutation(num_items)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def holdout_sample_ids(splits: dict[str, Dataset], split: str) -> set[tuple[str, int]]:
    """Which images ``split`` holds, as (source, index): train and val are parts of the
    training set (``TransformedSubset``), test is a set of its own."""
    dataset = splits[split]
    if isinstance(dataset, TransformedSubset):
        return {("train", int(i)) for i in dataset.indices}
    return {("test", i) for i in range(len(dataset))}


class TransformedSubset(Dataset):
    """The items of ``dataset`` at ``indices``, images passed through ``transform``.

    Train and holdout share one loaded data set but not their transforms (augmentation only on
    train), which ``torch.utils.data.Subset`` cannot express.
    """

    def __init__(self, dataset: Dataset, indices: np.ndarray, transform: Any) -> None:
        self.dataset = dataset
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[int(self.indices[index])]
        return self.transform(image), label


def image_loader(
    dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool | None, shuffle: bool
) -> DataLoader:
    """A loader with worker processes kept alive between epochs; pins memory when on CUDA."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        **shuffling(dataset, shuffle),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
    )


def class_folders(split_dir: Path) -> list[str]:
    """Class names of an ImageFolder split, in the order torchvision numbers them."""
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())


class ImageFolderDataModule(SplitLoaders):
    """ImageNet (or any ``{data_dir}/{train,val}/<class>/<image>`` tree) as 3xHxW images.

    ImageNet's test labels are not public, so the official ``val/`` images are the test split
    here, and model selection ("val") uses a seeded holdout of ``val_fraction`` of ``train/``
    (1%, ~12.8k ImageNet images, as the ViT paper's minival). The holdout depends only on
    ``split_seed``. Transforms are timm's standard ones (``create_transform``): RandomResizedCrop,
    flip and colour jitter for training; resize to ``size / crop_pct`` and center crop for
    evaluation. Their size, interpolation, mean and std come from ``timm_model``'s pretrained
    config, or are timm's ImageNet defaults (bicubic, ImageNet mean/std) at ``image_size``.

    ``num_classes`` is the number of class folders; a configured value is checked against it.
    The folder layout is checked when the module is built, before any model, so a wrong path
    fails in seconds; the images are listed in ``setup``.
    """

    metrics = ("accuracy",)

    inputs = "images"  # what its batches hold; train.py checks that model and data agree
    # The settings that choose each split's samples (test: the val/ folder).
    split_settings = {"val": ("split_seed", "val_fraction"), "test": ()}

    def __init__(
        self,
        data_dir: str = "./data/imagenet",
        timm_model: str | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        in_chans: int = 3,
        val_fraction: float = 0.01,
        split_seed: int = 0,
        batch_size: int = 128,
        # JPEG decoding and RandomResizedCrop cost ~1 ms per image per core: 8 workers keep up
        # with a ViT-S on one GPU. Lower it when several GPUs share few cores.
        num_workers: int = 8,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if in_chans != 3:
            raise ConfigError(f"Images load as RGB (3 channels); got data.in_chans={in_chans}.")
        val_fraction = split_fraction("data.val_fraction", val_fraction)
        if timm_model is None:
            size = image_size or DEFAULT_IMAGE_SIZE
            self.data_config = resolve_data_config({"input_size": (3, size, size)})
        else:
            self.data_config = timm_data_config(timm_model, image_size)
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.classes = self.check_layout()
        if num_classes is not None and num_classes != len(self.classes):
            raise ConfigError(
                f"{self.data_dir} has {len(self.classes)} class folders but "
                f"data.num_classes={num_classes}; set data.num_classes={len(self.classes)}."
            )
        self.num_classes = len(self.classes)
        self.image_size = self.data_config["input_size"][-1]
        self.in_chans = in_chans
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.splits: dict[str, Dataset] = {}

    def check_layout(self) -> list[str]:
        """The class names, after checking that train/ and val/ hold the same class folders."""
        layout = f"{self.data_dir}/train/<class>/*.JPEG and {self.data_dir}/val/<class>/*.JPEG"
        if not self.data_dir.is_dir():
            raise ConfigError(f"data.data_dir={self.data_dir} does not exist; expected {layout}.")
        classes = {}
        for split in ("train", "val"):
            split_dir = self.data_dir / split
            if not split_dir.is_dir():
                raise ConfigError(f"{split_dir} does not exist; expected {layout}.")
            classes[split] = class_folders(split_dir)
            if not classes[split]:
                # ImageNet's validation archive unpacks flat, without class folders.
                raise ConfigError(
                    f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>. "
                    "ImageNet's val archive unpacks flat: sort it into class folders first "
                    "(e.g. with the valprep.sh script)."
                )
        if classes["train"] != classes["val"]:
            missing = sorted(set(classes["train"]) - set(classes["val"]))
            extra = sorted(set(classes["val"]) - set(classes["train"]))
            raise ConfigError(
                f"{self.data_dir}/val must have the same class folders as train/; "
                f"missing in val/: {missing[:5] or 'none'}, not in train/: {extra[:5] or 'none'}."
            )
        return classes["train"]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_tf = create_transform(**self.data_config, is_training=True)
        eval_tf = create_transform(**self.data_config, is_training=False)
        train_images = self.image_folder("train")
        val_size = round(self.val_fraction * len(train_images))
        train, val = holdout_indices(len(train_images), val_size, self.split_seed,
                                     setting=f"data.val_fraction (now {self.val_fraction})")
        self.splits = {
            "train": TransformedSubset(train_images, train, train_tf),
            "val": TransformedSubset(train_images, val, eval_tf),
            "test": self.image_folder("val", transform=eval_tf),
        }

    def sample_ids(self, split: str) -> set[tuple[str, int]]:
        """Which images ``split`` holds (after ``setup``)."""
        return holdout_sample_ids(self.splits, split)

    def image_folder(self, split: str, transform: Any = None) -> ImageFolder:
        try:
            return ImageFolder(self.data_dir / split, transform=transform, loader=load_image)
        except FileNotFoundError as error:  # a class folder without images
            raise ConfigError(f"{self.data_dir / split}: {error}") from None

    def loader(self, split: str) -> DataLoader:
        return image_loader(
            self.splits[split], self.batch_size, self.num_workers, self.pin_memory,
            shuffle=split == "train",
        )
