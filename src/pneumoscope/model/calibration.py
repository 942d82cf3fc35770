"""Temperature scaling, the run's calibration (RUN/calibration.json).

Temperature scaling divides the logits by one number T fitted to minimise the negative
log-likelihood of the validation labels. It leaves the ranking (AUROC) unchanged and makes
the probabilities honest. ``TemperatureScaler`` is a small estimator in the scikit-learn
manner: settings in the constructor, fitted state in trailing-underscore attributes,
``fit`` returning itself, ``save``/``load`` writing and reading calibration.json.

The operating threshold lives in the same file: the calibrate step
(``evaluation.calibration``) chooses it on the calibrated validation probabilities by a
policy and records it with ``set_threshold``, since the metrics that choose it belong to
the evaluation layer. ``LoadedRun`` applies the temperature and the threshold.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.optimize import minimize_scalar

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.model.tta import TestTimeAugmentation

LOG_T_BOUND = 4.0  # T is searched in [e^-4, e^4] = [0.018, 54.6]


class RunFiles(Protocol):
    """What this module needs of ``model.contract.RunFiles`` (the contract imports this
    module for the card's calibration, so it cannot import the contract back)."""

    @property
    def root(self) -> Path: ...

    @property
    def weights(self) -> Path: ...

    @property
    def calibration(self) -> Path: ...

    def weights_sha256(self) -> str: ...


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood of sigmoid(logits / T), computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def temperature_warning(t: float, log_t_bound: float = LOG_T_BOUND) -> str | None:
    """A line for a temperature stuck at its search bound, else None."""
    if abs(np.log(t)) < log_t_bound - 1e-3:
        return None
    if t > 1:
        return (
            f"temperature {t:.3g} is at the upper end of its search range: no temperature "
            "makes the validation logits much better than a constant 0.5 (they carry little "
            "information, or are shifted towards one class, as after a very short run), so "
            "the probabilities are not calibrated; train longer or check the data"
        )
    return (
        f"temperature {t:.3g} is at the lower end of its search range: the validation set "
        "is perfectly separated, so nothing bounds how confident the probabilities become; "
        "calibrate on a larger validation set"
    )


@dataclass(frozen=True)
class ThresholdAugmentation:
    """How the threshold also saw K augmented copies of each validation image: their
    count, seed, augmentation, the scores pooled and the copies' own AUROC."""

    copies: int
    seed: int
    augment: dict[str, Any] | None
    n_scored: int
    copies_auroc: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThresholdAugmentation:
        """From calibration.json's ``threshold_tta``, or the ``threshold_views`` of files
        written before the rename (``views``, ``views_auroc``)."""
        return cls(
            copies=int(d["copies"] if "copies" in d else d["views"]),
            seed=int(d["seed"]),
            augment=d.get("augment"),
            n_scored=int(d["n_scored"]),
            copies_auroc=float(d["copies_auroc"] if "copies_auroc" in d else d["views_auroc"]),
        )


@dataclass(frozen=True)
class ValidationCheck:
    """The validation set the calibration saw: its size, NLL/ECE/Brier/AUROC before and
    after scaling, and the metrics at the chosen threshold."""

    n: int
    before: dict[str, float]
    after: dict[str, float]
    at_threshold: dict[str, Any]


class TemperatureScaler:
    """sigmoid(logit / T) with T fitted on validation, and the run's operating threshold.

    Fitted state: ``temperature_`` and ``temperature_warning_`` (``fit``); ``policy_``,
    ``policy_params_``, ``threshold_``, ``thresholds_by_policy_``, ``threshold_tta_``
    (``set_threshold``); ``tta_`` (the test-time augmentation the logits were averaged
    over, None for plain logits; ``fit``); ``validation_``, ``validation_data_sha256_``, ``data_``
    (``set_provenance``); ``weights_sha256_`` and ``created_`` (stamped by ``save``).
    """

    def __init__(self, log_t_bound: float = LOG_T_BOUND, xatol: float = 1e-6):
        self.log_t_bound = log_t_bound
        self.xatol = xatol
        self.tta_: TestTimeAugmentation | None = None

    def fit(
        self, logits: np.ndarray, y: np.ndarray, tta: TestTimeAugmentation | None = None
    ) -> TemperatureScaler:
        """The T > 0 minimising the NLL of ``y``, searched on log T within the bound;
        ``tta``: how ``logits`` were made (None: the plain image alone)."""
        self.tta_ = tta
        y = np.asarray(y, dtype=np.float64)
        res = minimize_scalar(
            lambda lt: nll(logits, y, float(np.exp(lt))),
            bounds=(-self.log_t_bound, self.log_t_bound),
            method="bounded",
            options={"xatol": self.xatol},
        )
        self.temperature_ = float(np.exp(res.x))
        self.temperature_warning_ = temperature_warning(self.temperature_, self.log_t_bound)
        return self

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the positive class."""
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature_)

    def set_threshold(
        self,
        policy: str,
        thresholds_by_policy: dict[str, float],
        policy_params: dict[str, float],
        threshold_tta: ThresholdAugmentation | None = None,
    ) -> TemperatureScaler:
        """Record the thresholds chosen on the calibrated probabilities, and the policy used."""
        self.policy_ = policy
        self.policy_params_ = dict(policy_params)
        self.threshold_tta_ = threshold_tta
        self.thresholds_by_policy_ = dict(thresholds_by_policy)
        self.threshold_ = self.thresholds_by_policy_[policy]
        return self

    def set_provenance(
        self, validation: ValidationCheck, data: str, data_sha256: str
    ) -> TemperatureScaler:
        """Record which validation data the calibration saw."""
        self.validation_ = validation
        self.data_ = data
        self.validation_data_sha256_ = data_sha256
        return self

    def tta_note(self) -> str:
        """' + K augmented copies of each image' when the threshold used them, and what
        every score averages when the calibration has test-time augmentation."""
        v, tv = self.threshold_tta_, self.tta_
        note = f" + {v.copies} augmented copies of each image" if v and v.copies else ""
        return note + (f"; each score is {tv.note()}" if tv and tv.copies else "")

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """calibration.json's content, keys in the order they have always been written
        (``threshold_tta`` and ``tta`` were ``threshold_views`` and ``test_views`` before
        the rename; ``from_dict`` reads both)."""
        thr = self.threshold_tta_
        return {
            "temperature": self.temperature_,
            "temperature_warning": self.temperature_warning_,
            "policy": self.policy_,
            "policy_params": self.policy_params_,
            "threshold_tta": None if thr is None else asdict(thr),
            **({} if self.tta_ is None else {"tta": self.tta_.to_dict()}),
            "threshold": self.threshold_,
            "thresholds_by_policy": self.thresholds_by_policy_,
            "validation": asdict(self.validation_),
            "validation_data_sha256": self.validation_data_sha256_,
            "weights_sha256": self.weights_sha256_,
            "data": self.data_,
            "created": self.created_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaler:
        """A fitted scaler from calibration.json's content. Files of the first release
        have no temperature_warning and no threshold copies: they get None. Files written
        before the rename say ``threshold_views`` and ``test_views`` for ``threshold_tta``
        and ``tta``: read the same."""
        self = cls()
        self.temperature_ = float(d["temperature"])
        self.temperature_warning_ = d.get("temperature_warning")
        tv = d["tta"] if "tta" in d else d.get("test_views")
        self.tta_ = None if tv is None else TestTimeAugmentation.from_dict(tv)
        thr = d["threshold_tta"] if "threshold_tta" in d else d.get("threshold_views")
        self.set_threshold(
            d["policy"],
            d.get("thresholds_by_policy", {d["policy"]: d["threshold"]}),
            d.get("policy_params", {}),
            None if thr is None else ThresholdAugmentation.from_dict(thr),
        )
        self.threshold_ = float(d["threshold"])
        v = d.get("validation", {})
        check = ValidationCheck(
            v.get("n", 0), v.get("before", {}), v.get("after", {}), v.get("at_threshold", {})
        )
        self.set_provenance(check, d.get("data", ""), d.get("validation_data_sha256", ""))
        self.weights_sha256_ = d.get("weights_sha256")
        self.created_ = d.get("created", "")
        return self

    def save(self, files: RunFiles) -> None:
        """Write RUN/calibration.json, tied to the run's current weights."""
        self.weights_sha256_ = files.weights_sha256()
        self.created_ = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(files.calibration, self.to_dict())

    @classmethod
    def load(cls, files: RunFiles) -> TemperatureScaler | None:
        """The run's calibration; None when it has none. Refused when it was fitted on
        other weights than the run's."""
        path: Path = files.calibration
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path} is not valid JSON ({exc}); run 'pneumoscope calibrate' again"
            ) from None
        try:
            scaler = cls.from_dict(d)
        except (KeyError, TypeError) as exc:
            raise UserError(
                f"{path} is not a calibration file (no {exc}); run 'pneumoscope calibrate' again"
            ) from None
        if scaler.weights_sha256_ != files.weights_sha256():
            raise UserError(
                f"{path} was fitted on other weights than {files.weights}; run "
                f"'pneumoscope calibrate --run {files.root} --data DATA' again"
            )
        return scaler
