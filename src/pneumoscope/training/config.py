"""The training config: one dataclass, loadable from YAML presets, flags on top.

A preset (``configs/seed1-cnn.yaml``) is a plain mapping of ``TrainConfig`` fields;
``augment`` is a nested mapping of ``AugmentConfig`` fields. Resolution order:
dataclass defaults < config file < command-line flags. The resolved config is saved as
RUN/config.yaml, and ``pneumoscope train --config RUN/config.yaml`` repeats the run.

This module imports no torch, so ``pneumoscope train --help`` stays instant.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from pneumoscope.core.errors import UserError

IMBALANCE_CHOICES = ("none", "pos-weight", "sampler")
OPTIMIZERS = ("adamw", "rmsprop", "sgd")
SCHEDULERS = ("cosine", "plateau", "constant")
NORMALIZATIONS = ("dataset", "imagenet", "none")
STRATEGIES = ("auto", "ddp", "ddp_spawn")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64", "64-true")
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"  # the repository's presets
# With --resume, only these may differ from the run's saved config: they change neither
# the numbers nor the order in which anything happens.
RESUME_OVERRIDABLE = ("max_minutes", "threads")


def _augment_defaults() -> dict:
    from pneumoscope.data.augment import AugmentConfig  # torch: imported on use, not with the CLI

    return AugmentConfig().to_dict()


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "resnet18"
    # input: the cache fixes size and CLAHE; None means "whatever the cache holds"
    img_size: int | None = None
    clahe: bool | None = None
    in_chans: int = 1
    normalization: str = "dataset"
    eval_crop: float = 1.0  # evaluation: resize by this factor, then centre-crop img_size
    # initial weights
    pretrained: bool = False
    weights: str | None = None
    freeze_epochs: int = 0
    # optimisation
    epochs: int = 25
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    scheduler: str = "cosine"
    warmup_epochs: float = 1.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    imbalance: str = "pos-weight"
    patience: int = 6
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = None
    augment: dict = field(default_factory=_augment_defaults)
    # hardware
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32"
    # the threshold is chosen on validation plus this many augmented copies of each image
    threshold_views: int = 0
    channels_last: bool = True  # NHWC: 1.08x faster fast-cpu steps here (bench/train.py)
    # exponential moving average of the weights after every optimiser step (0 = off); the
    # average is what validation scores and what the run saves
    ema_decay: float = 0.0

    def validate(self) -> None:
        _choice("imbalance", self.imbalance, IMBALANCE_CHOICES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("normalization", self.normalization, NORMALIZATIONS)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("accelerator", self.accelerator, ACCELERATORS)
        _choice("precision", str(self.precision), PRECISIONS)
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch-size must be at least 1")
        if self.in_chans not in (1, 3):
            raise UserError(f"--in-chans must be 1 or 3, got {self.in_chans}")
        if not 1.0 <= self.eval_crop <= 2.0:
            raise UserError(f"--eval-crop must be in [1, 2] (1 = no crop), got {self.eval_crop}")
        if self.freeze_epochs < 0 or self.freeze_epochs >= self.epochs:
            raise UserError(
                f"--freeze-epochs must be in [0, epochs) ({self.epochs}), got {self.freeze_epochs}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema-decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.threshold_views < 0:
            raise UserError(f"--threshold-views must be 0 or more, got {self.threshold_views}")
        if self.devices < 1 or self.num_nodes < 1:
            raise UserError("--devices and --num-nodes must be at least 1")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.pretrained and self.weights:
            raise UserError("give --pretrained or --weights FILE, not both")
        from pneumoscope.data.augment import AugmentConfig

        bad = sorted(set(self.augment) - set(AugmentConfig.__dataclass_fields__))
        if bad:
            raise UserError(
                f"unknown augment setting(s) {', '.join(bad)}; known: "
                f"{', '.join(AugmentConfig.__dataclass_fields__)}"
            )
        AugmentConfig.from_dict(self.augment).check()

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "the config") -> TrainConfig:
        """Build from a mapping (a preset, a saved config.yaml); unknown keys are an error
        with the closest field names suggested, so a typo is never silently ignored."""
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UserError(f"unknown setting '{key}' in {where}{hint}")
        missing = [k for k in ("data", "out") if d.get(k) in (None, "")]
        if missing:
            flags = " and ".join(f"--{k}" for k in missing)
            raise UserError(f"{flags} missing: give it on the command line or in {where}")
        aug = _augment_defaults()
        given = d.get("augment") or {}
        if not isinstance(given, dict):
            raise UserError(f"'augment' in {where} must be a mapping of augmentation settings")
        aug.update({str(k).replace("-", "_"): v for k, v in given.items()})
        d["augment"] = aug
        d["data"], d["out"] = str(d["data"]), str(d["out"])
        if d.get("precision") is not None:
            d["precision"] = str(d["precision"])
        if d.get("weights") is not None:
            d["weights"] = str(d["weights"])
        try:
            cfg = cls(**d)
        except TypeError as exc:
            raise UserError(f"bad config in {where}: {exc}") from None
        _check_types(cfg, where)
        return cfg


def field_default(name: str):
    """The dataclass default of one field (for the CLI's --help)."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default if f.default is not MISSING else None


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        flag = "--" + name.replace("_", "-")
        raise UserError(f"{flag} must be one of {', '.join(choices)}, got '{value}'")


def _check_types(cfg: TrainConfig, where: str) -> None:
    """YAML gives strings for typos like 'epochs: ten'; catch them here, not mid-training."""
    numeric = {
        "epochs": int,
        "batch_size": int,
        "in_chans": int,
        "freeze_epochs": int,
        "plateau_patience": int,
        "patience": int,
        "seed": int,
        "devices": int,
        "num_nodes": int,
        "lr": float,
        "weight_decay": float,
        "warmup_epochs": float,
        "plateau_factor": float,
        "eval_crop": float,
    }
    optional = {"img_size": int, "threads": int, "max_minutes": float}
    for name, kind in {**numeric, **optional}.items():
        v = getattr(cfg, name)
        if v is None and name in optional:
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if kind is int and ok and float(v) != int(v):
            ok = False
        if not ok:
            raise UserError(f"'{name}' in {where} must be a number, got {v!r}")
        setattr(cfg, name, kind(v))
    for name in ("pretrained",):
        if not isinstance(getattr(cfg, name), bool):
            raise UserError(f"'{name}' in {where} must be true or false")
    if cfg.clahe is not None and not isinstance(cfg.clahe, bool):
        raise UserError(f"'clahe' in {where} must be true, false or null")


def find_config(name: str | Path) -> Path:
    """A config file path, or a preset name looked up in ./configs and the repository's."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    if p.is_dir() and (p / "config.yaml").is_file():  # a run folder
        return p / "config.yaml"
    for base in (Path("configs"), CONFIG_DIR):
        for cand in (base / f"{name}.yaml", base / f"{name}.yml"):
            if cand.is_file():
                return cand
    presets = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    hint = f" (presets: {', '.join(presets)})" if presets else ""
    raise UserError(f"config not found: {name}; give a YAML file, a run folder or a preset{hint}")


def read_config_file(path: str | Path) -> dict:
    path = find_config(path)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not valid YAML ({first})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} must hold a mapping of settings (key: value)")
    return d


def resolve_config(config: str | Path | None, overrides: dict) -> TrainConfig:
    """Defaults < the config file < ``overrides`` (flags actually given). ``augment``
    overrides merge key by key into the file's augment mapping."""
    d: dict = {}
    where = "the command line"
    if config is not None:
        path = find_config(config)
        d = read_config_file(path)
        where = str(path)
    d = {str(k).replace("-", "_"): v for k, v in d.items()}
    over = dict(overrides)
    if over.get("weights") and "pretrained" not in over:
        over["pretrained"] = False  # a weights file given by flag replaces a preset's download
    if "augment" in over:
        aug = dict(d.get("augment") or {})
        aug.update(over.pop("augment"))
        d["augment"] = aug
    d.update(over)
    return TrainConfig.from_dict(d, where)


def resume_config(run: str | Path, overrides: dict) -> TrainConfig:
    """The run's own config.yaml; only settings that cannot change the result may differ."""
    run = Path(run).expanduser()
    path = run / "config.yaml"
    if not path.is_file():
        raise UserError(f"cannot resume {run}: {path.name} not found (is it a training run?)")
    not_allowed = sorted(k for k in overrides if k not in RESUME_OVERRIDABLE)
    if not_allowed:
        flags = ", ".join("--" + k.replace("_", "-") for k in not_allowed)
        ok = ", ".join("--" + k.replace("_", "-") for k in RESUME_OVERRIDABLE)
        raise UserError(
            f"with --resume the run's saved config is used; {flags} cannot change "
            f"(only {ok} can); start a new run with --config {path} to change them"
        )
    d = read_config_file(path)
    d.update(overrides)
    d["out"] = str(run)
    return TrainConfig.from_dict(d, str(path))


TRAIN_EPILOG = (
    "Examples:\n\n"
    "  pneumoscope train --data work/data128 --out runs/r18 --model resnet18 --epochs 20\n\n"
    "  pneumoscope train --config seed1-cnn --data work/data150 --out runs/seed1\n\n"
    "  pneumoscope train --config seed2-efficientnet --data work/data224_noclahe --out "
    "runs/seed2 --weights ~/efficientnet_b0.safetensors\n\n"
    "  pneumoscope train --config runs/seed1/config.yaml --out runs/seed1_again   (repeat a run)"
    "\n\n"
    "  pneumoscope train --data work/children --out runs/ft --model resnet18 --weights "
    "runs/adults --lr 3e-4   (fine-tune a previous run)\n\n"
    "  pneumoscope train --resume runs/r18 --max-minutes 90   (continue a killed run)\n\n"
    "  pneumoscope train --data work/data224 --out runs/b0 --model efficientnet_b0 "
    "--pretrained --precision bf16-mixed --devices 4 --strategy ddp\n\n"
    "  pneumoscope train --data work/data128 --out runs/aug --augment rotation=15 "
    "--augment hflip=0.5 --augment gamma=0.2\n\n"
    "Presets (configs/): seed1-cnn (the Keras design), seed2-efficientnet (the PyTorch "
    "design), fast-cpu. Precedence: defaults < --config file < flags given. The resolved "
    "config is saved as RUN/config.yaml."
)


def default_note(name: str) -> str:
    """' Default: X.' for a flag's --help."""
    v = field_default(name)
    return f" Default: {'none' if v is None else v}."


def parse_augment(items: list[str] | None) -> dict:
    """--augment KEY=VALUE flags -> {key: value}, values typed as YAML types them."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--augment takes KEY=VALUE (e.g. --augment rotation=15), got '{item}'")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out
