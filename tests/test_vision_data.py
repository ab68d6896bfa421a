"""CIFAR and class-folder image data, read from real on-disk formats written here; no network."""

from __future__ import annotations

import pickle
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_train
from data_files import (
    CLASSES,
    FLAT_COLOUR,
    KNOWN_PIXEL,
    NUM_TEST,
    PER_BATCH,
    trust_written_files,
    write_cifar10,
    write_cifar100,
    write_image_tree,
)
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg
from torchvision.datasets import CIFAR10, CIFAR100

from aligned.config import ConfigError
from aligned.data import cifar
from aligned.data.cifar import CIFARDataModule
from aligned.data.imagenet import ImageFolderDataModule
from aligned.training.fit import train


@pytest.fixture
def cifar10_dir(tmp_path, monkeypatch):
    written = write_cifar10(tmp_path / "cifar")
    trust_written_files(monkeypatch, CIFAR10, tmp_path / "cifar" / "cifar-10-batches-py")
    return tmp_path / "cifar", written


def cifar10(data_dir: Path, **kwargs) -> CIFARDataModule:
    options = {"download": False, "val_size": 10, "batch_size": 8, "num_workers": 0} | kwargs
    module = CIFARDataModule(data_dir=str(data_dir), **options)
    module.setup()
    return module


def unnormalise(images: torch.Tensor, config: dict) -> torch.Tensor:
    """Back to [0, 1] pixel values, (..., 3, H, W)."""
    mean, std = torch.tensor(config["mean"]), torch.tensor(config["std"])
    return images * std[:, None, None] + mean[:, None, None]


# --- CIFAR ------------------------------------------------------------------------------------


def test_written_files_have_cifars_python2_bytes_keys(cifar10_dir):
    root, _ = cifar10_dir
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        record = pickle.load(handle, encoding="bytes")  # as https://www.cs.toronto.edu/~kriz/cifar.html
    assert set(record) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert record[b"data"].shape == (PER_BATCH, 3072) and record[b"data"].dtype == np.uint8


def test_cifar10_images_decode_to_the_pixels_written(cifar10_dir):
    root, written = cifar10_dir
    module = cifar10(root)
    assert (module.num_classes, module.image_size, module.in_chans) == (10, 32, 3)
    assert {name: len(split) for name, split in module.splits.items()} == {
        "train": 50, "val": 10, "test": NUM_TEST
    }
    images, labels = next(iter(module.test_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == written["test_labels"][:8].tolist()
    pixels = unnormalise(images, module.data_config) * 255  # (8, 3, 32, 32)
    expected = torch.from_numpy(written["test"][:8].reshape(8, 3, 32, 32)).float()
    torch.testing.assert_close(pixels, expected, atol=1e-3, rtol=0)
    channel, row, col, value = KNOWN_PIXEL
    assert pixels[0, channel, row, col].item() == pytest.approx(value, abs=1e-3)
    # The holdout comes from the training images, each with its own label.
    index = int(module.splits["val"].indices[0])
    image, label = module.splits["val"][0]
    assert label == written["train_labels"][index]
    torch.testing.assert_close(
        unnormalise(image, module.data_config) * 255,
        torch.from_numpy(written["train"][index].reshape(3, 32, 32)).float(), atol=1e-3, rtol=0,
    )


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    fine = write_cifar100(tmp_path)
    trust_written_files(monkeypatch, CIFAR100, tmp_path / "cifar-100-python")
    module = CIFARDataModule(variant="cifar100", data_dir=str(tmp_path), download=False,
                             val_size=50, num_workers=0, batch_size=100)
    module.setup()
    assert module.num_classes == 100
    assert {name: len(split) for name, split in module.splits.items()} == {
        "train": 150, "val": 50, "test": 100
    }
    images, labels = next(iter(module.test_dataloader()))
    assert images.shape == (100, 3, 32, 32)
    assert labels.tolist() == fine.tolist() and labels.max() == 99
    channel, row, col, value = KNOWN_PIXEL
    assert unnormalise(images[0], module.data_config)[channel, row, col] * 255 == pytest.approx(
        value, abs=1e-3
    )


def test_holdout_is_disjoint_and_depends_only_on_split_seed(cifar10_dir):
    root, _ = cifar10_dir
    first, second, other = cifar10(root), cifar10(root), cifar10(root, split_seed=1)
    train, val = first.splits["train"].indices, first.splits["val"].indices
    assert len(val) == 10 and sorted([*train, *val]) == list(range(60))
    np.testing.assert_array_equal(val, second.splits["val"].indices)
    assert not np.array_equal(val, other.splits["val"].indices)


def test_augmentation_is_applied_to_train_only(cifar10_dir):
    root, _ = cifar10_dir
    module = cifar10(root)
    torch.manual_seed(0)
    train_views = [module.splits["train"][0][0] for _ in range(8)]
    assert any(not torch.equal(train_views[0], view) for view in train_views[1:])
    for split in ("val", "test"):
        views = [module.splits[split][0][0] for _ in range(3)]
        assert all(torch.equal(views[0], view) for view in views[1:])


# DeiT-S uses ImageNet's mean and std; this ViT-S uses 0.5 for both.
@pytest.mark.parametrize(
    "timm_model", ["deit_small_patch16_224", "vit_small_patch16_224.augreg_in21k"]
)
def test_timm_model_sets_input_size_and_normalisation(cifar10_dir, timm_model):
    root, written = cifar10_dir
    pretrained = get_pretrained_cfg(timm_model)
    module = cifar10(root, timm_model=timm_model, image_size=224)
    assert module.image_size == 224
    config = module.data_config
    assert (config["mean"], config["std"]) == (pretrained.mean, pretrained.std)
    assert config["interpolation"] == pretrained.interpolation
    images, _ = next(iter(module.test_dataloader()))
    assert images.shape == (8, 3, 224, 224)
    assert module.splits["train"][0][0].shape == (3, 224, 224)
    # The flat-colour test image stays flat after resizing; normalised with the model's stats.
    flat = torch.tensor(FLAT_COLOUR, dtype=torch.float32) / 255
    expected = (flat - torch.tensor(pretrained.mean)) / torch.tensor(pretrained.std)
    torch.testing.assert_close(images[1].mean(dim=(1, 2)), expected, atol=1e-3, rtol=0)


def test_other_image_sizes_resize_then_crop_with_scaled_padding(cifar10_dir):
    root, _ = cifar10_dir
    module = cifar10(root, image_size=48)
    assert module.splits["train"][0][0].shape == module.splits["test"][0][0].shape == (3, 48, 48)
    crop = next(step for step in module.splits["train"].transform.transforms
                if type(step).__name__ == "RandomCrop")
    assert crop.padding == 6  # 4 pixels at 32, scaled


def test_timm_model_with_another_image_size_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="expects 224x224 inputs.*set data.image_size=224"):
        CIFARDataModule(data_dir=str(tmp_path), timm_model="deit_small_patch16_224", image_size=32)
    with pytest.raises(ConfigError, match="not a timm model"):
        CIFARDataModule(data_dir=str(tmp_path), timm_model="no_such_model", image_size=32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 100}, "CIFAR-10 has 10 classes"),
        ({"variant": "cifar100", "num_classes": 10}, "CIFAR-100 has 100 classes"),
        ({"in_chans": 1}, "3 channels"),
        ({"variant": "cifar1000"}, "data.variant must be one of"),
    ],
)
def test_wrong_data_facts_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CIFARDataModule(data_dir=str(tmp_path), **kwargs)


def test_missing_files_are_one_error_naming_the_absolute_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = CIFARDataModule(data_dir="nowhere", download=False)
    with pytest.raises(ConfigError) as raised:
        module.setup()
    message = str(raised.value)
    assert f"not found in {tmp_path / 'nowhere'} " in message
    assert f"{tmp_path / 'nowhere' / 'cifar-10-batches-py' / 'data_batch_1'} exists" in message
    assert "cifar-10-python.tar.gz" in message


def test_pointing_at_the_batches_folder_itself_says_which_folder_to_use(cifar10_dir):
    root, _ = cifar10_dir
    with pytest.raises(ConfigError, match=f"folder above cifar-10-batches-py/: {root}"):
        cifar10(root / "cifar-10-batches-py")


def test_failed_download_is_one_error_without_network(tmp_path, monkeypatch):
    timeouts = []

    def offline(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    module = CIFARDataModule(data_dir=str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="download failed: .*Name or service") as raised:
        module.prepare_data()
    assert str(tmp_path / "data") in str(raised.value)
    assert raised.value.__suppress_context__  # no urllib traceback chained to it
    assert timeouts == [cifar.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() is None


def test_present_files_are_not_downloaded_again(cifar10_dir, monkeypatch):
    root, _ = cifar10_dir
    monkeypatch.setattr(cifar, "download_and_extract_archive", pytest.fail)
    CIFARDataModule(data_dir=str(root)).prepare_data()


def test_corrupted_files_fail_the_md5_check(cifar10_dir):
    root, _ = cifar10_dir
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ConfigError, match="corrupted"):
        cifar10(root)


# --- Class folders (ImageNet layout) ----------------------------------------------------------


def image_folder(data_dir: Path, **kwargs) -> ImageFolderDataModule:
    options = {"image_size": 32, "val_fraction": 0.25, "batch_size": 4, "num_workers": 0}
    module = ImageFolderDataModule(data_dir=str(data_dir), **(options | kwargs))
    module.setup()
    return module


def test_image_folder_splits_classes_and_batches(tmp_path):
    module = image_folder(write_image_tree(tmp_path))
    assert (module.num_classes, module.classes, module.image_size) == (3, list(CLASSES), 32)
    assert {name: len(split) for name, split in module.splits.items()} == {
        "train": 9, "val": 3, "test": 6
    }
    assert [label for _, label in module.splits["test"].samples] == [0, 0, 1, 1, 2, 2]
    for split in ("train", "val", "test"):
        images, labels = next(iter(module.loader(split)))
        assert images.shape == (min(4, len(module.splits[split])), 3, 32, 32)
        assert images.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 3
    other = image_folder(tmp_path, split_seed=1)
    again = image_folder(tmp_path)
    np.testing.assert_array_equal(again.splits["val"].indices, module.splits["val"].indices)
    assert not np.array_equal(other.splits["val"].indices, module.splits["val"].indices)


def test_image_folder_uses_timms_transforms_for_the_model(tmp_path):
    module = image_folder(write_image_tree(tmp_path), timm_model="deit_small_patch16_224",
                          image_size=None)
    expected = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(
        "deit_small_patch16_224").to_dict())
    assert module.data_config == expected and module.image_size == 224
    images, _ = next(iter(module.train_dataloader()))
    assert images.shape == (4, 3, 224, 224)
    assert module.splits["test"][0][0].shape == (3, 224, 224)
    train_steps = [type(step).__name__ for step in module.splits["train"].transform.transforms]
    assert train_steps[0] == "RandomResizedCropAndInterpolation"


def test_an_unreadable_image_is_named_in_one_line(tmp_path):
    root = write_image_tree(tmp_path)
    broken = root / "val" / "dog" / "broken.png"
    broken.write_text("not an image")
    module = image_folder(root)
    with pytest.raises(ConfigError, match=f"{broken} is not a readable image"):
        list(module.loader("test"))


def test_a_holdout_of_no_image_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="got 0. Change data.val_fraction .now 0.01."):
        image_folder(write_image_tree(tmp_path), val_fraction=0.01)


def test_class_count_must_match_the_folders(tmp_path):
    with pytest.raises(ConfigError, match="has 3 class folders but data.num_classes=1000; "
                                          "set data.num_classes=3"):
        ImageFolderDataModule(data_dir=str(write_image_tree(tmp_path)), num_classes=1000)


def remove(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def flatten_val(root: Path) -> None:
    for image in sorted((root / "val").rglob("*.png")):
        image.rename(root / "val" / f"{image.parent.name}_{image.name}")
    for name in CLASSES:
        (root / "val" / name).rmdir()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: remove(root), r"data.data_dir=.*tree does not exist"),
        (lambda root: remove(root / "train"), r"tree/train does not exist"),
        (lambda root: remove(root / "val"), r"tree/val does not exist"),
        (flatten_val, r"tree/val has no class folders.*unpacks flat"),
        (lambda root: remove(root / "val" / "fox"), r"missing in val/: \['fox'\]"),
        (lambda root: (root / "val" / "owl").mkdir(), r"not in train/: \['owl'\]"),
        (lambda root: [p.unlink() for p in (root / "train" / "dog").iterdir()],
         r"tree/train: Found no valid file for the classes dog"),
    ],
    ids=["no-data-dir", "no-train", "no-val", "flat-val", "class-missing", "extra-class",
         "no-images"],
)
def test_wrong_layouts_are_one_clear_error(tmp_path, damage, message):
    root = write_image_tree(tmp_path / "tree")
    damage(root)
    with pytest.raises(ConfigError, match=message):
        image_folder(root)


# --- The real configs, end to end -------------------------------------------------------------


def test_train_on_cifar10_config(cifar10_dir, tmp_path):
    root, _ = cifar10_dir
    data = [f"data.data_dir={root}", "+data.val_size=10", "data.batch_size=8",
            "data.num_workers=0"]
    cfg = compose_train([*TINY, "data=cifar10", *data], tmp_path / "run")
    results = train(cfg)
    assert results["data"] == "cifar10" and results["num_layers"] == 2
    assert all(0.0 <= a <= 1.0 for a in results["layer_accuracy"]["test"])


def test_train_on_imagenet_config_with_a_class_folder_tree(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    data = [f"data.data_dir={root}", "data.num_classes=3", "data.image_size=32",
            "+data.val_fraction=0.25", "data.batch_size=4", "data.num_workers=0"]
    cfg = compose_train([*TINY, "data=imagenet", *data], tmp_path / "run")
    results = train(cfg)
    assert results["data"] == "imagenet" and len(results["layer_accuracy"]["val"]) == 2


def test_imagenet_config_on_a_smaller_tree_says_which_class_count_to_set(tmp_path):
    root = write_image_tree(tmp_path / "tree")
    cfg = compose_train([*TINY, "data=imagenet", f"data.data_dir={root}"], tmp_path / "run")
    with pytest.raises(ConfigError, match="set data.num_classes=3"):
        train(cfg)


def test_missing_cifar_stops_training_with_the_data_error(tmp_path):
    missing = tmp_path / "nowhere"
    cfg = compose_train(
        [*TINY, "data=cifar10", f"data.data_dir={missing}", "+data.download=false"],
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match=f"CIFAR-10 not found in {missing} "):
        train(cfg)
