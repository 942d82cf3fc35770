"""`pneumoscope data prepare`: combine sources, remove duplicates, split without leakage.

Flow: read sources (sources.read_source) -> decode + hash + preprocess each image once
(cache.decode_rows, all cores) -> exact and near duplicates (dedupe) -> groups of
patients and copies (groups) -> splits that never cut a group (splits) -> cache,
manifest and data report (data_report).

Duplicate policy (``dedupe``):
  * ``group`` (default): copies join one group, so they always share a split; every
    copy stays in the cache. Keeps a single source's published test split intact (the
    pediatric test set keeps its 624 images, among them 6 pixel-identical pairs).
  * ``drop``: as ``group``, then only one image per duplicate cluster is cached: the one
    from the first-listed source (then the larger, then the first by path). Use it when
    combining sources that copy each other: counts and confidence intervals then count
    each image once. dropped.csv lists what was dropped and the copy kept.
  * ``off``: naive, as published: no duplicate links, no dropping. Duplicates are still
    found and the report shows (loudly) how many test images have a copy in train.
Label conflicts (a duplicate cluster holding both labels): ``conflicts=drop`` (default)
leaves the whole cluster out of the cache, since neither label can be trusted and a
contradictory pair in test scores an error whatever the model says; ``keep`` keeps it
grouped. Under ``dedupe=off`` nothing is dropped.

Configs: a YAML file (``--config``) or a preset (``--preset NAME`` = configs/data/NAME.yaml)
holds any of the DataConfig fields; command-line flags override it (``--source NAME=PATH``
with a preset's source NAME changes that source's path only; other ``--source`` values
replace the list). The resolved config
is saved as OUT/prepare_config.yaml, and ``--config OUT/prepare_config.yaml`` repeats it.
Relative source paths are relative to the current folder.
"""

from __future__ import annotations

import difflib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_text_atomic
from pneumoscope.data.cache import (
    PrepareResult,
    decode_rows,
    fail_unreadable,
    write_cache,
    write_csv,
)
from pneumoscope.data.dedupe import NEAR_THRESHOLD, PHASH_BITS, find_duplicates
from pneumoscope.data.groups import build_groups, group_names
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.report import Facts, build_report, write_report
from pneumoscope.data.sources import LAYOUTS, parse_source_spec, read_source
from pneumoscope.data.splits import STRADDLE_RULES, assign_splits, regroup_splits, resolve_given

PRESET_DIR = Path(__file__).resolve().parents[3] / "configs" / "data"  # the repository's presets
SPLIT_MODES = ("given", "regroup")
DEDUPE_MODES = ("group", "drop", "off")
CONFLICT_MODES = ("drop", "keep")
STRADDLE_CHOICES = (*STRADDLE_RULES, "keep")  # keep: naive, groups may straddle (reported)
AGE_GROUPS = ("child", "adult")


@dataclass
class DataConfig:
    """Everything that decides a prepared dataset (not where it goes or how fast)."""

    sources: list[str] = field(default_factory=list)  # "PATH" or "NAME=PATH", in priority order
    layout: dict[str, str] = field(default_factory=dict)  # source name (or "*") -> layout
    covid_as: str = "exclude"
    rsna_not_normal: str = "exclude"
    age_group: dict[str, str] = field(default_factory=dict)  # source (or "*") -> child|adult
    split: str = "given"
    val_fraction: float = 0.1  # given: validation carved from train when none is given
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # regroup
    straddle: str = "test-side"  # given: where a group in several given splits goes
    dedupe: str = "group"
    conflicts: str = "drop"
    near_threshold: int = NEAR_THRESHOLD  # Hamming distance of 256 bits; -1: exact only
    img_size: int = 224
    clahe: bool = True
    seed: int = 0
    preset: str = ""  # the preset's name, for the report

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(img_size=self.img_size, clahe=self.clahe)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        _choice("split", self.split, SPLIT_MODES)
        _choice("dedupe", self.dedupe, DEDUPE_MODES)
        _choice("conflicts", self.conflicts, CONFLICT_MODES)
        _choice("straddle", self.straddle, STRADDLE_CHOICES)
        _choice("covid-as", self.covid_as, ("exclude", "pneumonia"))
        _choice("rsna-not-normal", self.rsna_not_normal, ("exclude", "normal"))
        for v in self.layout.values():
            _choice("layout", v, LAYOUTS)
        for v in self.age_group.values():
            _choice("age-group", v, AGE_GROUPS)
        if not self.sources:
            raise UserError(
                "no source: give --source PATH (or NAME=PATH, repeatable), or a --preset / "
                "--config that lists sources"
            )
        if not 0.0 < self.val_fraction < 0.5:
            raise UserError(f"--val-fraction must be between 0 and 0.5, got {self.val_fraction}")
        if self.img_size < 32 or self.img_size > 1024:
            raise UserError(f"--img-size must be between 32 and 1024, got {self.img_size}")
        fr = self.fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6 or fr[0] == 0:
            raise UserError(
                f"--fractions must be three numbers train,val,test that sum to 1, got {fr}"
            )
        if self.split == "regroup" and 0 in fr[1:]:
            raise UserError("--split regroup needs val and test fractions above 0")
        if not -1 <= self.near_threshold < PHASH_BITS // 2:
            raise UserError(
                f"--near-threshold must be between -1 (exact duplicates only) and "
                f"{PHASH_BITS // 2 - 1} bits of {PHASH_BITS}, got {self.near_threshold}"
            )


def _choice(flag: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"--{flag} must be one of {', '.join(choices)}, got {value!r}")


# --- configs and presets -------------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = preset_names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"unknown --preset {name!r}{hint}: choose one of {', '.join(names) or 'none'} "
            f"(files in {PRESET_DIR}), or give --config FILE"
        )
    return path


def load_config_file(path: str | Path) -> dict:
    """A YAML mapping of DataConfig fields (dashes or underscores), checked for typos."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(
            f"--config {path} must hold a mapping of settings, not {type(raw).__name__}"
        )
    known = {f.name for f in fields(DataConfig)}
    out = {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k not in known:
            close = difflib.get_close_matches(k, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown setting {key!r} in {path}{hint}")
        out[k] = value
    return out


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


def resolve_config(
    preset: str | None = None, config: str | Path | None = None, **flags
) -> DataConfig:
    """Defaults < preset or config file < command-line flags (those not None)."""
    if preset and config:
        raise UserError("give --preset or --config, not both")
    settings: dict = {}
    if preset:
        settings = load_config_file(preset_path(preset))
        settings["preset"] = preset
    elif config:
        settings = load_config_file(config)
    flags = {k: v for k, v in flags.items() if v is not None and v != []}
    if "sources" in flags and settings.get("sources"):
        flags["sources"] = _override_sources(list(settings["sources"]), list(flags["sources"]))
    settings.update(flags)
    if settings.get("dedupe") is False:  # YAML 1.1 reads a bare off as false
        settings["dedupe"] = "off"
    for key in ("layout", "age_group"):
        settings[key] = parse_keyed(settings.get(key), key.replace("_", "-"))
    if isinstance(settings.get("fractions"), str):
        settings["fractions"] = _parse_fractions(settings["fractions"])
    if isinstance(settings.get("sources"), str):
        settings["sources"] = [settings["sources"]]
    settings["sources"] = [str(s) for s in settings.get("sources", [])]
    try:
        dc = DataConfig(**settings)
        dc.fractions = [float(x) for x in dc.fractions]
        dc.val_fraction, dc.img_size = float(dc.val_fraction), int(dc.img_size)
        dc.near_threshold, dc.seed = int(dc.near_threshold), int(dc.seed)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad setting: {exc}") from None
    dc.validate()
    return dc


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


def _parse_fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace("/", ",").split(",")]
    except ValueError:
        raise UserError(f"--fractions must look like 0.8,0.1,0.1, got {text!r}") from None


# --- the pipeline ---------------------------------------------------------------------------


def prepare(
    source: str | Path | list[str | Path],
    out: str | Path,
    cfg: PreprocessConfig,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    **settings,
) -> PrepareResult:
    """Prepare one source (a path) or several (``NAME=PATH`` specs) with ``cfg``'s
    preprocessing; ``settings`` are further DataConfig fields (dedupe="drop", ...)."""
    specs = [source] if isinstance(source, str | Path) else list(source)
    dc = DataConfig(
        sources=[str(s) for s in specs],
        img_size=cfg.img_size,
        clahe=cfg.clahe,
        val_fraction=val_fraction,
        seed=seed,
        **settings,
    )
    dc.layout = parse_keyed(dc.layout, "layout")
    dc.age_group = parse_keyed(dc.age_group, "age-group")
    dc.validate()
    return prepare_data(dc, out, workers=workers, progress=progress, preprocess=cfg)


def _read_sources(dc: DataConfig, out: Path) -> tuple[list, list[dict]]:
    specs = [parse_source_spec(s) for s in dc.sources]
    names = [n for n, _ in specs]
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise UserError(
            f"source name {twice[0]!r} is given twice: name each source (--source NAME=PATH)"
        )
    unknown = (set(dc.layout) | set(dc.age_group)) - set(names) - {"*"}
    if unknown:
        raise UserError(
            f"--layout/--age-group name {sorted(unknown)[0]!r} matches no source "
            f"(sources: {', '.join(names)})"
        )
    reads, info = [], []
    for name, path in specs:
        if not path.exists():
            where = f" (from preset {dc.preset})" if dc.preset else ""
            raise UserError(
                f"source {name!r} not found: {path}{where}; give the folder with "
                f"--source {name}=PATH"
                + (" (a preset's other sources are kept)" if dc.preset and len(specs) > 1 else "")
            )
        if out.resolve() == path.resolve():
            raise UserError("--out must differ from --source (the source is never modified)")
        layout = dc.layout.get(name, dc.layout.get("*", "auto"))
        age = dc.age_group.get(name, dc.age_group.get("*", ""))
        read = read_source(name, path, layout, dc.covid_as, dc.rsna_not_normal, age)
        reads.append(read)
        info.append(
            {
                "name": name,
                "path": str(path),
                "layout": read.layout,
                "n_rows": len(read.rows),
                "n_excluded": len(read.excluded),
                "notes": list(read.notes),
            }
        )
    return reads, info


def prepare_data(
    dc: DataConfig,
    out: str | Path,
    workers: int | None = None,
    progress: bool = True,
    preprocess: PreprocessConfig | None = None,
) -> PrepareResult:
    """The whole `data prepare` pipeline; see the module docstring."""
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    dc.validate()
    pre = preprocess or dc.preprocess()
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    reads, source_info = _read_sources(dc, out)
    rows = [r for rd in reads for r in rd.rows]
    excluded = [e for rd in reads for e in rd.excluded]
    if not rows:
        raise UserError(
            f"no images to prepare: all {len(excluded)} files were left out by a label "
            "policy (see --covid-as and --rsna-not-normal)"
        )
    timing["read_sources"] = time.perf_counter() - t0

    t = time.perf_counter()
    dec = decode_rows([r.path for r in rows], out, pre, workers, progress)
    timing["decode_hash_preprocess"] = time.perf_counter() - t
    ok = np.flatnonzero(dec.ok)
    if len(ok) == 0:
        fail_unreadable(out, rows, dec)
    try:
        return _after_decoding(dc, out, pre, rows, excluded, source_info, dec, ok, timing, t0)
    finally:
        dec.tmp_path.unlink(missing_ok=True)  # moved into images.npy unless a step failed


def _after_decoding(dc, out, pre, rows, excluded, source_info, dec, ok, timing, t0):
    """Duplicates, groups, drops, splits, cache and report, over the decoded rows ``ok``
    ("local" indices 0..n-1 below)."""
    t = time.perf_counter()
    sub = [rows[i] for i in ok]
    labels = np.array([r.label for r in sub])
    srcs = np.array([r.source for r in sub], dtype=object)
    rank = {name: k for k, name in enumerate(s["name"] for s in source_info)}
    source_rank = np.array([rank[s] for s in srcs])
    patients = [r.patient for r in sub]
    dups = find_duplicates([dec.sha1[i] for i in ok], [dec.phash[i] for i in ok], dc.near_threshold)
    timing["duplicates"] = time.perf_counter() - t

    t = time.perf_counter()
    pa, pb = dups.pairs["a"].to_numpy(), dups.pairs["b"].to_numpy()
    full_groups = build_groups(srcs, patients, pa, pb)
    linked = dc.dedupe != "off"
    used_groups = full_groups if linked else build_groups(srcs, patients)
    conflicts = _conflict_clusters(dups.cluster, labels)
    drop_reason = _drop_decisions(dc, sub, dec, ok, dups.cluster, conflicts, source_rank)
    keep = np.array([i not in drop_reason for i in range(len(sub))])
    kidx = np.flatnonzero(keep)
    if len(kidx) == 0:
        raise UserError("every image was dropped as a duplicate or a label conflict")
    split_k, note, moves = _make_splits(dc, sub, used_groups, source_rank, kidx, linked)
    final = [""] * len(sub)
    for k, s in zip(kidx, split_k, strict=True):
        final[k] = s
    timing["groups_and_splits"] = time.perf_counter() - t

    t = time.perf_counter()
    names = group_names(used_groups)
    res = write_cache(
        out,
        pre,
        rows,
        dec,
        ok[kidx],
        {"split": split_k, "group": names[kidx]},
        note,
        info={
            "n_excluded": len(excluded),
            "n_dropped": len(drop_reason),
            "data": {"config": dc.to_dict(), "sources": source_info},
        },
    )
    _write_side_tables(out, sub, excluded, dups, final, drop_reason, used_groups, linked, dc)
    write_text_atomic(out / "prepare_config.yaml", yaml.safe_dump(dc.to_dict(), sort_keys=False))
    timing["write"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t0
    facts = Facts(
        config=dc.to_dict(),
        sources=source_info,
        rows=sub,
        excluded=excluded,
        rejected=res.rejected,
        pairs=dups.pairs,
        clusters=dups.cluster,
        used_groups=used_groups,
        full_groups=full_groups,
        given=[r.split for r in sub],
        final=final,
        drop_reason=drop_reason,
        conflicts=conflicts,
        moves=moves,
        split_note=note,
        threshold=dc.near_threshold,
        timing=timing,
    )
    res.report = build_report(facts)
    write_report(out, res.report)
    return res


def _make_splits(dc, sub, groups, source_rank, kidx, linked) -> tuple[list[str], str, list]:
    """Final split of the kept rows ``kidx``, a note, and the moves of straddling groups.

    Straddling groups are resolved over every decoded row (a dropped copy's given split
    still counts), validation and unsplit test are carved from the kept rows only.
    """
    labels = np.array([r.label for r in sub])
    moves: list = []
    try:
        if dc.split == "regroup":
            srcs = np.array([r.source for r in sub], dtype=object)
            split_k, note = regroup_splits(
                labels[kidx], srcs[kidx], groups[kidx], tuple(dc.fractions), dc.seed
            )
            return split_k, note, moves
        given = [r.split for r in sub]
        resolved = given
        if dc.straddle != "keep":
            resolved, moves = resolve_given(given, groups, source_rank, dc.straddle)
        split_k, note = assign_splits(
            [resolved[k] for k in kidx],
            labels[kidx].tolist(),
            groups[kidx].tolist(),
            dc.val_fraction,
            dc.seed,
            grouped_by="patient and duplicate" if linked else "patient",
        )
    except ValueError as exc:
        raise UserError(f"cannot split {', '.join(dc.sources)}: {exc}") from None
    if moves:
        n_moved = sum(1 for k in kidx if given[k] and resolved[k] != given[k])
        note += (
            f"; {len(moves)} groups had images in several given splits and were put in one "
            f"({dc.straddle}), moving {n_moved} cached images out of their given split"
        )
    elif dc.straddle == "keep":
        note += "; given splits kept as published, even where a group straddles them"
    return split_k, note, moves


def _conflict_clusters(cluster: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """Duplicate clusters whose members carry both labels (local rows, sorted)."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cluster):
        members.setdefault(int(c), []).append(i)
    return [m for m in members.values() if len(m) > 1 and len(set(labels[m].tolist())) > 1]


def _drop_decisions(dc, sub, dec, ok, cluster, conflicts, source_rank) -> dict[int, str]:
    """Local row -> why it is left out of the cache (duplicate copy or label conflict)."""
    drop: dict[int, str] = {}
    if dc.dedupe == "off":
        return drop
    if dc.conflicts == "drop":
        for members in conflicts:
            for i in members:
                drop[i] = "label conflict: a copy of this image carries the other label"
    if dc.dedupe != "drop":
        return drop
    # one image per cluster; in a conflicting cluster kept on purpose (conflicts=keep),
    # one per label, so that dropping copies never decides which label is right
    conflicting = {int(cluster[m[0]]) for m in conflicts}
    members: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cluster):
        if i not in drop:
            label = sub[i].label if int(c) in conflicting else -1
            members.setdefault((int(c), label), []).append(i)
    pixels = dec.height[ok].astype(np.int64) * dec.width[ok]
    for m in members.values():
        if len(m) < 2:
            continue
        best = min(m, key=lambda i: (source_rank[i], -pixels[i], sub[i].path))
        for i in m:
            if i != best:
                drop[i] = f"duplicate of {sub[best].path}"
    return drop


def _write_side_tables(out, sub, excluded, dups, final, drop_reason, groups, linked, dc) -> None:
    """excluded.csv, dropped.csv and duplicates.csv: every file accounted for."""
    write_csv(
        out / "excluded.csv",
        pd.DataFrame(
            {
                "path": [e.path for e in excluded],
                "source": [e.source for e in excluded],
                "reason": [e.reason for e in excluded],
            },
            columns=["path", "source", "reason"],
        ),
    )
    dropped = sorted(drop_reason)
    write_csv(
        out / "dropped.csv",
        pd.DataFrame(
            {
                "path": [sub[i].path for i in dropped],
                "source": [sub[i].source for i in dropped],
                "source_split": [sub[i].split for i in dropped],
                "label": [sub[i].label for i in dropped],
                "reason": [drop_reason[i] for i in dropped],
            },
            columns=["path", "source", "source_split", "label", "reason"],
        ),
    )
    p = dups.pairs
    a, b = p["a"].to_numpy(), p["b"].to_numpy()

    def col(idx, fn):
        return [fn(i) for i in idx]

    write_csv(
        out / "duplicates.csv",
        pd.DataFrame(
            {
                "kind": p["kind"],
                "distance": p["distance"],
                "path_a": col(a, lambda i: sub[i].path),
                "path_b": col(b, lambda i: sub[i].path),
                "source_a": col(a, lambda i: sub[i].source),
                "source_b": col(b, lambda i: sub[i].source),
                "label_a": col(a, lambda i: sub[i].label),
                "label_b": col(b, lambda i: sub[i].label),
                "source_split_a": col(a, lambda i: sub[i].split),
                "source_split_b": col(b, lambda i: sub[i].split),
                "split_a": col(a, lambda i: final[i] or "dropped"),
                "split_b": col(b, lambda i: final[i] or "dropped"),
                "same_group": [bool(groups[x] == groups[y]) for x, y in zip(a, b, strict=True)],
                "linked": linked,
            }
        ),
    )
