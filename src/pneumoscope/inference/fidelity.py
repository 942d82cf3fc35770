"""How far a reduced-precision model lands from the float32 torch model, and whether that
is within tolerance.

The figures are what a user of the model would notice: the AUROC on labelled validation
images, the largest change of a calibrated probability, and the calls (probability >=
the run's threshold) that flip. The export refuses a model beyond :data:`TOLERANCE`:
AUROC within 0.002 and at most 1% of calls flipped (the issue's targets), and no
probability moved by more than 0.05 (a twentieth of the scale: large enough for int8's
rounding near the steep middle of the sigmoid, small enough to catch a broken graph, whose
probabilities move by tenths). OOD flags that change are counted, not judged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pneumoscope.core.errors import UserError


@dataclass(frozen=True)
class Tolerance:
    """The largest change from float32 torch a model may bring and still be used."""

    auroc: float = 0.002
    max_prob_diff: float = 0.05
    flip_fraction: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


TOLERANCE = Tolerance()


def _auroc(labels: np.ndarray | None, scores: np.ndarray) -> float | None:
    if labels is None or len(np.unique(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def compare(
    ref_probs: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    labels: np.ndarray | None = None,
) -> dict:
    """Figures of ``probs`` against the float32 ``ref_probs`` of the same images."""
    ref_probs, probs = np.asarray(ref_probs, np.float64), np.asarray(probs, np.float64)
    flips = int(np.sum((ref_probs >= threshold) != (probs >= threshold)))
    ref_auc, auc = _auroc(labels, ref_probs), _auroc(labels, probs)
    finite = bool(np.all(np.isfinite(probs)))
    return {
        "n_images": len(probs),
        "auroc_fp32": ref_auc,
        "auroc": auc,
        "auroc_change": None if auc is None or ref_auc is None else auc - ref_auc,
        "max_prob_diff": float(np.max(np.abs(probs - ref_probs), initial=0.0))
        if finite
        else float("inf"),
        "flips": flips,
        "flip_fraction": flips / max(1, len(probs)),
        "threshold": float(threshold),
    }


def problems(figures: dict, tol: Tolerance = TOLERANCE) -> list[str]:
    """What in ``figures`` is beyond ``tol`` (empty when the model is faithful)."""
    out = []
    change = figures.get("auroc_change")
    if change is not None and not abs(change) <= tol.auroc:
        out.append(f"AUROC changed by {change:+.4f} (tolerance {tol.auroc:g})")
    if not figures["max_prob_diff"] <= tol.max_prob_diff:
        out.append(
            f"a probability moved by {figures['max_prob_diff']:.4f} "
            f"(tolerance {tol.max_prob_diff:g})"
        )
    if not figures["flip_fraction"] <= tol.flip_fraction:
        out.append(
            f"{figures['flips']} of {figures['n_images']} calls flipped "
            f"({figures['flip_fraction']:.1%}, tolerance {tol.flip_fraction:.1%})"
        )
    return out


def judge(name: str, figures: dict, tol: Tolerance = TOLERANCE) -> dict:
    """``figures`` with ``tolerance`` and ``accepted`` added; UserError when refused."""
    found = problems(figures, tol)
    figures.update(tolerance=tol.to_dict(), accepted=not found)
    if found:
        raise UserError(
            f"{name} refused: it differs from the float32 model on {figures['n_images']} "
            f"validation images beyond tolerance: {'; '.join(found)}"
        )
    return figures
