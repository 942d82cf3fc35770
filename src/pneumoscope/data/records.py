"""What a dataset source reads into: one :class:`SourceRow` per image file, the files left out
on purpose (:class:`Excluded`), and the age rules every reader shares.

These types sit below the layout readers (``data/layouts``), the cache and the data report,
so each of them can import them without importing another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AGE_GROUPS = ("child", "adult", "")
ADULT_AGE = 18.0  # years; younger is "child"
MAX_AGE = 120.0  # older is a typing error (the RSNA set has a few ages such as 148)


@dataclass
class SourceRow:
    path: str
    label: int  # 1 PNEUMONIA, 0 NORMAL
    split: str  # "train", "val", "test" or "" when the source gives none
    patient: str  # unique within its source only (grouping prefixes the source name)
    source: str  # the source name
    age_group: str = ""  # "child", "adult" or "" (unknown)
    age: float | None = None  # years
    sex: str = ""  # "M", "F" or ""
    view: str = ""  # e.g. "PA", "AP" or ""


@dataclass
class Excluded:
    """A file left out on purpose by a label policy or a bad listing (not a read error)."""

    path: str
    source: str
    reason: str


@dataclass
class SourceRead:
    rows: list[SourceRow]
    excluded: list[Excluded]
    layout: str  # the layout actually read
    notes: list[str] = field(default_factory=list)  # warnings worth showing to the user


def age_group_of(age: float | None, default: str = "") -> str:
    """Adult from 18 years, child below; ``default`` when the age is unknown."""
    if age is None:
        return default
    return "adult" if age >= ADULT_AGE else "child"
