"""`pneumoscope data prepare`: scan a source, split it without patient leakage, build the cache."""

from __future__ import annotations

from pathlib import Path

from .cache import PrepareResult, build_cache
from .errors import UserError
from .preprocess import PreprocessConfig
from .sources import scan_class_folders
from .splits import assign_splits


def prepare(
    source: str | Path,
    out: str | Path,
    cfg: PreprocessConfig,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareResult:
    if not 0.0 < val_fraction < 0.5:
        raise UserError(f"--val-fraction must be between 0 and 0.5, got {val_fraction}")
    if cfg.img_size < 32 or cfg.img_size > 1024:
        raise UserError(f"--img-size must be between 32 and 1024, got {cfg.img_size}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.resolve() == Path(source).expanduser().resolve():
        raise UserError("--out must differ from --source (the source is never modified)")
    rows = scan_class_folders(source)
    try:
        splits, note = assign_splits(
            [r.split for r in rows],
            [r.label for r in rows],
            [r.patient for r in rows],
            val_fraction,
            seed,
        )
    except ValueError as exc:
        raise UserError(f"cannot split {source}: {exc}") from None
    for r, s in zip(rows, splits, strict=True):
        r.split = s
    return build_cache(rows, out, cfg, note, workers=workers, progress=progress)
