"""Batches from the memory-mapped cache for training and evaluation.

A batch is gathered by indexing the uint8 array with a sorted index vector, so
an epoch costs a few memcpy calls instead of one JPEG decode per image.

Under distributed training (DDP) each process takes every world_size-th batch of the
same seeded order, so the processes see disjoint batches and together one epoch; a
training epoch has the same number of batches on every process. Evaluation splits the
images across processes, each image exactly once, in equal batch counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pneumoscope.data.cache import Cache


class CacheBatches(Dataset):
    """Map an index array to (uint8 images (B,1,S,S), float labels (B,))."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels.astype(np.float32)

    def __getstate__(self) -> dict:
        # Spawned processes (ddp_spawn, worker processes) reopen the memory map by name
        # instead of receiving a pickled copy of every image.
        state = dict(self.__dict__)
        name = getattr(self.images, "filename", None)
        if name:
            state["images"] = str(name)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["images"], str):
            state["images"] = np.load(state["images"], mmap_mode="r")
        self.__dict__.update(state)

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

    def _n_batches(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        _, world = process_rank()
        total = self._n_batches()
        if world == 1:
            return total
        if self.drop_last:  # training: every world_size-th batch, the same count everywhere
            return total // world
        return self._eval_batches(world)

    def _eval_batches(self, world: int) -> int:
        """Evaluation under DDP: every image once, and the same number of batches on every
        process (a process with fewer batches would leave the others waiting)."""
        n = len(self.rows)
        per_rank = -(-n // world)
        return max(1, min(-(-per_rank // self.batch_size), n // world))

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
        rank, world = process_rank()
        if world > 1 and not self.drop_last:
            for chunk in np.array_split(order[rank::world], self._eval_batches(world)):
                yield self.rows[chunk]
            return
        batches = range(rank, self._n_batches(), world)[: len(self)]
        for b in batches:
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            if len(chunk):
                yield self.rows[chunk]


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process in a running torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def draw_weights(
    labels: np.ndarray, groups: np.ndarray | None = None, classes: bool = False
) -> np.ndarray | None:
    """Sampling weights (one per row, unnormalised) that draw each cell equally often, or
    None for a plain shuffle. ``classes``: the two classes; ``groups`` (one value per row):
    each group; both: each (group, class) cell present. A group holding one class only
    then gives that cell a whole share, so the classes are balanced overall only where
    every group holds both."""
    labels = np.asarray(labels)
    if groups is None:
        if not classes:
            return None
        freq = np.bincount(labels, minlength=2).astype(np.float64)
        return 1.0 / freq[labels]
    keys = np.asarray(groups).astype(str)
    if classes:
        keys = np.char.add(np.char.add(keys, "\0"), labels.astype(str))
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse.ravel()].astype(np.float64)


def make_loader(
    cache: Cache,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    balance: bool = False,
    drop_last: bool = False,
    groups: np.ndarray | None = None,
) -> DataLoader:
    """A DataLoader over one split; ``balance`` draws both classes equally often,
    ``groups`` (one value per row of the split, in its order) each group equally often,
    both together each (group, class) cell present (:func:`draw_weights`)."""
    sub = cache.split(split)
    rows = sub["index"].to_numpy()
    labels_all = cache.manifest["label"].to_numpy()
    if groups is not None and len(groups) != len(rows):
        raise ValueError(f"{len(groups)} groups for the {len(rows)} rows of split '{split}'")
    weights = draw_weights(labels_all[rows], groups, classes=balance)
    sampler = IndexBatchSampler(rows, batch_size, shuffle, seed, weights, drop_last)
    ds = CacheBatches(cache.images, labels_all)
    return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=0)
