"""The monitor's figures: rates over windows against their limits, each window's
probabilities against validation's, and the observed calibration when labels came."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pneumoscope.core.io import atomic_write  # noqa: E402

MAX_PANELS = 16  # histogram panels: the latest windows when there are more


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)


def rates(windows: list[dict], limits: dict, reference: dict, path: Path) -> None:
    """One panel per figure over the windows: its limit dashed, validation's dotted."""
    x = np.arange(len(windows))
    labels = [w["window"] for w in windows]
    panels = [
        ("error_rate", "error rate", limits["max_error_rate"], None),
        ("refusal_rate", "refusal rate", limits["max_refusal_rate"], None),
        ("ood_rate", "OOD rate", limits["max_ood_rate"], reference.get("ood_rate")),
        (
            "out_of_population_rate",
            "out-of-population rate",
            limits["max_out_of_population_rate"],
            None,
        ),
        ("positive_rate", "positive-call rate", None, reference.get("positive_rate")),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4), sharex=True)
    for ax, (key, title, limit, val) in zip(axes.flat, panels, strict=False):
        y = [np.nan if w[key] is None else w[key] for w in windows]
        ax.plot(x, y, "-o", ms=4)
        if limit is not None:
            ax.axhline(limit, color="tab:red", ls="--", lw=1, label=f"limit {limit:g}")
        if val is not None:
            ax.axhline(val, color="grey", ls=":", lw=1.5, label=f"validation {val:.3f}")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        if limit is not None or val is not None:
            ax.legend(fontsize=7, loc="upper right")
    ax = axes.flat[5]
    p = [w["drift"]["ks_p"] for w in windows]
    ax.semilogy(x, [np.nan if v is None else max(v, 1e-300) for v in p], "-o", ms=4)
    ax.axhline(limits["drift_alpha"], color="tab:red", ls="--", lw=1,
               label=f"alpha {limits['drift_alpha']:g}")  # fmt: skip
    ax.set_title("drift: KS p-value vs validation (low = drifted)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    step = max(1, len(x) // 12)
    for ax in axes[1]:
        ax.set_xticks(x[::step], labels[::step], rotation=45, ha="right", fontsize=7)
    _save(fig, path)


def histograms(
    windows: list[dict], probabilities: list[np.ndarray], reference: np.ndarray, path: Path
) -> None:
    """Each window's probabilities (bars) over validation's (line), as densities."""
    shown = list(zip(windows, probabilities, strict=True))[-MAX_PANELS:]
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    edges = np.linspace(0, 1, 21)
    for ax, (w, p) in zip(axes.flat, shown, strict=False):
        if len(p):
            ax.hist(p, bins=edges, density=True, alpha=0.6, color="tab:blue", label="window")
        ax.hist(reference, bins=edges, density=True, histtype="step", color="k", lw=1.4,
                label="validation")  # fmt: skip
        d = w["drift"]
        drift = "" if d["ks_p"] is None else f", KS D {d['ks_d']:.2f}, p {d['ks_p']:.2g}"
        ax.set_title(f"{w['window']} (n={len(p)}{drift})", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper right")
    fig.supxlabel("probability of PNEUMONIA", fontsize=9)
    _save(fig, path)


def reliability(bins: list[dict], ece: float | None, path: Path) -> None:
    """Observed pneumonia rate per probability bin, with its interval, against the
    diagonal."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.5, label="perfect calibration")
    x = [b["mean_probability"] for b in bins]
    y = [b["observed_rate"] for b in bins]
    # the interval's distances from the rate (clipped: 1 - 1e-16 above a rate of 1)
    lo = [max(0.0, b["observed_rate"] - b["observed_ci"][0]) for b in bins]
    hi = [max(0.0, b["observed_ci"][1] - b["observed_rate"]) for b in bins]
    text = "" if ece is None else f": ECE {ece:.3f}"
    ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", ms=4, capsize=2, label=f"labelled traffic{text}")
    ax.set_xlabel("mean predicted probability of PNEUMONIA")
    ax.set_ylabel("observed fraction PNEUMONIA")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)
