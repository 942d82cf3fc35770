"""What the traffic is compared with: the run as it serves, and its validation figures.

The run folder keeps no validation probabilities of its calibrated model (calibration.json
keeps the temperature, the threshold and summary figures; checkpoints/best_val.npz holds
the best epoch's probabilities before temperature scaling), so the reference distribution
is a predictions CSV: ``evaluate --split val`` writes RUN/predictions_val.csv, the default,
and ``--reference CSV`` takes that file from elsewhere or any `predict` CSV of films the
model is meant for. The validation OOD rate is the guard's own (ood.json), the validation
positive-call rate is the reference's share at or above the run's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core.errors import UserError
from pneumoscope.model.calibration import TemperatureScaler
from pneumoscope.model.contract import RunFiles, read_card
from pneumoscope.model.ood import OodGuard

AGE_GROUPS = ("child", "adult")
FEW_REFERENCE = 50  # fewer validation films than this: the drift test has little power


@dataclass(frozen=True)
class MonitoredRun:
    """What the monitor needs of the run the service serves."""

    root: Path
    model_id: str  # as the service names it: folder name @ the weights' SHA-256 start
    weights_prefix: str
    threshold: float
    positive_class: str
    population_groups: tuple[str, ...] | None  # None: the card records no population
    population_from: str  # "the model card", "--population", ""

    @classmethod
    def load(cls, run: str | Path, population: str | None = None) -> MonitoredRun:
        """The run's card and calibration, without its network. ``population`` (child,
        adult, comma separated) names the age groups the model is meant for where its card
        records none (runs of pneumoscope 0.1.0)."""
        files = RunFiles.of(run)
        card = read_card(files)
        calibration = TemperatureScaler.load(files)
        threshold = calibration.threshold_ if calibration else float(card.threshold)
        prefix = files.weights_sha256()[:12]
        groups, source = None, ""
        if card.population is not None and card.population.age_groups:
            groups, source = tuple(card.population.age_groups), "the model card"
        if population:
            groups, source = _groups(population), "--population"
        return cls(
            files.root,
            f"{files.root.name}@{prefix}",  # inference.scoring.model_id's form
            prefix,
            threshold,
            card.positive_class,
            groups,
            source,
        )


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(dict.fromkeys(g.strip().lower() for g in text.split(",") if g.strip()))
    unknown = [g for g in groups if g not in AGE_GROUPS]
    if unknown or not groups:
        raise UserError(
            f"--population {text!r}: give age groups among {', '.join(AGE_GROUPS)} "
            "(e.g. --population child)"
        )
    return groups


@dataclass
class Reference:
    """The validation figures a window is compared with."""

    csv: Path
    probabilities: np.ndarray
    positive_rate: float  # share at or above the run's threshold
    prevalence: float | None  # share of true PNEUMONIA, where the CSV has the truth
    ood_rate: float | None  # the guard's validation flag rate (ood.json), else the CSV's
    ood_from: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "csv": str(self.csv),
            "n": int(len(self.probabilities)),
            "positive_rate": self.positive_rate,
            "prevalence": self.prevalence,
            "ood_rate": self.ood_rate,
            "ood_rate_from": self.ood_from,
        }


def load_reference(run: MonitoredRun, csv: str | Path | None = None) -> Reference:
    """The reference from ``csv``, else RUN/predictions_val.csv; one line saying how to make
    it when neither exists."""
    files = RunFiles.of(run.root)
    path = Path(csv).expanduser() if csv else files.predictions("val")
    if not path.is_file():
        given = f"--reference {path} not found" if csv else f"no {path.name} in {run.root}"
        raise UserError(
            f"{given}: the monitor compares the traffic with the run's validation "
            f"probabilities; make them with 'pneumoscope evaluate --run {run.root} --data DATA "
            "--split val --bootstrap 0' (writes RUN/predictions_val.csv), or give --reference "
            "a predictions CSV of films the model is meant for"
        )
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the reference {path}: {exc}") from None
    if "probability" not in df.columns:
        raise UserError(
            f"{path} has no probability column: give a predictions CSV from 'pneumoscope "
            "evaluate' (predictions_val.csv) or 'pneumoscope predict'"
        )
    if "status" in df.columns:  # a predict CSV: the analysed films only
        df = df[df["status"].astype(str) == "ok"]
    p = pd.to_numeric(df["probability"], errors="coerce")
    df, p = df[p.notna()], p[p.notna()].to_numpy(dtype=float)
    if len(p) == 0:
        raise UserError(f"{path} holds no probability to compare with")
    warnings = _reference_warnings(run, files, path, df, len(p), given=bool(csv))
    ood_rate, ood_from = _ood_rate(files, df)
    truth = "predicted" in df.columns and "label" in df.columns  # evaluate's CSV
    return Reference(
        path,
        p,
        float(np.mean(p >= run.threshold)),
        float(pd.to_numeric(df["label"]).mean()) if truth else None,
        ood_rate,
        ood_from,
        warnings,
    )


def _reference_warnings(
    run: MonitoredRun, files: RunFiles, path: Path, df: pd.DataFrame, n: int, given: bool
) -> list[str]:
    """A reference of another model, one older than the calibration, or a small one."""
    out = []
    if "model_id" in df.columns:
        ids = {str(v) for v in df["model_id"].dropna().unique()}
        other = sorted(i for i in ids if i.rpartition("@")[2] != run.weights_prefix)
        if other:
            out.append(
                f"the reference {path} was predicted by {', '.join(other)}, not the run's "
                f"model {run.model_id}: the comparison is unsound; predict it again"
            )
    if (
        not given
        and files.calibration.is_file()
        and path.stat().st_mtime < files.calibration.stat().st_mtime
    ):
        out.append(
            f"{path} is older than {files.calibration.name}: its probabilities may predate "
            "the current temperature; run 'pneumoscope evaluate --split val' again"
        )
    if n < FEW_REFERENCE:
        out.append(
            f"the reference holds {n} films: the drift test can only see large shifts "
            f"(at least {FEW_REFERENCE} recommended)"
        )
    return out


def _ood_rate(files: RunFiles, df: pd.DataFrame) -> tuple[float | None, str]:
    guard = OodGuard.load(files)
    if guard is not None and guard.val_flag_rate_ is not None:
        n = guard.n_val_
        return float(guard.val_flag_rate_), f"ood.json (validation, n={n})"
    if "ood" in df.columns:
        flags = df["ood"].astype(str).str.lower()
        known = flags.isin(["true", "false"])
        if known.any():
            return float((flags[known] == "true").mean()), "the reference CSV"
    return None, ""
