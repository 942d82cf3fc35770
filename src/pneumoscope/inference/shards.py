"""`predict --shard I/N`: one of N disjoint parts of the inputs, for batch systems without Ray.

Shards are numbered from 1 (``1/8`` ... ``8/8``, as a Slurm array ``--array=1-8`` or a
PBS/LSF job array numbers them). The inputs are listed exactly as an unsharded run lists
them (folder scans sorted by path, globs sorted, files and CSV lists in the order given),
and shard I takes the I-th of N consecutive blocks of that list, sizes differing by one
at most. So the N shards together are the whole list, each input in exactly one, and
their outputs, concatenated in shard order without the repeated header lines, hold the
unsharded run's rows in its order (a probability may differ in the sixth decimal, as the
images meet in other batches)::

    awk 'FNR > 1 || NR == 1' pred.{1..8}.csv > predictions.csv

(Parquet parts: ``pd.concat(pd.read_parquet(f"pred.{i}.parquet") for i in range(1, 9))``.)
Only shard 1 lists the files the folder scans left out (OUT.skipped.txt), so the lists
too add up to the whole run's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pneumoscope.core.errors import UserError

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def take(self, items: Sequence) -> list:
        """This shard's consecutive block of ``items``."""
        n = len(items)
        lo, hi = (self.index - 1) * n // self.count, self.index * n // self.count
        return list(items[lo:hi])

    @property
    def first(self) -> bool:
        return self.index == 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str | Shard | None) -> Shard | None:
    """``"I/N"`` (1 <= I <= N) as a Shard; None stays None; anything else is a UserError."""
    if spec is None or isinstance(spec, Shard):
        return spec
    m = _SPEC.fullmatch(str(spec))
    index, count = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not m or count < 1 or not 1 <= index <= count:
        raise UserError(
            f"--shard must be I/N with 1 <= I <= N (shards count from 1, e.g. 3/8), got '{spec}'"
        )
    return Shard(index, count)
