"""Split rows so that no patient straddles train and validation.

The Kaggle pediatric set ships a 16-image ``val`` folder, too small to select a
checkpoint or a threshold on; we then carve validation out of train, grouped by
patient and stratified by label, and keep the given test split untouched.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

MIN_GIVEN_VAL = 100  # a given val split smaller than this is folded back into train


def grouped_val_split(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of rows chosen for validation: stratified by label, grouped by patient."""
    if not 0.0 < val_fraction < 0.5:
        raise ValueError("val_fraction must be in (0, 0.5)")
    n_splits = max(2, round(1.0 / val_fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(
            f"only {n_groups} patients: too few for a {val_fraction:.0%} validation split"
        )
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(sgkf.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[val_idx] = True
    return mask


def assign_splits(
    splits: list[str], labels: list[int], patients: list[str], val_fraction: float, seed: int
) -> tuple[list[str], str]:
    """Final split per row and a one-line note on what was done.

    - rows without a split folder: test and val are both carved out (grouped, stratified);
    - a given val split with at least MIN_GIVEN_VAL images is kept;
    - otherwise val rows rejoin train and validation is carved from train.
    """
    out = list(splits)
    labels_a = np.asarray(labels)
    patients_a = np.asarray(patients, dtype=object)
    note = ""
    if all(s == "" for s in out):
        # No split folders: carve a test split the same way, then validation from the rest.
        idx = np.arange(len(out))
        test_mask = grouped_val_split(labels_a, patients_a, 0.2, seed)
        for i in idx[test_mask]:
            out[i] = "test"
        for i in idx[~test_mask]:
            out[i] = "train"
        note = "no split folders: test (20%) carved out by patient; "
    n_val = sum(s == "val" for s in out)
    if 0 < n_val < MIN_GIVEN_VAL:
        out = ["train" if s == "val" else s for s in out]
        note += f"given val split has {n_val} images (< {MIN_GIVEN_VAL}), folded into train; "
        n_val = 0
    if n_val == 0:
        train_idx = np.array([i for i, s in enumerate(out) if s == "train"])
        if len(train_idx) == 0:
            raise ValueError("no training images")
        mask = grouped_val_split(labels_a[train_idx], patients_a[train_idx], val_fraction, seed)
        for i in train_idx[mask]:
            out[i] = "val"
        note += f"validation = {val_fraction:.0%} of train, grouped by patient, stratified by label"
    else:
        note += "given val split kept"
    return out, note
