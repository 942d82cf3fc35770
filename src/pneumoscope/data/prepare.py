"""`pneumoscope data prepare`: combine sources, remove duplicates, split without leakage.

Flow: read sources (sources.read_source) -> decode + hash + preprocess each image once
(cache.decode_rows on all cores, or ray_prepare.decode_rows_ray on a Ray cluster: the
same results) -> exact and near duplicates (dedupe) -> groups of patients and copies
(groups) -> splits that never cut a group (splits) -> cache, manifest and data report
(data_report).

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

Settings: :class:`pneumoscope.data.config.DataConfig` (presets, config files, flags); the
resolved config is saved as OUT/prepare_config.yaml.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_text_atomic
from pneumoscope.core.ray_session import check_engine
from pneumoscope.data.cache import (
    Decoded,
    PrepareResult,
    decode_rows,
    fail_unreadable,
    write_cache,
    write_csv,
)
from pneumoscope.data.config import DataConfig
from pneumoscope.data.dedupe import find_duplicates
from pneumoscope.data.groups import build_groups, group_names
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.report import Facts, build_report, write_report
from pneumoscope.data.sources import parse_source_spec, read_source
from pneumoscope.data.splits import assign_splits, regroup_splits, resolve_given


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
    engine: str = "local",
    ray_address: str | None = None,
) -> PrepareResult:
    """The whole `data prepare` pipeline; see the module docstring. ``engine`` "ray"
    decodes and hashes on a Ray cluster (:mod:`pneumoscope.data.ray_prepare`), with the
    same results; ``workers`` is the local engine's."""
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    check_engine(engine, ray_address)
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
    dec = _decode([r.path for r in rows], out, pre, workers, progress, (engine, ray_address))
    timing["decode_hash_preprocess"] = time.perf_counter() - t
    ok = np.flatnonzero(dec.ok)
    if len(ok) == 0:
        fail_unreadable(out, rows, dec)
    try:
        return _after_decoding(dc, out, pre, rows, excluded, source_info, dec, ok, timing, t0)
    finally:
        dec.tmp_path.unlink(missing_ok=True)  # moved into images.npy unless a step failed


def _decode(paths, out, pre, workers, progress, engine) -> Decoded:
    if engine[0] == "ray":
        from pneumoscope.data.ray_prepare import decode_rows_ray

        return decode_rows_ray(paths, out, pre, address=engine[1], progress=progress)
    return decode_rows(paths, out, pre, workers, progress)


@dataclass
class _Plan:
    """What happens to the decoded rows: duplicates, groups, drops and splits."""

    dups: object
    full_groups: np.ndarray
    used_groups: np.ndarray
    linked: bool
    conflicts: object
    drop_reason: dict
    kidx: np.ndarray
    split_k: list[str]
    note: str
    moves: list
    final: list[str]


def _plan(dc, sub, dec, ok, source_info, timing) -> _Plan:
    """Duplicates, then groups (patients and copies), drops and leak-free splits."""
    t = time.perf_counter()
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
    kidx = np.flatnonzero([i not in drop_reason for i in range(len(sub))])
    if len(kidx) == 0:
        raise UserError("every image was dropped as a duplicate or a label conflict")
    split_k, note, moves = _make_splits(dc, sub, used_groups, source_rank, kidx, linked)
    final = [""] * len(sub)
    for k, s in zip(kidx, split_k, strict=True):
        final[k] = s
    timing["groups_and_splits"] = time.perf_counter() - t
    return _Plan(
        dups,
        full_groups,
        used_groups,
        linked,
        conflicts,
        drop_reason,
        kidx,
        split_k,
        note,
        moves,
        final,
    )


def _after_decoding(dc, out, pre, rows, excluded, source_info, dec, ok, timing, t0):
    """Duplicates, groups, drops, splits, cache and report, over the decoded rows ``ok``
    ("local" indices 0..n-1 below)."""
    sub = [rows[i] for i in ok]
    plan = _plan(dc, sub, dec, ok, source_info, timing)
    t = time.perf_counter()
    names = group_names(plan.used_groups)
    info = {
        "n_excluded": len(excluded),
        "n_dropped": len(plan.drop_reason),
        "data": {"config": dc.to_dict(), "sources": source_info},
    }
    res = write_cache(
        out,
        pre,
        rows,
        dec,
        ok[plan.kidx],
        {"split": plan.split_k, "group": names[plan.kidx]},
        plan.note,
        info=info,
    )
    _write_side_tables(
        out,
        sub,
        excluded,
        plan.dups,
        plan.final,
        plan.drop_reason,
        plan.used_groups,
        plan.linked,
        dc,
    )
    write_text_atomic(out / "prepare_config.yaml", dc.to_yaml())
    timing["write"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t0
    res.report = build_report(_facts(dc, source_info, sub, excluded, res, plan, timing))
    write_report(out, res.report)
    return res


def _facts(dc, source_info, sub, excluded, res, plan: _Plan, timing) -> Facts:
    """Everything the data report states, gathered once."""
    return Facts(
        config=dc.to_dict(),
        sources=source_info,
        rows=sub,
        excluded=excluded,
        rejected=res.rejected,
        pairs=plan.dups.pairs,
        clusters=plan.dups.cluster,
        used_groups=plan.used_groups,
        full_groups=plan.full_groups,
        given=[r.split for r in sub],
        final=plan.final,
        drop_reason=plan.drop_reason,
        conflicts=plan.conflicts,
        moves=plan.moves,
        split_note=plan.note,
        threshold=dc.near_threshold,
        timing=timing,
    )


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
