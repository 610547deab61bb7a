"""The train / val / test DataLoaders every ADE DataModule shares (CARD's and the critique's).

A DataModule mixes in ``SplitLoaders`` and says what a split is (``_split_dataset``) and whether it
has rows (``_has_split``); an empty val split falls back to train and an empty test split to val,
so a tiny dataset still trains and reports. The train loader shuffles with a seeded generator.
"""

from __future__ import annotations

from pathlib import Path

from torch import Generator
from torch.utils.data import DataLoader, Dataset


def run_paths(data: str, out_dir: str | None, cache_dir: str | None) -> tuple[Path, Path | None, Path | None]:
    """(dataset dir, run dir, feature cache dir) of a DataModule: the cache defaults to OUT/features,
    none without an OUT."""
    out = Path(out_dir) if out_dir else None
    return Path(data), out, Path(cache_dir) if cache_dir else (out / "features" if out else None)


def require_dataset(data_dir: Path) -> None:
    """A trace dataset must be a directory (checked in ``setup``, where the data is read)."""
    if not Path(data_dir).is_dir():
        from ade_runtime.errors import TraceError

        raise TraceError(f"trace dataset {data_dir} is not a directory; pass --data DIR of *.jsonl shards")


class SplitLoaders:
    """Mixin for a LightningDataModule with ``batch_size``, ``num_workers`` and ``seed`` attributes."""

    batch_size: int
    num_workers: int
    seed: int

    def _split_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def _has_split(self, split: str) -> bool:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._split_dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=Generator().manual_seed(self.seed) if shuffle else None,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if self._has_split("val") else "train", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self._has_split("test") else "val", shuffle=False)
