"""Binary classification metrics (scikit-learn underneath) and threshold choice on validation."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """AUROC, accuracy, precision, sensitivity, specificity, F1, confusion matrix and n.

    The confusion matrix is [[TN, FP], [FN, TP]] (rows: true NORMAL, PNEUMONIA).
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    both = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "n_pneumonia": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        "threshold": float(threshold),
        "auroc": float(roc_auc_score(y, p)) if both else float("nan"),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "sensitivity": float(recall_score(y, pred, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if (tn + fp) else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J) on the given data.

    Call it on validation data only. Among tied thresholds, the midpoint between
    the chosen ROC point and the next lower score is returned so that small
    shifts in scores do not flip the decision of the boundary image.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    k = int(np.argmax(j))
    t = float(thr[k])
    if not np.isfinite(t):
        return 0.5
    lower = p[p < t]
    return float((t + lower.max()) / 2) if len(lower) else t
