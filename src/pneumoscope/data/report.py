"""The data report of ``pneumoscope data prepare``: what was read, what was left out and
why, which images are copies of which, how groups were moved, final counts, and a
leakage check. Written as data_report.json (for tools), data_report.md (for people, from
the template templates/data_report.md.j2) and a short terminal summary.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from pneumoscope.core import CLASS_NAMES, __version__
from pneumoscope.core.io import write_json_atomic, write_text_atomic
from pneumoscope.data.dedupe import PHASH_BITS
from pneumoscope.data.public.catalog import identify
from pneumoscope.data.records import Excluded, SourceRow
from pneumoscope.data.splits import SPLITS, Move, straddling_groups

MAX_LISTED = 50  # rows listed in the report per section; the CSVs hold them all


@dataclass
class Facts:
    """Everything the report needs, over the decoded rows ("local" indices 0..n-1)."""

    config: dict
    sources: list[dict]  # name, path, layout, notes, n_rows (read), n_excluded
    rows: Sequence[SourceRow]  # decoded rows (local order)
    excluded: Sequence[Excluded]
    rejected: pd.DataFrame
    pairs: pd.DataFrame  # a, b (local), kind, distance
    clusters: np.ndarray  # duplicate cluster root per local row
    used_groups: np.ndarray  # group root per local row (as used for splitting)
    full_groups: np.ndarray  # patients + every duplicate link (for the leakage check)
    given: list[str]  # the sources' split per local row
    final: list[str]  # final split per local row ("" when dropped)
    drop_reason: dict[int, str]  # local row -> why it is not in the cache
    conflicts: list[list[int]]  # duplicate clusters with two labels (local rows)
    moves: list[Move]
    split_note: str
    threshold: int
    timing: dict = field(default_factory=dict)


def build_report(f: Facts) -> dict:
    labels = np.array([r.label for r in f.rows], dtype=int)
    sources = np.array([r.source for r in f.rows], dtype=object)
    final = np.array(f.final, dtype=object)
    kept = final != ""
    dup = _duplicates(f, sources)
    leak = _leakage(f, final, kept)
    report = {
        "pneumoscope_version": __version__,
        "config": f.config,
        "sources": _sources(f, sources, kept),
        "accounting": _accounting(f, kept),
        "rejected": {
            "n": int(len(f.rejected)),
            "reasons": _reason_counts(f.rejected["reason"]) if len(f.rejected) else {},
            "files": f.rejected.head(MAX_LISTED).to_dict("records"),
        },
        "excluded": {
            "n": len(f.excluded),
            "reasons": dict(Counter(e.reason for e in f.excluded)),
        },
        "duplicates": dup,
        "label_conflicts": _conflicts(f, labels),
        "dropped": _dropped(f, sources),
        "groups": _groups(f, kept),
        "splits": _splits(f, kept),
        "counts": _counts(f, labels, sources, final, kept),
        "leakage": leak,
        "timing_s": {k: round(v, 2) for k, v in f.timing.items()},
    }
    report["warnings"] = _warnings(report)
    return report


# --- sections --------------------------------------------------------------------------------


def _sources(f: Facts, sources: np.ndarray, kept: np.ndarray) -> list[dict]:
    rej = Counter(f.rejected["source"]) if len(f.rejected) else Counter()
    out = []
    for s in f.sources:
        name = s["name"]
        mine = sources == name
        dropped = Counter(
            "conflict" if f.drop_reason[i].startswith("label conflict") else "duplicate"
            for i in np.flatnonzero(mine & ~kept)
        )
        out.append(
            {
                **s,
                "rejected": int(rej.get(name, 0)),
                "decoded": int(mine.sum()),
                "dropped_duplicates": dropped.get("duplicate", 0),
                "dropped_conflicts": dropped.get("conflict", 0),
                "cached": int((mine & kept).sum()),
                "dataset": public_set_terms(s),
            }
        )
    return out


def public_set_terms(source: dict) -> dict | None:
    """Title, licence, citation and possible grouping of a source that is a public set
    pneumoscope knows (``data.public.catalog``: by the marker ``data download`` leaves, or
    by its layout); None for any other source."""
    ps = identify(source["path"], source.get("layout", ""))
    if ps is None:
        return None
    return {
        "name": ps.name,
        "title": ps.title,
        "licence": ps.licence,
        "citation": ps.citation,
        "grouping": ps.grouping,
    }


def _accounting(f: Facts, kept: np.ndarray) -> dict:
    n_read = sum(s["n_rows"] for s in f.sources)
    n_excl = len(f.excluded)
    n_rej = int(len(f.rejected))
    n_drop = int((~kept).sum())
    n_cached = int(kept.sum())
    return {
        "files_listed": n_read + n_excl,
        "excluded_by_label_policy": n_excl,
        "rows_read": n_read,
        "rejected_unreadable": n_rej,
        "dropped": n_drop,
        "cached": n_cached,
        "balanced": n_read == n_cached + n_rej + n_drop,
    }


def _reason_counts(reasons: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in reasons.value_counts().items()}


def _duplicates(f: Facts, sources: np.ndarray) -> dict:
    src_a, src_b, across, diff_patient = _pair_sides(f, sources)
    out: dict = {
        "method": {
            "exact": "SHA-1 of the decoded full-resolution grayscale pixels",
            "near": f"{PHASH_BITS}-bit perceptual hash (imagehash.phash, hash_size 16) of a "
            f"64x64 area-resampled gray thumbnail; Hamming distance <= {f.threshold}",
            "threshold": f.threshold,
        }
    }
    for kind in ("exact", "near"):
        k = (f.pairs["kind"] == kind).to_numpy()
        out[kind] = _pair_counts(src_a[k], src_b[k], across[k], diff_patient[k])
    out["clusters"] = _cluster_sizes(f.clusters)
    # share of each source's images whose duplicate cluster reaches another source
    out["images_with_a_copy_in_another_source"] = {
        s["name"]: {
            "n": int(((sources == s["name"]) & _reaches_other(f.clusters, sources)).sum()),
            "of": int((sources == s["name"]).sum()),
        }
        for s in f.sources
    }
    near_d = f.pairs.loc[f.pairs["kind"] == "near", "distance"].to_numpy()
    out["near_distance_histogram"] = {
        int(d): int(n) for d, n in zip(*np.unique(near_d, return_counts=True), strict=True)
    }
    return out


def _pair_sides(f: Facts, sources: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per duplicate pair: the sources of its two images, whether they differ, and whether
    the two lie in one source under different patient ids."""
    a, b = f.pairs["a"].to_numpy(), f.pairs["b"].to_numpy()
    patients = np.array([r.patient for r in f.rows], dtype=object)
    across = sources[a] != sources[b]
    return sources[a], sources[b], across, ~across & (patients[a] != patients[b])


def _pair_counts(
    src_a: np.ndarray, src_b: np.ndarray, across: np.ndarray, diff_patient: np.ndarray
) -> dict:
    """One kind's pairs: within a source, across two, and within a source between
    different patient ids (a copy filed under two patients)."""
    cross = Counter(
        " + ".join(sorted((x, y))) for x, y in zip(src_a[across], src_b[across], strict=True)
    )
    return {
        "pairs": len(src_a),
        "within_source": {s: int(n) for s, n in Counter(src_a[~across]).items()},
        "across_sources": {s: int(n) for s, n in cross.items()},
        "within_source_different_patients": {
            s: int(n) for s, n in Counter(src_a[diff_patient]).items()
        },
    }


def _cluster_sizes(clusters: np.ndarray) -> dict:
    sizes = Counter(clusters.tolist())
    multi = {c: n for c, n in sizes.items() if n > 1}
    return {
        "n": len(multi),
        "images": int(sum(multi.values())),
        "largest": int(max(multi.values(), default=1)),
    }


def _conflicts(f: Facts, labels: np.ndarray) -> dict:
    action = f.config.get("conflicts", "drop")
    listed = []
    for members in f.conflicts[:MAX_LISTED]:
        listed.append(
            [
                {
                    "path": f.rows[i].path,
                    "source": f.rows[i].source,
                    "label": CLASS_NAMES[labels[i]],
                    "split": f.given[i],
                }
                for i in members
            ]
        )
    return {
        "n_clusters": len(f.conflicts),
        "n_images": int(sum(len(m) for m in f.conflicts)),
        "action": "dropped (no trustworthy label)"
        if action == "drop" and f.config.get("dedupe") != "off"
        else "kept (grouped)"
        if f.config.get("dedupe") != "off"
        else "kept (naive: not linked)",
        "clusters": listed,
    }


def _dropped(f: Facts, sources: np.ndarray) -> dict:
    by = Counter(
        (sources[i], f.given[i] or "none", "conflict" if r.startswith("label") else "duplicate")
        for i, r in f.drop_reason.items()
    )
    return {
        "n": len(f.drop_reason),
        "by_source_split_reason": [
            {"source": s, "given_split": sp, "reason": why, "n": n}
            for (s, sp, why), n in sorted(by.items())
        ],
    }


def _groups(f: Facts, kept: np.ndarray) -> dict:
    g = f.used_groups[kept]
    sizes = Counter(g.tolist())
    patients = {(r.source, r.patient) for r, k in zip(f.rows, kept, strict=True) if k}
    dup_linked = len(set(f.clusters[kept].tolist())) < int(kept.sum())
    return {
        "n_groups": len(sizes),
        "n_patients": len(patients),
        "groups_with_several_images": sum(1 for n in sizes.values() if n > 1),
        "largest_group": int(max(sizes.values(), default=0)),
        "duplicates_linked": f.config.get("dedupe") != "off" and dup_linked,
    }


def _splits(f: Facts, kept: np.ndarray) -> dict:
    flows: Counter = Counter()  # cached images that left their given split
    dropped: Counter = Counter()  # copies whose given split differed, not cached
    for m in f.moves:
        for i in m.rows:
            if f.given[i] and f.given[i] != m.to:
                (flows if kept[i] else dropped)[f"{f.given[i]} -> {m.to}"] += 1
    return {
        "strategy": f.config.get("split"),
        "straddle": f.config.get("straddle"),
        "note": f.split_note,
        "moved": {
            "groups": len(f.moves),
            "images": int(sum(flows.values())),
            "flows": dict(flows),
            "dropped_copies_in_other_splits": dict(dropped),
            "examples": [
                {
                    "group_first_image": f.rows[m.group].path,
                    "to": m.to,
                    "given_splits": m.n_from,
                }
                for m in f.moves[:MAX_LISTED]
            ],
        },
    }


def _counts(f, labels, sources, final, kept) -> dict:
    age = np.array([r.age_group or "unknown" for r in f.rows], dtype=object)
    df = pd.DataFrame(
        {
            "split": final[kept],
            "class": [CLASS_NAMES[y] for y in labels[kept]],
            "source": sources[kept],
            "age_group": age[kept],
        }
    )
    detail = df.groupby(["split", "source", "age_group", "class"]).size().rename("n").reset_index()
    detail["order"] = detail["split"].map({s: i for i, s in enumerate(SPLITS)})
    detail = detail.sort_values(["order", "source", "age_group", "class"]).drop(columns="order")
    by_split = {}
    for s in SPLITS:
        sub = df[df["split"] == s]
        if len(sub):
            by_split[s] = {c: int((sub["class"] == c).sum()) for c in CLASS_NAMES}
            by_split[s]["total"] = int(len(sub))
    return {
        "by_split": by_split,
        "by_split_source_age_class": [
            {k: (int(v) if k == "n" else v) for k, v in r.items()}
            for r in detail.to_dict("records")
        ],
    }


def _leakage(f: Facts, final: np.ndarray, kept: np.ndarray) -> dict:
    idx = np.flatnonzero(kept)
    used = straddling_groups(final[idx], f.used_groups[idx])
    full = straddling_groups(final[idx], f.full_groups[idx])
    keys = np.array([f"{r.source}:{r.patient}" for r in f.rows], dtype=object)
    patients = straddling_groups(final[idx], keys[idx])
    # images whose duplicate cluster (exact or near copies) has a member in another split
    other = np.zeros(len(final), dtype=bool)
    other[idx] = _reaches_other(f.clusters[idx], final[idx])
    n_test = int((final == "test").sum())
    n_val = int((final == "val").sum())
    out = {
        "groups_straddling_splits": len(used),
        "duplicate_or_patient_groups_straddling_splits": len(full),
        "patients_straddling_splits": len(patients),
        "test_images_with_a_copy_outside_test": int((other & (final == "test")).sum()),
        "val_images_with_a_copy_outside_val": int((other & (final == "val")).sum()),
        "n_test": n_test,
        "n_val": n_val,
    }
    out["passed"] = (
        out["duplicate_or_patient_groups_straddling_splits"] == 0
        and out["test_images_with_a_copy_outside_test"] == 0
        and out["val_images_with_a_copy_outside_val"] == 0
    )
    return out


def _reaches_other(clusters: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row: does its duplicate cluster hold a row with another value (source, split)?"""
    df = pd.DataFrame({"c": clusters, "v": values})
    n_values = df.groupby("c")["v"].transform("nunique").to_numpy()
    return n_values > 1


def _warnings(r: dict) -> list[str]:
    w = []
    leak = r["leakage"]
    if not leak["passed"]:
        w.append(
            f"LEAKAGE: {leak['test_images_with_a_copy_outside_test']} of {leak['n_test']} test "
            f"images and {leak['val_images_with_a_copy_outside_val']} of {leak['n_val']} "
            "validation images have an exact or near copy in another split; "
            f"{leak['duplicate_or_patient_groups_straddling_splits']} groups of copies or "
            "patients straddle splits. Metrics on this dataset are inflated: use it only to "
            "reproduce a published number; for honest ones prepare it with --dedupe drop (or "
            "group) and --straddle test-side or first-source (preset keras-combined-dedup)."
        )
    dup = r["duplicates"]
    if r["config"].get("dedupe") == "group" and dup["clusters"]["n"]:
        extra = dup["clusters"]["images"] - dup["clusters"]["n"]
        w.append(
            f"{extra} images are copies of another cached image (kept, grouped with it in "
            "one split): counts and test statistics count them twice; --dedupe drop keeps "
            "one copy"
        )
    lc = r["label_conflicts"]
    if lc["n_clusters"]:
        w.append(
            f"{lc['n_clusters']} duplicate clusters ({lc['n_images']} images) carry both "
            f"labels: {lc['action']}"
        )
    if r["rejected"]["n"]:
        w.append(f"{r['rejected']['n']} files could not be read (rejected.csv says why)")
    if not r["accounting"]["balanced"]:
        w.append("accounting does not balance: please report this as a bug")
    for s in r["sources"]:
        w += [f"{s['name']}: {n}" for n in s.get("notes", [])]
    return w


# --- output ---------------------------------------------------------------------------------


def write_report(out: Path, report: dict) -> None:
    write_json_atomic(out / "data_report.json", report)
    write_text_atomic(out / "data_report.md", render_markdown(report))


@functools.cache
def _templates() -> jinja2.Environment:
    """The package's Markdown templates, found in an installed wheel as in a checkout. Block
    tags on their own line add nothing (trim and lstrip); nothing is escaped: it is Markdown.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pneumoscope.data", "templates"),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pairs"] = _pairs
    return env


def _pairs(d: dict) -> str:
    """``{"a": 1, "b": 2}`` as ``a: 1, b: 2``."""
    return ", ".join(f"{k}: {v}" for k, v in d.items())


def render_markdown(r: dict) -> str:
    """data_report.md from the report dict (as built, or as read back from the json)."""
    return _templates().get_template("data_report.md.j2").render(_markdown_context(r))


def _markdown_context(r: dict) -> dict:
    return {
        "r": r,
        "class_names": CLASS_NAMES,
        "duplicate_rows": _duplicate_rows(r["duplicates"]),
        "timing": r.get("timing_s") or {},
    }


def _duplicate_rows(d: dict) -> list[tuple]:
    """(kind, where, pairs, of which between different patient ids) per source and pair of
    sources; the last column is empty across sources, where patient ids cannot match."""
    rows = []
    for kind in ("exact", "near"):
        other_patients = d[kind]["within_source_different_patients"]
        for s, n in d[kind]["within_source"].items():
            rows.append((kind, f"within {s}", n, other_patients.get(s, 0)))
        for s, n in d[kind]["across_sources"].items():
            rows.append((kind, f"across {s}", n, ""))
    return rows


def terminal_tables(r: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, header, rows) tables for the command line."""
    src = [
        [
            s["name"],
            s["layout"],
            s["n_rows"],
            s["n_excluded"],
            s["rejected"],
            s["dropped_duplicates"] + s["dropped_conflicts"],
            s["cached"],
        ]  # fmt: skip
        for s in r["sources"]
    ]
    d = r["duplicates"]
    dup_rows = []
    for kind in ("exact", "near"):
        within = sum(d[kind]["within_source"].values())
        across = sum(d[kind]["across_sources"].values())
        diffp = sum(d[kind]["within_source_different_patients"].values())
        dup_rows.append([kind, within, diffp, across])
    counts = [
        [s, *[v[c] for c in CLASS_NAMES], v["total"]] for s, v in r["counts"]["by_split"].items()
    ]
    return [
        ("sources", ["source", "layout", "read", "excluded", "rejected", "dropped", "cached"], src),
        (
            f"duplicate pairs (near: <= {d['method']['threshold']} of {PHASH_BITS} bits)",
            ["kind", "within a source", "of which different patient ids", "across sources"],
            dup_rows,
        ),
        ("dataset", ["split", *CLASS_NAMES, "total"], counts),
    ]
