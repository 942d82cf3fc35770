"""The data-preparation config: every setting that decides a prepared dataset.

A YAML file (``--config``) or a preset shipped in the package (``--preset NAME`` =
``pneumoscope/presets/data/NAME.yaml``) holds any of the DataConfig fields; command-line
flags override it (``--source NAME=PATH`` with a preset's source NAME changes that
source's path only; other ``--source`` values replace the list). The resolved config is
saved as OUT/prepare_config.yaml, and ``--config OUT/prepare_config.yaml`` repeats it.
Relative source paths are relative to the current folder. Each field's description is
also its flag's ``--help``.

Light on purpose (no numpy, no OpenCV at import), so ``data prepare --help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from pneumoscope.core.errors import UserError
from pneumoscope.core.settings import (
    Number,
    SettingError,
    Settings,
    Whole,
    did_you_mean,
    preset_file,
    preset_folder,
    preset_names,
    read_yaml,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from pneumoscope.data.preprocess import PreprocessConfig

PRESETS = "data"  # pneumoscope/presets/data/
NEAR_THRESHOLD = 24  # dedupe.NEAR_THRESHOLD, the default (a test keeps the two equal)
AgeGroup = Literal["child", "adult"]


class DataConfig(Settings):
    """Everything that decides a prepared dataset (not where it goes or how fast)."""

    flag_names = {"sources": "source"}

    sources: list[str] = Field(
        default_factory=list,
        validate_default=True,
        description="PATH or NAME=PATH, repeatable: a folder with NORMAL/ and PNEUMONIA/ "
        "(optionally inside train|val|test/), the Covid-19 & Pneumonia layout, a CSV of "
        "path,label[,...], an RSNA folder or a PneumoniaMNIST .npz. NAME=PATH with a "
        "preset's source NAME moves that source; other values replace a preset's sources. "
        "When copies are dropped, the first-listed source's copy is kept.",
    )
    layout: dict[str, str] = Field(
        default_factory=dict,
        description="LAYOUT or NAME=LAYOUT where detection is ambiguous: class-folders | "
        "covid19-pneumonia | csv | medmnist | rsna.",
    )
    covid_as: Literal["exclude", "pneumonia"] = Field(
        "exclude",
        description="COVID19 folder of the Covid-19 & Pneumonia layout, and COVID-19 labels "
        "(COVID-19, COVID19, covid) of a CSV list: exclude [default] | pneumonia.",
    )
    rsna_not_normal: Literal["exclude", "normal"] = Field(
        "exclude", description="RSNA 'No Lung Opacity / Not Normal': exclude [default] | normal."
    )
    age_group: dict[str, AgeGroup] = Field(
        default_factory=dict,
        description="child | adult, or NAME=child|adult: the age group of images whose age "
        "the source does not give (for per-group evaluation).",
    )
    split: Literal["given", "regroup"] = Field(
        "given",
        description="given [default]: keep the sources' splits, a group found in several "
        "moves whole; regroup: a fresh split of whole groups by --fractions and --seed.",
    )
    val_fraction: Number = Field(
        0.1,
        description="given: validation share carved from train (grouped, stratified by "
        "label) when no usable val split is given [0.1].",
    )
    fractions: list[Number] = Field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        description="regroup: train,val,test shares, stratified by label (and source) "
        "[0.8,0.1,0.1].",
    )
    straddle: Literal["test-side", "first-source", "keep"] = Field(
        "test-side",
        description="given: where a group that the sources put in several splits goes: "
        "test-side [default] | first-source (the first-listed source's split) | keep "
        "(naive: leaks, reported).",
    )
    dedupe: Literal["group", "drop", "off"] = Field(
        "group",
        description="group [default]: copies share one split, all kept | drop: one image "
        "per duplicate cluster | off: naive, copies not linked (leaks reported).",
    )
    conflicts: Literal["drop", "keep"] = Field(
        "drop", description="Duplicates that carry both labels: drop [default] | keep (grouped)."
    )
    near_threshold: Whole = Field(
        NEAR_THRESHOLD,
        description="Near duplicate: Hamming distance between 256-bit perceptual hashes "
        f"[{NEAR_THRESHOLD}]; -1 = exact duplicates only.",
    )
    img_size: Whole = Field(224, description="Square side in pixels after resizing [224].")
    clahe: bool = Field(True, description="Contrast-limited adaptive histogram equalisation [on].")
    seed: Whole = Field(0, description="Seed of the splits [0].")
    preset: str = Field("", description="The preset's name, for the report.")

    def preprocess(self) -> PreprocessConfig:
        """The images' PreprocessConfig (size and CLAHE)."""
        from pneumoscope.data.preprocess import PreprocessConfig  # OpenCV: on use

        return PreprocessConfig(img_size=self.img_size, clahe=self.clahe)

    @field_validator("sources", mode="before")
    @classmethod
    def _source_list(cls, v: Any) -> Any:
        if isinstance(v, str | Path):
            v = [v]
        return [str(s) for s in v] if isinstance(v, list | tuple) else v

    @field_validator("sources")
    @classmethod
    def _some_source(cls, v: list[str]) -> list[str]:
        if not v:
            raise SettingError(
                "no source: give --source PATH (or NAME=PATH, repeatable), or a --preset / "
                "--config that lists sources",
                "sources",
            )
        return v

    @field_validator("layout", mode="before")
    @classmethod
    def _layouts(cls, v: Any) -> dict[str, str]:
        from pneumoscope.data.sources import layout_choices  # the registry: on use

        keyed, choices = parse_keyed(v, "layout"), layout_choices()
        for value in keyed.values():
            if value not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return keyed

    @field_validator("age_group", mode="before")
    @classmethod
    def _age_groups(cls, v: Any) -> dict[str, str]:
        return parse_keyed(v, "age-group")

    @field_validator("fractions", mode="before")
    @classmethod
    def _fraction_text(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        try:
            return [float(x) for x in v.replace("/", ",").split(",")]
        except ValueError:
            raise ValueError(f"must look like 0.8,0.1,0.1, got {v!r}") from None

    @field_validator("fractions")
    @classmethod
    def _fraction_sum(cls, fr: list[float]) -> list[float]:
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6 or fr[0] == 0:
            raise ValueError(f"must be three numbers train,val,test that sum to 1, got {fr}")
        return fr

    @field_validator("dedupe", mode="before")
    @classmethod
    def _bare_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare off as false

    @field_validator("val_fraction")
    @classmethod
    def _val_share(cls, v: float) -> float:
        if not 0.0 < v < 0.5:
            raise ValueError(f"must be between 0 and 0.5, got {v}")
        return v

    @field_validator("img_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if not 32 <= v <= 1024:
            raise ValueError(f"must be between 32 and 1024, got {v}")
        return v

    @field_validator("near_threshold")
    @classmethod
    def _threshold(cls, v: int) -> int:
        from pneumoscope.data.dedupe import PHASH_BITS  # OpenCV: on use

        if not -1 <= v < PHASH_BITS // 2:
            raise ValueError(
                f"must be between -1 (exact duplicates only) and {PHASH_BITS // 2 - 1} bits "
                f"of {PHASH_BITS}, got {v}"
            )
        return v

    @model_validator(mode="after")
    def _regroup_needs_val_and_test(self) -> DataConfig:
        if self.split == "regroup" and 0 in self.fractions[1:]:
            raise SettingError("--split regroup needs val and test fractions above 0", "split")
        return self


def parse_keyed(values: list[str] | dict | str | None, what: str) -> dict[str, str]:
    """``["child"]`` / ``["pediatric=child", ...]`` / ``{"pediatric": "child"}`` ->
    {source or "*": value}; a bare value applies to every source."""
    if values is None:
        return {}
    if isinstance(values, dict):
        return {str(k): str(v) for k, v in values.items()}
    if isinstance(values, str):
        values = [values]
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = str(item).partition("=")
        key, val = (name.strip(), value.strip()) if sep else ("*", name.strip())
        if not key or not val:
            raise UserError(f"bad --{what} {item!r}: give VALUE or SOURCE=VALUE")
        out[key] = val
    return out


def preset_path(name: str) -> Traversable:
    """The shipped preset ``name`` (pneumoscope/presets/data/NAME.yaml)."""
    path = preset_file(PRESETS, name)
    if path is None:
        names = preset_names(PRESETS)
        raise UserError(
            f"unknown --preset {name!r}{did_you_mean(name, names)}: choose one of "
            f"{', '.join(names) or 'none'} (files in {preset_folder(PRESETS)}), or give "
            "--config FILE"
        )
    return path


def load_config_file(path: str | Path) -> dict:
    """A YAML mapping of DataConfig fields (dashes or underscores)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--config file not found: {path}")
    return read_yaml(path)


def resolve_config(
    preset: str | None = None, config: str | Path | None = None, **flags
) -> DataConfig:
    """Defaults < preset or config file < command-line flags (those not None)."""
    if preset and config:
        raise UserError("give --preset or --config, not both")
    values: dict = {}
    where = None
    if preset:
        path = preset_path(preset)
        values, where = {**read_yaml(path), "preset": preset}, str(path)
    elif config:
        values, where = load_config_file(config), str(Path(config).expanduser())
    given = {k: v for k, v in flags.items() if v is not None and v != []}
    if "sources" in given and isinstance(values.get("sources"), list) and values["sources"]:
        given["sources"] = _override_sources(list(values["sources"]), list(given["sources"]))
    return DataConfig.layered(values, given, where)


def _override_sources(base: list[str], given: list[str]) -> list[str]:
    """Command-line sources over a preset's: when every one is NAME=PATH with a NAME of the
    preset, only those paths change (order kept); otherwise the list is replaced."""
    names = [str(s).partition("=")[0] for s in base]
    swaps = {}
    for spec in given:
        name, sep, path = str(spec).partition("=")
        if not sep or name not in names or Path(spec).expanduser().exists():
            return given
        swaps[name] = spec
    return [swaps.get(n, s) for n, s in zip(names, base, strict=True)]
