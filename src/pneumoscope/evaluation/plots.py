"""Figures written next to the numbers: training curves, confusion matrix, ROC and PR curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from pneumoscope.core import CLASS_NAMES  # noqa: E402
from pneumoscope.core.io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight"))
    plt.close(fig)


def training_curves(history: pd.DataFrame, path: Path, best_epoch: int | None = None) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(
        axes, ("loss", "accuracy", "auroc"), ("Loss (BCE)", "Accuracy @0.5", "AUROC"), strict=True
    ):
        for split, style in (("train", "-o"), ("val", "-s")):
            col = f"{split}_{key}"
            if col in history:
                ax.plot(history["epoch"], history[col], style, ms=3, label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label="best (val AUROC)")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def confusion(cm: list[list[int]], path: Path, title: str) -> None:
    cm_a = np.asarray(cm)
    rates = cm_a / np.maximum(cm_a.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{cm_a[i, j]}\n{rates[i, j]:.1%}",
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.5 else "black",
                fontsize=11,
            )
    ax.set_xticks([0, 1], [f"pred {c}" for c in CLASS_NAMES])
    ax.set_yticks([0, 1], [f"true {c}" for c in CLASS_NAMES])
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def roc(y: np.ndarray, p: np.ndarray, auroc: float, threshold: float, path: Path) -> None:
    fpr, tpr, _ = roc_curve(y, p)
    pred = p >= threshold
    op_tpr = pred[y == 1].mean() if (y == 1).any() else np.nan
    op_fpr = pred[y == 0].mean() if (y == 0).any() else np.nan
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.5)
    ax.plot([op_fpr], [op_tpr], "ro", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def pr(y: np.ndarray, p: np.ndarray, path: Path) -> None:
    prec, rec, _ = precision_recall_curve(y, p)
    ap = average_precision_score(y, p)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot(rec, prec, lw=2, label=f"AP = {ap:.3f}")
    ax.axhline(y.mean(), color="k", ls="--", lw=1, alpha=0.5, label=f"prevalence {y.mean():.2f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_title("Precision-recall (PNEUMONIA positive)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int):
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    nz = count > 0
    conf = np.bincount(bins, weights=p, minlength=n_bins)[nz] / count[nz]
    obs = np.bincount(bins, weights=y.astype(float), minlength=n_bins)[nz] / count[nz]
    return conf, obs, count[nz]


def reliability(
    y: np.ndarray,
    p_before: np.ndarray,
    p_after: np.ndarray,
    path: Path,
    split: str,
    n_bins: int = 15,
) -> None:
    """Observed pneumonia rate against mean predicted probability, per probability bin."""
    from pneumoscope.evaluation.metrics import expected_calibration_error

    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.5, label="perfect calibration")
    for p, name, style in ((p_before, "before (T = 1)", "-o"), (p_after, "after scaling", "-s")):
        conf, obs, count = _reliability_curve(y, p, n_bins)
        ece = expected_calibration_error(y, p, n_bins)
        ax.plot(conf, obs, style, ms=4, label=f"{name}: ECE {ece:.3f}")
    ax.set_xlabel("mean predicted probability of PNEUMONIA")
    ax.set_ylabel("observed fraction PNEUMONIA")
    ax.set_title(f"Reliability, {split} split ({n_bins} bins)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def histograms(y: np.ndarray, p: np.ndarray, threshold: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    edges = np.linspace(0, 1, 41)
    for label, name, color in ((0, CLASS_NAMES[0], "tab:blue"), (1, CLASS_NAMES[1], "tab:red")):
        ax.hist(
            p[y == label],
            bins=edges,
            alpha=0.55,
            color=color,
            label=f"true {name} (n={int((y == label).sum())})",
        )
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("predicted probability of PNEUMONIA")
    ax.set_ylabel("images")
    ax.set_title("Predicted probabilities by true class")
    ax.legend(fontsize=8)
    _save(fig, path)
