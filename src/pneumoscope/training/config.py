"""The training config: one typed settings model, loadable from YAML presets, flags on top.

A preset (``pneumoscope/presets/train/seed1-cnn.yaml``, shipped in the package) is a plain
mapping of ``TrainConfig`` fields; ``augment`` is a nested mapping of ``AugmentConfig``
fields. Resolution order: field defaults < config file < command-line flags. The resolved
config is saved as RUN/config.yaml, and ``pneumoscope train --config RUN/config.yaml``
repeats the run. Each field's description is also its flag's ``--help``.

This module imports no torch (until a config is built), so ``pneumoscope train --help``
stays instant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from pneumoscope.core.errors import UserError
from pneumoscope.core.settings import (
    Number,
    SettingError,
    Settings,
    Text,
    Whole,
    preset_file,
    preset_names,
    read_yaml,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

Imbalance = Literal["none", "pos-weight", "sampler"]
IMBALANCE_CHOICES = get_args(Imbalance)
BalanceGroups = Literal["none", "age_group"]  # a manifest column whose values are drawn evenly
# auto | bf16 | fp32 (pneumoscope.training.precision); the rest are Lightning's own names,
# kept so that older run configs repeat unchanged
Precision = Literal[
    "auto", "bf16", "fp32", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64", "64-true"
]
# With --resume, only these may differ from the run's saved config: they change neither
# the numbers nor the order in which anything happens.
RESUME_OVERRIDABLE = ("max_minutes", "threads")
PRESETS = "train"  # pneumoscope/presets/train/


def _augment_defaults() -> dict[str, Any]:
    from pneumoscope.data.augment import AugmentConfig  # torch: imported on use, not with the CLI

    return AugmentConfig().to_dict()


# settings added after release 0.1, with their "off" value: written to config.yaml only
# when switched on, so that a run's config from before them reads back and writes out
# unchanged
LATER_SWITCHES = {"tta": 0, "balance_groups": "none"}
# settings renamed since they were first written: a saved config.yaml (or preset) with the
# old name loads as the new one; new files are written with the new name
RENAMED = {"threshold_views": "threshold_tta", "test_views": "tta"}
# settings that were tried and not adopted (experiments/), with the value that meant "off":
# a saved config.yaml that has them still loads; they are dropped, and train says so when
# one was on, since the run then trains without it
RETIRED = {"fit_to_time": False, "ema_decay": 0.0}
RETIRED_AUGMENT = {"zoom_out": 0.0}


def drop_retired(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``values`` without the retired settings, renamed ones (RENAMED) under their new
    name, and a note for each retired one that was on."""
    notes: list[str] = []
    values = {RENAMED.get(k, k): v for k, v in values.items() if RENAMED.get(k) not in values}
    out = {k: v for k, v in values.items() if k not in RETIRED}
    notes += [f"{k}: {values[k]}" for k, off in RETIRED.items() if values.get(k, off) != off]
    augment = out.get("augment")
    if isinstance(augment, dict):
        out["augment"] = {k: v for k, v in augment.items() if k not in RETIRED_AUGMENT}
        notes += [
            f"augment.{k}: {augment[k]}"
            for k, off in RETIRED_AUGMENT.items()
            if augment.get(k, off) != off
        ]
    return out, notes


class TrainConfig(Settings):
    default_in_help = True
    # retired settings that were on in the file this config was read from (drop_retired)
    _retired: list[str] = PrivateAttr(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return {k: v for k, v in d.items() if k not in LATER_SWITCHES or v != LATER_SWITCHES[k]}

    def retired_note(self) -> str:
        """One line naming the retired settings that were on, or ''."""
        if not self._retired:
            return ""
        return (
            f"ignored: {', '.join(self._retired)} (tried and not adopted, no longer in "
            "pneumoscope; the run trains without it)"
        )

    data: Text = Field(description="A folder made by 'pneumoscope data prepare'.")
    out: Text = Field(description="Run folder to write (weights, model.json, history).")
    model: str = Field(
        "resnet18",
        description="'seed_cnn' (the Keras design's 5-block CNN) or any timm model name "
        "(resnet18, efficientnet_b0, ...).",
    )
    # input: the cache fixes size and CLAHE; None means "whatever the cache holds"
    img_size: Whole | None = Field(
        None,
        description="Image size the config expects; must be the cache's (prepare a cache "
        "with 'data prepare --img-size N'). Default: the cache's.",
    )
    clahe: bool | None = Field(
        None, description="CLAHE the config expects; must be the cache's (null: the cache's)."
    )
    in_chans: Whole = Field(
        1,
        description="Network input channels: 1, or 3 (gray repeated, as ImageNet models expect).",
    )
    normalization: Literal["dataset", "imagenet", "none"] = Field(
        "dataset",
        description="dataset (training images' mean/std) | imagenet (ImageNet mean/std) | "
        "none (pixel / 255).",
    )
    eval_crop: Number = Field(
        1.0,
        description="Evaluation and inference: resize by this factor, then centre-crop back "
        "(1.15 = the PyTorch design's resize 1.15x + center crop; 1 = none). Stored in "
        "model.json and applied by predict/evaluate/export.",
    )
    # initial weights
    pretrained: bool = Field(
        False,
        description="Start from timm's ImageNet weights (downloaded once into the Hugging "
        "Face cache; offline, use --weights). The 1000-class head is dropped, the stem "
        "adapted to --in-chans.",
    )
    weights: Text | None = Field(
        None,
        description="Start from a local file: a timm/Hugging Face checkpoint (.safetensors, "
        "or .pth/.pt/.bin of plain tensors) or a previous pneumoscope run folder "
        "(fine-tuning).",
    )
    freeze_epochs: Whole = Field(
        0, description="Train only the classifier for this many first epochs."
    )
    # optimisation
    epochs: Whole = Field(25, description="Maximum epochs (early stopping may end sooner).")
    batch_size: Whole = Field(32, description="Images per step and process.")
    optimizer: Literal["adamw", "rmsprop", "sgd"] = Field(
        "adamw",
        description="adamw | rmsprop (Keras's: rho 0.9) | sgd (Nesterov momentum 0.9).",
    )
    lr: Number = Field(1e-3, description="Peak learning rate.")
    weight_decay: Number = Field(0.05, description="Weight decay.")
    scheduler: Literal["cosine", "plateau", "constant"] = Field(
        "cosine",
        description="cosine (linear warm-up, then cosine to 1% of --lr, per step) | plateau "
        "(halve the rate when validation AUROC stalls for 2 epochs) | constant.",
    )
    warmup_epochs: Number = Field(1.0, description="Warm-up epochs of the cosine schedule.")
    plateau_factor: Number = Field(0.5, description="plateau: the factor the rate is cut by.")
    plateau_patience: Whole = Field(2, description="plateau: epochs without progress first.")
    imbalance: Imbalance = Field(
        "pos-weight",
        description="Exactly one class-imbalance compensation, never two: pos-weight (BCE "
        "pos_weight = N_NORMAL / N_PNEUMONIA, so both classes weigh the same in the loss; "
        "below 1 when pneumonia is the majority) | sampler (draw both classes equally "
        "often) | none.",
    )
    balance_groups: BalanceGroups = Field(
        "none",
        description="none | age_group: draw each age group of the training split (the "
        "cache's child, adult) equally often, so a few hundred adult films are not drowned "
        "by thousands of children's. With --imbalance sampler each (age group, class) cell "
        "present is drawn equally often (a group holding one class gives that cell a whole "
        "share); with pos-weight, still a loss weight, pos_weight is NORMAL / PNEUMONIA of "
        "the group-balanced draws; with none, the groups only. Every training image needs "
        "an age group (data prepare --age-group NAME=child|adult where a source gives no "
        "ages).",
    )
    patience: Whole = Field(6, description="Early stopping patience on validation AUROC, epochs.")
    max_minutes: Number | None = Field(
        None,
        description="Stop training after this many minutes (0 = no limit); the best epoch "
        "so far is kept and --resume can continue.",
    )
    seed: Whole = Field(
        0,
        description="Seed for weights, order and augmentation (a CPU run repeats bit for bit).",
    )
    threads: Whole | None = Field(
        None, description="CPU threads per process (0 = cores / processes)."
    )
    augment: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="Augmentation setting KEY=VALUE, repeatable: rotation, zoom, shift, crop, "
        "aspect, hflip, vflip, brightness, contrast, gamma, fill (see README).",
    )
    # hardware
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        "auto", description="auto | cpu | gpu | mps."
    )
    devices: Whole = Field(
        1, description="Processes (GPUs, or CPU processes) per node; >1 runs DDP."
    )
    num_nodes: Whole = Field(1, description="Machines (DDP).")
    strategy: Literal["auto", "ddp", "ddp_spawn"] = Field(
        "auto", description="auto | ddp | ddp_spawn (with --devices or --num-nodes > 1)."
    )
    precision: Precision = Field(
        "auto",
        description="auto (bf16 mixed precision on a CPU with AMX-BF16 or AVX512-BF16 or a "
        "GPU with native bf16, float32 elsewhere; the card says which and why) | bf16 | "
        "fp32. Lightning's names (32, bf16-mixed, 16-mixed on CUDA, bf16-true) work too.",
    )
    # the threshold is chosen on validation plus this many augmented copies of each image
    threshold_tta: Whole = Field(
        0,
        description="Choose the threshold on validation plus this many copies of each "
        "validation image under the training augmentation (0 = plain validation only; see "
        "calibrate --threshold-tta).",
    )
    # every score averages the film's logit and this many augmented copies of it
    tta: Whole = Field(
        0,
        description="Test-time augmentation: every command scores a film by averaging the "
        "logit of the film and this many copies under the training augmentation (seeded; "
        "K + 1 forward passes a film); temperature and threshold are fitted on those "
        "averaged scores (0 = the plain film; see calibrate --tta).",
    )
    channels_last: bool = Field(  # NHWC: 1.08x faster fast-cpu steps here (bench/train.py)
        True,
        description="Channels-last (NHWC) memory layout for the network: faster convolutions "
        "on CPU and GPU (equal up to float rounding; a seeded run still repeats bit for bit).",
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_missing(cls, values: Any) -> Any:
        """An empty data or out (``out: ''`` in a file) is as good as none; a renamed
        setting given by its old name (RENAMED) is the new one."""
        if isinstance(values, dict):
            values = {k: v for k, v in values.items() if k not in ("data", "out") or v}
            for old, new in RENAMED.items():
                if old in values:
                    value = values.pop(old)
                    values.setdefault(new, value)
        return values

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("epochs", "batch_size", "devices", "num_nodes")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("in_chans")
    @classmethod
    def _one_or_three(cls, v: int) -> int:
        if v not in (1, 3):
            raise ValueError(f"must be 1 or 3, got {v}")
        return v

    @field_validator("eval_crop")
    @classmethod
    def _crop_range(cls, v: float) -> float:
        if not 1.0 <= v <= 2.0:
            raise ValueError(f"must be in [1, 2] (1 = no crop), got {v}")
        return v

    @field_validator("threshold_tta", "tta")
    @classmethod
    def _not_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be 0 or more, got {v}")
        return v

    @field_validator("lr")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0 or not math.isfinite(v):
            raise ValueError(f"must be positive, got {v}")
        return v

    @field_validator("augment", mode="before")
    @classmethod
    def _augment(cls, v: Any) -> dict[str, Any]:
        """Given keys over AugmentConfig's defaults, every value in its range."""
        from pneumoscope.data.augment import AugmentConfig

        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of augmentation settings")
        given = {str(k).replace("-", "_"): x for k, x in v.items()}
        known = AugmentConfig.__dataclass_fields__
        bad = sorted(set(given) - set(known))
        if bad:
            raise SettingError(
                f"unknown augment setting(s) {', '.join(bad)}; known: {', '.join(known)}",
                "augment",
            )
        merged = {**_augment_defaults(), **given}
        try:
            AugmentConfig.from_dict(merged).check()
        except UserError as exc:
            raise SettingError(str(exc), "augment") from None
        return merged

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.freeze_epochs < 0 or self.freeze_epochs >= self.epochs:
            raise SettingError(
                f"--freeze-epochs must be in [0, epochs) ({self.epochs}), got {self.freeze_epochs}",
                "freeze_epochs",
            )
        if self.pretrained and self.weights:
            raise SettingError("give --pretrained or --weights FILE, not both", "weights")
        return self


# --- configs and presets --------------------------------------------------------------------


def find_config(name: str | Path) -> Path | Traversable:
    """A config file path, a run folder's config.yaml, or a preset name looked up in
    ./configs (your own) and in the presets shipped with the package."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    from pneumoscope.model.contract import RunFiles  # on use: keeps --help fast

    if p.is_dir() and RunFiles(p).config.is_file():  # a run folder
        return RunFiles(p).config
    for cand in (Path("configs") / f"{name}.yaml", Path("configs") / f"{name}.yml"):
        if cand.is_file():
            return cand
    shipped = preset_file(PRESETS, str(name))
    if shipped is not None:
        return shipped
    presets = preset_names(PRESETS)
    hint = f" (presets: {', '.join(presets)})" if presets else ""
    raise UserError(f"config not found: {name}; give a YAML file, a run folder or a preset{hint}")


def resolve_config(config: str | Path | None, overrides: dict) -> TrainConfig:
    """Defaults < the config file < ``overrides`` (flags actually given). ``augment``
    overrides merge key by key into the file's augment mapping."""
    values: dict = {}
    where = None
    if config is not None:
        path = find_config(config)
        values, where = read_yaml(path), str(path)
    values, retired = drop_retired(values)
    over = {str(k).replace("-", "_"): v for k, v in overrides.items()}
    if over.get("weights") and "pretrained" not in over:
        over["pretrained"] = False  # a weights file given by flag replaces a preset's download
    if "augment" in over and isinstance(values.get("augment"), dict):
        over["augment"] = {**values["augment"], **over["augment"]}
    cfg = TrainConfig.layered(values, over, where)
    cfg._retired = retired
    return cfg


def resume_config(run: str | Path, overrides: dict) -> TrainConfig:
    """The run's own config.yaml; only settings that cannot change the result may differ."""
    run = Path(run).expanduser()
    from pneumoscope.model.contract import RunFiles  # on use: keeps --help fast

    path = RunFiles(run).config
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
    values, retired = drop_retired(read_yaml(path))
    cfg = TrainConfig.layered(values, {**overrides, "out": str(run)}, str(path))
    cfg._retired = retired
    return cfg


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
    "--pretrained --precision bf16 --devices 4 --strategy ddp\n\n"
    "  pneumoscope train --data work/data128 --out runs/aug --augment rotation=15 "
    "--augment hflip=0.5 --augment gamma=0.2\n\n"
    "Presets (shipped in the package, pneumoscope/presets/train): seed1-cnn (the Keras "
    "design), seed2-efficientnet (the PyTorch design), fast-cpu. Precedence: defaults < "
    "--config file < flags given. The resolved config is saved as RUN/config.yaml."
)


def parse_augment(items: list[str] | None) -> dict:
    """--augment KEY=VALUE flags -> {key: value}, values typed as YAML types them."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--augment takes KEY=VALUE (e.g. --augment rotation=15), got '{item}'")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out
