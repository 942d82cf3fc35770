"""Class-folder trees (``[train|val|test/]CLASS/...``), shared by the class-folders and the
Covid-19 & Pneumonia layouts: finding the split and class folders below wrapper folders,
listing their files, and saying clearly what is missing."""

from __future__ import annotations

from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.base import LABEL_FOLDERS, SPLIT_FOLDERS, describe, is_hidden

COVID_FOLDERS = ("covid19", "covid-19", "covid_19", "covid")
TREE_CLASSES = {**{k: k for k in LABEL_FOLDERS}, **{c: "covid19" for c in COVID_FOLDERS}}


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted (dot and ``__`` folders such as ``__MACOSX`` are not data)."""
    return sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith((".", "__")))


def class_dirs(folder: Path, classes: dict[str, str] | None = None) -> dict[str, Path]:
    """{class key: folder} for the class folders directly in ``folder`` (any case)."""
    classes = classes or TREE_CLASSES
    return {classes[c.name.lower()]: c for c in subdirs(folder) if c.name.lower() in classes}


def split_dirs(folder: Path) -> dict[str, Path]:
    """{split: folder} for the split folders directly in ``folder`` (any case)."""
    return {
        SPLIT_FOLDERS[c.name.lower()]: c for c in subdirs(folder) if c.name.lower() in SPLIT_FOLDERS
    }


def descend_single(root: Path) -> Path:
    """Skip wrapper folders (a zip's ``chest_xray/chest_xray/``, the covid set's ``Data/``):
    descend through single sub-folders until split or class folders appear."""
    for _ in range(3):
        if split_dirs(root) or class_dirs(root):
            return root
        below = subdirs(root)
        if len(below) != 1:
            return root
        root = below[0]
    return root


def tree_classes(path: Path) -> set[str]:
    """The class keys (``normal``, ``pneumonia``, ``covid19``) of the class folders in the
    tree at ``path`` (below wrapper and split folders); empty for a file."""
    if not path.is_dir():
        return set()
    root = descend_single(path)
    levels = list(split_dirs(root).values()) or [root]
    return set().union(*(class_dirs(d) for d in levels))


def walk_class_tree(
    root: Path, classes: dict[str, str]
) -> tuple[list[tuple[Path, str, str]], Path, list[str]]:
    """Every visible file under the class folders: (path, class key, split), the root
    actually used (after wrapper folders), and notes on folders that were not read.

    Every visible file is offered, whatever its extension: a stray non-image then shows
    up in rejected.csv with its reason instead of vanishing.
    """
    root = descend_single(root.resolve())
    splits = split_dirs(root)
    levels = sorted(splits.items()) if splits else [("", root)]
    out: list[tuple[Path, str, str]] = []
    notes: list[str] = []
    for split, sdir in levels:
        cdirs = class_dirs(sdir, classes)
        others = [c.name for c in subdirs(sdir) if c.name.lower() not in classes]
        if splits:
            others = [n for n in others if n.lower() not in SPLIT_FOLDERS]
        if others and cdirs:
            where = sdir.relative_to(root).as_posix() if sdir != root else "."
            notes.append(f"folders not read in {where}: {', '.join(others)} (not a class)")
        for key, cdir in sorted(cdirs.items()):
            files = sorted(p for p in cdir.rglob("*") if p.is_file() and not is_hidden(p, cdir))
            out += [(p, key, split) for p in files]
    return out, root, notes


def check_tree(root: Path, classes: dict[str, str], expected: str) -> Path:
    """The tree's top folder (below wrappers), or a UserError saying what was ``expected``."""
    if not root.exists():
        raise UserError(f"source folder not found: {root} (give the folder that holds {expected})")
    if not root.is_dir():
        raise UserError(f"source is not a folder: {root} (expected {expected})")
    top = descend_single(root.resolve())
    splits = split_dirs(top)
    if splits:
        if not any(class_dirs(d, classes) for d in splits.values()):
            raise UserError(
                f"no class folders in the split folders of {top}: expected "
                f"{'/'.join(sorted(splits))}/{expected}"
            )
    elif not class_dirs(top, classes):
        raise UserError(
            f"no class folders in {top}: expected {expected} (optionally inside train/ and "
            f"test/); found {describe(top)}"
        )
    return top
