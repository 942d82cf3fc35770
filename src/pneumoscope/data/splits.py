"""Splits that never cut a group (a patient, or an image and its copies).

Two strategies:

* ``given`` keeps the splits the sources ship. A group whose members the sources put
  in different splits (a patient in train and test, or an image in one set's train and
  its copy in another set's test) moves whole, by default to the most test-like of its
  splits (test > val > train), and every move is reported. Rows of sources without
  split folders are split 80/20 into train and test by group. The Kaggle pediatric set
  ships a 16-image ``val`` folder, too small to select a checkpoint or a threshold on:
  a given val smaller than ``MIN_GIVEN_VAL`` rejoins train, and validation is then
  carved out of train, grouped and stratified by label, as the Keras design did (its
  validation kept the train class ratio).
* ``regroup`` ignores the given splits and makes a fresh split of the groups with the
  given fractions and seed, stratified by label (and source, with several sources), so
  validation and test keep the train class ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_GIVEN_VAL = 100  # a given val split smaller than this is folded back into train
SPLITS = ("train", "val", "test")
SIDE = {"train": 0, "val": 1, "test": 2}  # "test side" order for straddling groups
STRADDLE_RULES = ("test-side", "first-source")
UNSPLIT_TEST_FRACTION = 0.2


def grouped_val_split(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of rows chosen for validation: whole groups, stratified by label,
    ``val_fraction`` of the rows (``stratified_group_split``)."""
    if not 0.0 < val_fraction < 0.5:
        raise ValueError("val_fraction must be in (0, 0.5)")
    n_groups = len(np.unique(groups))
    if n_groups < max(2, round(1.0 / val_fraction)):
        raise ValueError(
            f"only {n_groups} patients: too few for a {val_fraction:.0%} validation split"
        )
    part = stratified_group_split(
        np.asarray(labels), np.asarray(groups), (1.0 - val_fraction, val_fraction), seed
    )
    return part == 1


def assign_splits(
    splits: list[str],
    labels: list[int],
    patients: list[str],
    val_fraction: float,
    seed: int,
    grouped_by: str = "patient and duplicate",
) -> tuple[list[str], str]:
    """Final split per row for the ``given`` strategy, and a note on what was done.

    ``patients`` are the group ids. Groups are assumed not to straddle the given splits
    (``resolve_given`` makes sure of it first):

    - rows without a split folder: test and val are both carved out (grouped, stratified);
    - a given val split with at least MIN_GIVEN_VAL images is kept;
    - otherwise val rows rejoin train and validation is carved from train.
    """
    out = list(splits)
    labels_a = np.asarray(labels)
    patients_a = np.asarray(patients, dtype=object)
    notes: list[str] = []
    unsplit = np.array([s == "" for s in out])
    if unsplit.any():
        # No split folders: carve a test split the same way, then validation from the rest.
        idx = np.flatnonzero(unsplit)
        test_mask = grouped_val_split(labels_a[idx], patients_a[idx], UNSPLIT_TEST_FRACTION, seed)
        for i in idx[test_mask]:
            out[i] = "test"
        for i in idx[~test_mask]:
            out[i] = "train"
        what = "no split folders" if unsplit.all() else f"{len(idx)} images without a split"
        notes.append(f"{what}: test ({UNSPLIT_TEST_FRACTION:.0%}) carved out by {grouped_by}")
    n_val = sum(s == "val" for s in out)
    if 0 < n_val < MIN_GIVEN_VAL:
        out = ["train" if s == "val" else s for s in out]
        notes.append(f"given val split has {n_val} images (< {MIN_GIVEN_VAL}), folded into train")
        n_val = 0
    if n_val == 0:
        train_idx = np.array([i for i, s in enumerate(out) if s == "train"])
        if len(train_idx) == 0:
            raise ValueError("no training images")
        mask = grouped_val_split(labels_a[train_idx], patients_a[train_idx], val_fraction, seed)
        for i in train_idx[mask]:
            out[i] = "val"
        notes.append(
            f"validation = {val_fraction:.0%} of train, grouped by {grouped_by}, "
            "stratified by label"
        )
    else:
        notes.append("given val split kept")
    return out, "; ".join(notes)


@dataclass
class Move:
    """A group whose members the sources put in different splits, and where it went."""

    group: int  # the group's root row
    to: str
    n_from: dict[str, int] = field(default_factory=dict)  # given split -> images
    rows: list[int] = field(default_factory=list)  # the group's rows

    @property
    def n_moved(self) -> int:
        return sum(n for s, n in self.n_from.items() if s != self.to)


def resolve_given(
    given: list[str],
    groups: np.ndarray,
    source_rank: np.ndarray,
    rule: str = "test-side",
) -> tuple[list[str], list[Move]]:
    """Put every group whose given splits disagree in one split; return the moves.

    ``test-side``: the most test-like of the group's given splits (test > val > train).
    ``first-source``: the split that the group's members from the first-listed source
    (lowest ``source_rank`` with a given split) have; test-side among those if they
    disagree too. Rows with no given split ("") follow their group when it has one.
    """
    if rule not in STRADDLE_RULES:
        raise ValueError(f"unknown straddle rule {rule!r}")
    out = list(given)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(int(g), []).append(i)
    moves: list[Move] = []
    for g, rows in members.items():
        present = {given[i] for i in rows} - {""}
        if not present:
            continue
        if len(present) == 1 and all(given[i] for i in rows):
            continue
        if rule == "first-source" and len(present) > 1:
            ranked = [i for i in rows if given[i]]
            best = min(int(source_rank[i]) for i in ranked)
            present = {given[i] for i in ranked if source_rank[i] == best}
        to = max(present, key=SIDE.__getitem__)
        for i in rows:
            out[i] = to
        if len({given[i] for i in rows} - {""}) > 1:
            counts: dict[str, int] = {}
            for i in rows:
                counts[given[i] or "none"] = counts.get(given[i] or "none", 0) + 1
            moves.append(Move(g, to, counts, rows))
    return out, moves


def stratified_group_split(
    strata: np.ndarray, groups: np.ndarray, fractions: tuple[float, ...], seed: int
) -> np.ndarray:
    """Part index (0..len(fractions)-1) per row: whole groups, close to ``fractions`` in
    every stratum.

    Greedy: groups in random order (seeded), largest first, each to the part where it
    most reduces the squared shortfall from each stratum's target count (per-stratum
    relative, so a small class weighs as much as a large one).
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.min() < 0 or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError("fractions must be >= 0 and sum to 1")
    _, g_idx = np.unique(groups, return_inverse=True)
    s_vals, s_idx = np.unique(strata, return_inverse=True)
    counts = np.zeros((g_idx.max() + 1, len(s_vals)))
    np.add.at(counts, (g_idx, s_idx), 1)
    totals = counts.sum(axis=0)
    target = fr[:, None] * totals[None, :]
    have = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    weight = 1.0 / np.maximum(totals, 1.0)
    part_of_group = np.empty(len(counts), dtype=np.int64)
    for g in order:
        c = counts[g]
        gain = (((have - target) ** 2) - ((have + c - target) ** 2)) @ weight
        gain[fr == 0] = -np.inf
        best = np.flatnonzero(gain >= gain.max() - 1e-12)
        if len(best) > 1:  # tie: the part furthest below its target
            short = ((target - have) * weight).sum(axis=1)
            best = best[[int(np.argmax(short[best]))]]
        part_of_group[g] = best[0]
        have[best[0]] += c
    return part_of_group[g_idx]


def regroup_splits(
    labels: np.ndarray,
    sources: np.ndarray,
    groups: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
) -> tuple[list[str], str]:
    """A fresh train/val/test split of whole groups, stratified by label (x source)."""
    labels = np.asarray(labels)
    sources = np.asarray(sources, dtype=object)
    multi = len(set(sources)) > 1
    strata = np.array(
        [f"{s}|{y}" for s, y in zip(sources, labels, strict=True)] if multi else labels
    )
    n_groups = len(np.unique(groups))
    if n_groups < 10:
        raise ValueError(f"only {n_groups} groups: too few to split")
    part = stratified_group_split(strata, groups, tuple(fractions), seed)
    out = [SPLITS[p] for p in part]
    by = "label and source" if multi else "label"
    note = (
        "regrouped: train/val/test = "
        + "/".join(f"{f:.0%}" for f in fractions)
        + f" of groups (patients and duplicates), stratified by {by}, seed {seed}"
    )
    return out, note


def straddling_groups(splits: list[str] | np.ndarray, groups: np.ndarray | list) -> list:
    """Groups (any hashable ids) whose rows are in more than one split (must be empty)."""
    seen: dict = {}
    bad: set = set()
    for s, g in zip(splits, groups, strict=True):
        g = g.item() if isinstance(g, np.generic) else g
        if seen.setdefault(g, s) != s:
            bad.add(g)
    return sorted(bad)
