"""Batches from the memory-mapped cache for training and evaluation.

A batch is gathered by indexing the uint8 array with a sorted index vector, so
an epoch costs a few memcpy calls instead of one JPEG decode per image.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .cache import Cache


class CacheBatches(Dataset):
    """Map an index array to (uint8 images (B,1,S,S), float labels (B,))."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels.astype(np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.argsort(idx)  # sorted reads are sequential in the memmap
        sidx = idx[order]
        x = np.empty((len(idx), 1, *self.images.shape[1:]), dtype=np.uint8)
        x[order, 0] = self.images[sidx]
        return torch.from_numpy(x), torch.from_numpy(self.labels[idx])


class IndexBatchSampler(Sampler[np.ndarray]):
    """Yield index arrays: shuffled each epoch, or drawn with class-balancing weights.

    The epoch number is mixed into the seed, so a resumed run sees the same
    order an uninterrupted run would have seen.
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        weights: np.ndarray | None = None,
        drop_last: bool = False,
    ):
        self.rows = np.asarray(rows)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.weights = None if weights is None else weights / weights.sum()
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        n = len(self.rows)
        if self.weights is not None:
            order = rng.choice(n, size=n, replace=True, p=self.weights)
        elif self.shuffle:
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chunk = order[start : start + self.batch_size]
            if len(chunk):
                yield self.rows[chunk]


def make_loader(
    cache: Cache,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    balance: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over one split; ``balance`` draws both classes equally often."""
    sub = cache.split(split)
    rows = sub["index"].to_numpy()
    labels_all = cache.manifest["label"].to_numpy()
    weights = None
    if balance:
        y = labels_all[rows]
        freq = np.bincount(y, minlength=2).astype(np.float64)
        weights = 1.0 / freq[y]
    sampler = IndexBatchSampler(rows, batch_size, shuffle, seed, weights, drop_last)
    ds = CacheBatches(cache.images, labels_all)
    return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=0)
