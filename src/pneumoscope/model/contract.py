"""The run contract: the files of a run folder, the input it expects and its model card.

A run folder is what ``pneumoscope train`` writes and every later step reads. This module
is the one place that names its files (``RunFiles``), says what the network's input is
(``InputSpec``: image size, channels, preprocessing incl. CLAHE, normalisation,
evaluation crop) and reads and writes model.json (``ModelCard``, versioned). Cards written
before a field existed get that field's default here, in ``ModelCard.from_dict``, and
nowhere else.

Version 1 is the card of release 0.1.0 (it has no ``card_version`` key); a card of a newer
version than this code knows is refused with one line saying to upgrade.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from pneumoscope.core import CLASS_NAMES, __version__
from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.model.calibration import TemperatureScaler
from pneumoscope.model.statements import INTENDED_USE

CARD_VERSION = 1
FRONTAL_VIEWS = ("AP", "PA", "FRONTAL")


# --------------------------------------------------------------------------- files


def _path(*names: str) -> property:
    """A property: the path of the file whose name is the class constant(s) ``names``."""

    def get(self) -> Path:
        return self.root.joinpath(*(getattr(self, n) for n in names))

    return property(get, doc=f"RUN/{'/'.join(names)}")


@dataclass(frozen=True)
class RunFiles:
    """Every file of a run folder, by name. Evaluation outputs (metrics, plots, report,
    predictions) land in the run folder or in another folder laid out the same way
    (``evaluate --out``), so ``RunFiles(out)`` names those too."""

    root: Path

    WEIGHTS: ClassVar[str] = "model.safetensors"
    CARD: ClassVar[str] = "model.json"
    CALIBRATION: ClassVar[str] = "calibration.json"
    OOD_CARD: ClassVar[str] = "ood.json"
    OOD_STATS: ClassVar[str] = "ood.safetensors"
    CONFIG: ClassVar[str] = "config.yaml"
    HISTORY: ClassVar[str] = "history.csv"
    CURVES: ClassVar[str] = "curves.png"
    RELIABILITY_VAL: ClassVar[str] = "reliability_val.png"
    CHECKPOINT_DIR: ClassVar[str] = "checkpoints"
    LAST_CKPT: ClassVar[str] = "last.ckpt"
    BEST_VAL: ClassVar[str] = "best_val.npz"  # the best epoch's validation probabilities
    SUMMARY: ClassVar[str] = "summary.json"  # how the fit ended
    ONNX: ClassVar[str] = "model.onnx"
    INT8: ClassVar[str] = "model.int8.onnx"
    EXPORT_RECORD: ClassVar[str] = "export.json"
    METRICS: ClassVar[str] = "metrics.json"
    REPORT: ClassVar[str] = "report.html"
    PREDICTIONS: ClassVar[str] = "predictions_{split}.csv"
    CONFUSION: ClassVar[str] = "confusion_matrix.png"
    ROC: ClassVar[str] = "roc_curve.png"
    PR: ClassVar[str] = "pr_curve.png"
    RELIABILITY: ClassVar[str] = "reliability.png"
    HISTOGRAMS: ClassVar[str] = "probability_histograms.png"

    @classmethod
    def of(cls, run: str | Path | RunFiles) -> RunFiles:
        return run if isinstance(run, RunFiles) else cls(Path(run).expanduser())

    weights = _path("WEIGHTS")
    card = _path("CARD")
    calibration = _path("CALIBRATION")
    ood_card = _path("OOD_CARD")
    ood_stats = _path("OOD_STATS")
    config = _path("CONFIG")
    history = _path("HISTORY")
    curves = _path("CURVES")
    reliability_val = _path("RELIABILITY_VAL")
    checkpoints = _path("CHECKPOINT_DIR")
    last_ckpt = _path("CHECKPOINT_DIR", "LAST_CKPT")
    best_val = _path("CHECKPOINT_DIR", "BEST_VAL")
    summary = _path("CHECKPOINT_DIR", "SUMMARY")
    onnx = _path("ONNX")
    int8 = _path("INT8")
    export_record = _path("EXPORT_RECORD")
    metrics = _path("METRICS")
    report = _path("REPORT")
    confusion = _path("CONFUSION")
    roc = _path("ROC")
    pr = _path("PR")
    reliability = _path("RELIABILITY")
    histograms = _path("HISTOGRAMS")

    def predictions(self, split: str) -> Path:
        return self.root / self.PREDICTIONS.format(split=split)

    def fitted_files(self) -> tuple[Path, ...]:
        """What training fits from the weights: a new training makes every one stale."""
        return (
            self.weights,
            self.calibration,
            self.ood_card,
            self.ood_stats,
            self.onnx,
            self.int8,
            self.export_record,
        )

    @staticmethod
    def int8_beside(onnx: Path) -> Path:
        """The int8 model written beside an ONNX file (RUN/model.int8.onnx for the run's)."""
        return onnx.with_name(onnx.name.removesuffix(".onnx") + ".int8.onnx")

    @classmethod
    def record_beside(cls, onnx: Path) -> Path:
        """export.json beside RUN/model.onnx; '<name>.export.json' beside any other name."""
        if onnx.name == cls.ONNX:
            return onnx.with_name(cls.EXPORT_RECORD)
        return onnx.with_name(onnx.name.removesuffix(".onnx") + ".export.json")

    def weights_sha256(self) -> str:
        """SHA-256 of the weights: ties calibration, OOD guard, export and predictions'
        model id to the weights they were made from. Hashed once per process."""
        return file_sha256(self.weights)


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, cached on (resolved path, size, mtime, inode, ctime): one predict
    call asks for the weights' digest several times, and a large file is read once."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _sha256_of(p)
    return _DIGESTS[key]


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std, in units of pixel / 255."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str = "dataset"  # the first cards had no kind: they all used the training images'
    scale: str = "pixel / 255"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        extra = {k: d[k] for k in ("kind", "scale") if k in d}
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), **extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
        }


@dataclass(frozen=True)
class InputSpec:
    """What the network was trained on: preprocessed images (size, CLAHE) of ``img_size``
    pixels, repeated to ``in_chans`` channels, normalised, and at evaluation resized by
    ``eval_crop`` then centre-cropped back. ``model.run.model_input`` applies it."""

    preprocess: PreprocessConfig
    in_chans: int
    normalization: Normalization
    eval_crop: float = 1.0  # cards made before the option have no crop

    @property
    def img_size(self) -> int:
        return self.preprocess.img_size


# --------------------------------------------------------------------------- card


@dataclass
class TrainingData:
    """Which cache the run was trained on and what it held."""

    cache: str = ""
    sources: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    split_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PopulationSource:
    """One training source's patients: what is known of them and how (``age_from``)."""

    name: str = ""
    dataset: str = ""  # the public set it is, when recognised
    layout: str = ""
    images: int = 0  # training images from it
    age_groups: list[str] = field(default_factory=list)  # "child", "adult"
    age_min: float | None = None  # years
    age_max: float | None = None
    age_from: str = ""  # "the images' headers or list", "the dataset's description", ""
    views: list[str] = field(default_factory=list)  # AP, PA, FRONTAL, LL, ...
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingPopulation:
    """Who the training images came from: what the intended-use rules compare a DICOM
    header with. Ages in years (None where any source's are unknown); views as the
    sources give them (AP, PA, or FRONTAL when only the projection is known)."""

    sources: list[PopulationSource] = field(default_factory=list)
    age_groups: list[str] = field(default_factory=list)
    age_min: float | None = None
    age_max: float | None = None
    views: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frontal_only(self) -> bool:
        """True unless a source is known to hold other views (lateral films)."""
        return all(v in FRONTAL_VIEWS for v in self.views)

    def ages_text(self) -> str:
        """``children aged 1-5 years`` / ``children and adults`` / ``patients of unknown
        ages``."""
        names = {"child": "children", "adult": "adults"}
        groups = " and ".join(names.get(g, g) for g in self.age_groups)
        if self.age_min is None or self.age_max is None:
            return groups or "patients of unknown ages"
        return f"{groups or 'patients'} aged {_years(self.age_min)}-{_years(self.age_max)} years"

    def views_text(self) -> str:
        """``frontal (AP) films`` / ``frontal films`` / ``AP/LL films``."""
        if not self.frontal_only:
            return f"{'/'.join(self.views)} films"
        named = [v for v in self.views if v != "FRONTAL"]
        return f"frontal ({'/'.join(named)}) films" if named else "frontal films"

    def summary(self) -> str:
        """One line for people: ages, views and sources."""
        names = ", ".join(f"{s.name} ({s.dataset})" if s.dataset else s.name for s in self.sources)
        return f"{self.ages_text()}; {self.views_text()}; sources: {names or 'unknown'}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingPopulation:
        pop = _build(cls, {k: v for k, v in d.items() if k != "sources"})
        pop.sources = [_build(PopulationSource, s) for s in d.get("sources", [])]
        return pop

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self)
        out["sources"] = [_plain(s) for s in self.sources]
        return out


def _years(value: float) -> str:
    return f"{value:g}" if value >= 1 else f"{value:.2g}"


@dataclass
class TrainingInfo:
    """How the run was trained. The first cards held only imbalance, pos_weight,
    epochs_run, train_seconds, stopped_by and seed; settings that did not exist then get
    the value that means "off", the others None (not recorded)."""

    imbalance: str | None = None
    pos_weight: float | None = None
    pos_weight_note: str = ""
    balance_groups: str = ""  # the manifest column drawn evenly ("age_group"); "" = none
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    scheduler: str | None = None
    freeze_epochs: int = 0
    augment: dict[str, Any] | None = None
    threshold_tta: int = 0  # threshold also chosen on this many augmented copies of each
    tta: int = 0  # logits averaged over the film and this many augmented copies
    ema_decay: float = 0.0  # 0.1 runs could average their weights; 0 since (experiments/)
    batch_size_per_process: int | None = None
    processes: int = 1
    precision: str | None = None  # Lightning's name of what trained: 32-true, bf16-mixed, ...
    precision_reason: str = ""  # why, e.g. "CPU has AMX-BF16 (auto)"; older cards: none
    initial_weights: dict[str, Any] | None = None
    epochs_run: int | None = None
    train_seconds: float | None = None
    stopped_by: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # field -> the older key it was read from (_RENAMED), written back under that key so
    # that a card from before the rename round-trips key for key; new cards: empty
    written_as: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # written only when set, so that older cards round-trip key for key
    _OMIT_EMPTY: ClassVar[frozenset[str]] = frozenset({"precision_reason", "tta", "balance_groups"})
    # keys of cards written before the rename, read as the new ones
    _RENAMED: ClassVar[Mapping[str, str]] = {
        "threshold_views": "threshold_tta",
        "test_views": "tta",
    }


@dataclass(frozen=True)
class ValidationMetrics:
    """The card's validation figures (``val_metrics`` in model.json), typed: loss,
    accuracy and AUROC of the best epoch, and every figure at the run's threshold. An
    ensemble's card has none (its members' are in ``ensemble``); a figure a card lacks is
    None, never a default that could pass for a measurement."""

    auroc: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    at_threshold: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationMetrics:
        def number(key: str) -> float | None:
            value = d.get(key)
            return None if value is None else float(value)

        at = d.get("at_threshold") or {}
        return cls(number("val_auroc"), number("val_loss"), number("val_accuracy"), dict(at))


@dataclass
class ModelCard:
    """model.json: what the run is, what it expects, how it was made and how well it did.

    ``to_dict`` writes today's keys in today's order (plus ``card_version``); keys this
    version does not know are kept in ``extra`` and written back. ``calibration`` is not
    part of model.json: ``train`` returns the card with the calibration it ended with.
    """

    architecture: str
    input: InputSpec
    pneumoscope_version: str = "unknown"
    created: str = ""
    input_note: str = ""
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    positive_class: str = CLASS_NAMES[1]
    threshold: float = 0.5
    threshold_policy: str = "0.5"
    training_data: TrainingData = field(default_factory=TrainingData)
    population: TrainingPopulation | None = None  # older cards have none
    training: TrainingInfo = field(default_factory=TrainingInfo)
    best_epoch: int | None = None
    val_metrics: dict[str, Any] = field(default_factory=dict)
    # set by `pneumoscope ensemble`: the member runs and how their logits combine
    ensemble: dict[str, Any] | None = None
    weights: str = RunFiles.WEIGHTS
    intended_use: str = INTENDED_USE
    card_version: int = CARD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    calibration: TemperatureScaler | None = None

    # keys of model.json that are not plain fields of the card
    _STRUCTURED: ClassVar[frozenset[str]] = frozenset(
        {"in_chans", "img_size", "preprocess", "normalization", "eval_crop"}
        | {"training_data", "training", "calibration", "extra", "input", "population"}
    )
    _REQUIRED: ClassVar[tuple[str, ...]] = (
        "architecture",
        "in_chans",
        "preprocess",
        "normalization",
    )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model.json") -> ModelCard:
        """A card from model.json's content: the one place where the keys older cards lack
        get their defaults."""
        _check_version(d, where)
        missing = [k for k in cls._REQUIRED if k not in d]
        missing += [
            f"normalization.{k}" for k in ("mean", "std") if k not in d.get("normalization", {})
        ]
        if missing:
            raise UserError(
                f"{where} is not a finished model card (no {', '.join(missing)}); train the "
                "run again"
            )
        spec = InputSpec(
            preprocess=PreprocessConfig.from_dict(d["preprocess"]),
            in_chans=int(d["in_chans"]),
            normalization=Normalization.from_dict(d["normalization"]),
            eval_crop=float(d.get("eval_crop", 1.0)),
        )
        plain = {f.name for f in fields(cls)} - cls._STRUCTURED
        calibration = d.get("calibration")
        population = d.get("population")
        return cls(
            input=spec,
            training_data=_build(TrainingData, d.get("training_data", {})),
            population=None if population is None else TrainingPopulation.from_dict(population),
            training=_build(TrainingInfo, d.get("training", {})),
            **{k: d[k] for k in plain if k in d},
            extra={k: v for k, v in d.items() if k not in plain | cls._STRUCTURED},
            calibration=None if calibration is None else TemperatureScaler.from_dict(calibration),
        )

    @property
    def validation(self) -> ValidationMetrics:
        """``val_metrics``, typed."""
        return ValidationMetrics.from_dict(self.val_metrics)

    def to_dict(self) -> dict[str, Any]:
        """model.json's content, in the order train has always written it."""
        spec = self.input
        out: dict[str, Any] = {
            "card_version": self.card_version,
            "pneumoscope_version": self.pneumoscope_version,
            "created": self.created,
            "architecture": self.architecture,
            "in_chans": spec.in_chans,
            "img_size": spec.img_size,
            "preprocess": spec.preprocess.to_dict(),
            "normalization": spec.normalization.to_dict(),
            "eval_crop": spec.eval_crop,
            "input_note": self.input_note,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            "threshold_policy": self.threshold_policy,
            "training_data": _plain(self.training_data),
            **({} if self.population is None else {"population": self.population.to_dict()}),
            "training": _plain(self.training),
            "best_epoch": self.best_epoch,
            "val_metrics": self.val_metrics,
            **({} if self.ensemble is None else {"ensemble": self.ensemble}),
            "weights": self.weights,
            "intended_use": self.intended_use,
            **self.extra,
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out

    def save(self, files: RunFiles) -> None:
        """Write model.json (without the calibration, which has its own file)."""
        d = self.to_dict()
        d.pop("calibration", None)
        write_json_atomic(files.card, d)


def _check_version(d: Mapping[str, Any], where: str) -> None:
    version = d.get("card_version", 1)  # release 0.1.0 wrote no version: version 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{where} has an invalid card_version {version!r}; train the run again")
    if version > CARD_VERSION:
        by = d.get("pneumoscope_version", "a newer release")
        raise UserError(
            f"{where} was written by pneumoscope {by} (card version {version}); this is "
            f"version {__version__} (card version {CARD_VERSION}): upgrade pneumoscope"
        )


def _build(cls, d: Mapping[str, Any]):
    """A card section from a mapping: known keys as fields, the rest kept in ``extra``."""
    renamed = getattr(cls, "_RENAMED", {})
    old = {renamed[k]: k for k in d if k in renamed and renamed[k] not in d}
    d = {renamed.get(k, k) if renamed.get(k) in old else k: v for k, v in d.items()}
    names = {f.name for f in fields(cls)} - {"extra", "written_as"}
    known = {k: d[k] for k in names if k in d}
    more = {"written_as": old} if old else {}
    return cls(**known, extra={k: v for k, v in d.items() if k not in names}, **more)


def _plain(obj) -> dict[str, Any]:
    """A card section as written: its fields in order, then the keys it did not know."""
    omit = getattr(obj, "_OMIT_EMPTY", frozenset())
    key = getattr(obj, "written_as", {})
    out = {
        key.get(f.name, f.name): getattr(obj, f.name)
        for f in fields(obj)
        if f.name not in ("extra", "written_as")
        and not (f.name in omit and not getattr(obj, f.name))
    }
    return {**out, **obj.extra}


def read_card(run: str | Path | RunFiles) -> ModelCard:
    """The card of a finished run; one line saying what to do when there is none."""
    files = RunFiles.of(run)
    if not files.root.is_dir():
        raise UserError(
            f"run folder not found: {files.root} (train one with 'pneumoscope train "
            f"--data DATA --out {files.root}')"
        )
    if not files.card.is_file() or not files.weights.is_file():
        raise UserError(
            f"{files.root} is not a finished run: {RunFiles.CARD} or {RunFiles.WEIGHTS} is "
            "missing (did training finish?)"
        )
    try:
        d = json.loads(files.card.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{files.card} is not valid JSON ({exc}); train the run again") from None
    return ModelCard.from_dict(d, where=str(files.card))
