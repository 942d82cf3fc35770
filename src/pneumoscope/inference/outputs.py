"""Where `predict` writes its rows: a CSV file, or a Parquet file when OUT ends in .parquet.

Both hold the same columns (``predict.CSV_COLUMNS``, plus ``heatmap`` with Grad-CAM) in
input order, whichever engine computed them. The CSV is the one `predict` has always
written (fixed decimals, empty cells for missing values), streamed and flushed batch by
batch. The Parquet file keeps the values typed (probability, threshold and ood_score as
float64, ood as a nullable boolean, the rest strings, missing values null); it is written
in row groups to ``.OUT.partial`` and renamed to OUT when complete, so a Parquet file at
OUT is always whole. Parquet needs pyarrow (installed with ``pneumoscope[ray]``).
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator
from pathlib import Path

from pneumoscope.core.errors import UserError

ROW_GROUP = 4096  # rows per Parquet row group
FLOAT_COLUMNS = ("probability", "threshold", "ood_score", "adult_probability")


def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".parquet"


class CsvRows:
    """Rows as `predict`'s CSV lines; ``flush`` makes the lines so far visible."""

    def __init__(self, path: Path, columns: list[str]):
        self._fh = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close)
        self._writer = csv.writer(self._fh)
        self._writer.writerow(columns)
        self._heat = "heatmap" in columns

    def write(self, row) -> None:
        self._writer.writerow(row.csv_cells(self._heat))

    def flush(self) -> None:
        self._fh.flush()

    def close(self, complete: bool = True) -> None:
        self._fh.close()


class ParquetRows:
    """Rows as typed Parquet columns, written in row groups; the file appears when closed."""

    def __init__(self, path: Path, columns: list[str]):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(
                f"writing {path.name} needs pyarrow: pip install pyarrow (it comes with "
                "'pneumoscope[ray]'), or give an --out ending in .csv"
            ) from None
        self._pa, self._path, self._columns = pa, path, columns
        self._tmp = path.with_name(f".{path.name}.partial")
        types = {c: pa.float64() for c in FLOAT_COLUMNS} | {"ood": pa.bool_()}
        self._schema = pa.schema([(c, types.get(c, pa.string())) for c in columns])
        self._writer = pq.ParquetWriter(self._tmp, self._schema)
        self._buffer: dict[str, list] = {c: [] for c in columns}

    def write(self, row) -> None:
        for c in self._columns:
            self._buffer[c].append(getattr(row, c))

    def flush(self, force: bool = False) -> None:
        n = len(self._buffer[self._columns[0]])
        if n and (force or n >= ROW_GROUP):
            table = self._pa.Table.from_pydict(self._buffer, schema=self._schema)
            self._writer.write_table(table)
            self._buffer = {c: [] for c in self._columns}

    def close(self, complete: bool = True) -> None:
        if complete:
            self.flush(force=True)
        self._writer.close()
        if complete:
            os.replace(self._tmp, self._path)
        else:
            self._tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_rows(path: str | Path, columns: list[str]) -> Iterator[CsvRows | ParquetRows]:
    """A writer of `predict` rows to ``path`` (Parquet for .parquet, else CSV)."""
    path = Path(path)
    writer = (ParquetRows if is_parquet(path) else CsvRows)(path, columns)
    try:
        yield writer
    except BaseException:
        writer.close(complete=False)
        raise
    writer.close()
