"""A data module's three loaders from one ``loader(split)``: in every module here the train, val
and test loaders differ only in their split (its data, batch size and whether it shuffles)."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

SPLITS = ("train", "val", "test")


class SplitLoaders(L.LightningDataModule):
    """``LightningDataModule`` whose ``train/val/test_dataloader`` are ``loader(split)``."""

    def loader(self, split: str) -> DataLoader:
        raise NotImplementedError(f"{type(self).__name__} defines no loader(split)")

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
