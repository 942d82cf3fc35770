"""Assemble the population-check data: every film, its population, group and split.

Reads the three folders of ../shared/data (pediatric Kermany train/test, the Covid-19 &
Pneumonia copy, adult_public) and writes to ``--work`` (default /work/pop_work):

* ``manifest.csv``: one row per film: path, set, population (child/adult), source,
  patient, group, split, original size, content and perceptual hashes, simple image
  statistics (aspect, JPEG quality estimate, border, intensity);
* ``raw.npz``: each film decoded to gray (the package's ``decode_gray``) and shrunk to a
  long side of at most 320 px (``pneumoscope.data.marks.shrink``), aspect kept: what the
  training augmentations start from, so that borders, crops and letters are drawn on the
  film, not on the square;
* ``pre{S}.npy``: each film through the package's own path, ``load_image(path,
  PreprocessConfig(img_size=S))`` (decode, square resize, CLAHE): what evaluation reads.

Groups: films of one patient (pediatric: ``person{P}``, ``IM-{P}``, ``NORMAL2-IM-{P}`` from
the file name, bacteria and virus films of one person together; ieee8023: ``patient_id``;
figure1: the case number, ``COVID-00015a`` and ``-00015b`` together) and near copies
(the package's 256-bit phash, Hamming distance <= 24, over every film of every folder) form
one group, by union-find; a group never straddles splits. Splits: pediatric official train
films by group into ``train``/``val`` (85/15); official test films are ``ped_test`` (the
benchmark: never trained or tuned on), and any official-train film grouped with a test film
becomes ``excluded``; adults per source by group into ``train``/``val``/``test`` (60/20/20).
Copies in the Covid-19 & Pneumonia folder are evaluation-only (``set`` = ``copy_ped`` or
``copy_adult``) and take their group's split in ``split_of_group``.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/population_check/assemble.py
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pneumoscope.data.dedupe import (
    NEAR_THRESHOLD,
    exact_hash,
    hex_to_words,
    perceptual_hash,
    search_near_pairs,
)
from pneumoscope.data.groups import UnionFind
from pneumoscope.data.marks import shrink
from pneumoscope.data.preprocess import PreprocessConfig, decode_gray, preprocess_gray

cv2.setNumThreads(1)
DATA = Path("/work/shared/data")
HERE = Path(__file__).resolve().parent
SEED = 0
PED_VAL_FRACTION = 0.15
ADULT_FRACTIONS = (0.6, 0.2, 0.2)  # train, val, test by group, per source

_PED_PATIENT = (
    (re.compile(r"^person(\d+)_", re.I), "person{}"),
    (re.compile(r"^(NORMAL\d*)-IM-(\d+)-", re.I), None),
    (re.compile(r"^IM-(\d+)-", re.I), "im-{}"),
)


def pediatric_patient(name: str) -> str:
    """Patient of a Kermany file name; bacteria and virus films of person P are one patient."""
    stem = Path(name).stem
    for pat, fmt in _PED_PATIENT:
        m = pat.match(stem)
        if m:
            if fmt is None:
                return f"{m.group(1).lower()}-im-{int(m.group(2))}"
            return fmt.format(int(m.group(1)))
    return f"file:{stem}"


def figure1_case(patient_id: str) -> str:
    """``figure1-COVID-00015a`` -> ``figure1-COVID-00015``: lettered films are one case."""
    return re.sub(r"[a-z]$", "", patient_id)


def list_films() -> pd.DataFrame:
    rows = []
    ped = DATA / "chest_xray_224"
    for split in ("train", "test"):
        for p in sorted((ped / split).glob("*/*.jpeg")):
            rows.append(
                dict(
                    path=str(p),
                    set=f"ped_{split}",
                    population="child",
                    source="kermany",
                    patient="kermany:" + pediatric_patient(p.name),
                    label=p.parent.name,
                )
            )
    cov = DATA / "chest_xray_covid19_pneumonia_256/Data"
    for p in sorted(cov.glob("*/*/*.jpg")):
        adult = p.parent.name == "COVID19"
        rows.append(
            dict(
                path=str(p),
                set="copy_adult" if adult else "copy_ped",
                population="adult" if adult else "child",
                source="figure1" if adult else "kermany",
                patient=f"copy:{p.parent.parent.name}/{p.parent.name}/{p.stem}",
                label=p.parent.name,
            )
        )
    adults = pd.read_csv(DATA / "adult_public/adults.csv")
    for r in adults.itertuples():
        pid = figure1_case(r.patient_id) if r.source == "figure1" else r.patient_id
        rows.append(
            dict(
                path=str(DATA / "adult_public" / r.path),
                set="adult",
                population="adult",
                source=r.source,
                patient=f"{r.source}:{pid}",
                label=r.label,
                age=r.age,
                view=r.view,
            )
        )
    return pd.DataFrame(rows)


def jpeg_quality(path: str) -> float:
    """Estimated IJG quality from the luminance quantisation table (nan if not a JPEG)."""
    from PIL import Image

    std = np.array(
        [
            16,
            11,
            10,
            16,
            24,
            40,
            51,
            61,
            12,
            12,
            14,
            19,
            26,
            58,
            60,
            55,
            14,
            13,
            16,
            24,
            40,
            57,
            69,
            56,
            14,
            17,
            22,
            29,
            51,
            87,
            80,
            62,
            18,
            22,
            37,
            56,
            68,
            109,
            103,
            77,
            24,
            35,
            55,
            64,
            81,
            104,
            113,
            92,
            49,
            64,
            78,
            87,
            103,
            121,
            120,
            101,
            72,
            92,
            95,
            98,
            112,
            100,
            103,
            99,
        ],
        float,
    )  # noqa: E501
    try:
        with Image.open(path) as im:
            q = getattr(im, "quantization", None)
            if not q:
                return float("nan")
            table = np.array(q[0], float)
    except Exception:
        return float("nan")
    scale = 100.0 * table.sum() / std.sum()  # zigzag order does not matter for the sum
    return float(np.clip((200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale, 1, 100))


def border_fraction(gray: np.ndarray) -> float:
    """Largest share of the image's side taken by a flat outer band (padding or frame):
    rows/columns from each edge whose pixels vary by less than 3 grey levels."""
    h, w = gray.shape
    best = 0.0
    for arr, n in ((gray, h), (gray[::-1], h), (gray.T, w), (gray.T[::-1], w)):
        k = 0
        while k < n // 2 and arr[k].std() < 3.0:
            k += 1
        best = max(best, k / n)
    return best


def split_groups(
    groups: list[str], fractions: tuple[float, ...], names: tuple[str, ...], seed: int
) -> dict:
    """Seeded shuffle of the groups, cut by the fractions (of groups)."""
    rng = np.random.default_rng(seed)
    order = sorted(groups)
    rng.shuffle(order)
    cuts = np.round(np.cumsum(fractions) * len(order)).astype(int)
    out, start = {}, 0
    for name, cut in zip(names, cuts, strict=True):
        for g in order[start:cut]:
            out[g] = name
        start = cut
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=Path("/work/pop_work"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[128])
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    df = list_films()
    print(f"{len(df)} films listed")

    raws, stats = [], []
    pre = {s: np.zeros((len(df), s, s), np.uint8) for s in args.sizes}
    for i, path in enumerate(df["path"]):
        gray = decode_gray(path)
        for s in args.sizes:  # == load_image(path, PreprocessConfig(img_size=s))
            pre[s][i] = preprocess_gray(gray, PreprocessConfig(img_size=s))
        raws.append(shrink(gray))
        stats.append(
            dict(
                height=gray.shape[0],
                width=gray.shape[1],
                exact=exact_hash(gray),
                phash=perceptual_hash(gray),
                jpeg_q=jpeg_quality(path),
                border=border_fraction(gray),
                mean=float(gray.mean()),
                std=float(gray.std()),
            )
        )
        if i % 2000 == 0:
            print(f"  {i}/{len(df)} decoded, {time.time() - t0:.0f} s")
    df = pd.concat([df, pd.DataFrame(stats)], axis=1)
    df["aspect"] = df["width"] / df["height"]

    # groups: patients, exact copies, near copies (phash <= 24 of 256 bits)
    uf = UnionFind(len(df))
    for key in ("patient", "exact"):
        first: dict[str, int] = {}
        for i, k in enumerate(df[key]):
            uf.union(first.setdefault(k, i), i)
    words = hex_to_words(df["phash"].tolist())
    a, b, d = search_near_pairs(words, NEAR_THRESHOLD, threads=1)
    uf.union_pairs(a, b)
    roots = uf.roots()
    df["group"] = [f"g{r:05d}" for r in roots]
    pairs = pd.DataFrame(dict(a=a, b=b, dist=d))
    pairs["set_a"], pairs["set_b"] = df["set"].values[a], df["set"].values[b]
    pairs["pop_a"], pairs["pop_b"] = df["population"].values[a], df["population"].values[b]

    # mixed groups: a child film and an adult film near-identical (should not happen)
    mixed = df.groupby("group")["population"].nunique()
    mixed_groups = sorted(mixed[mixed > 1].index)

    # splits, group by group
    split_of_group: dict[str, str] = {}
    gsets = df.groupby("group")["set"].agg(set)
    ped_test_groups = {g for g, s in gsets.items() if "ped_test" in s}
    ped_train_groups = sorted({g for g, s in gsets.items() if "ped_train" in s} - ped_test_groups)
    for g in ped_test_groups:
        split_of_group[g] = "ped_test"
    split_of_group.update(
        split_groups(
            ped_train_groups, (1 - PED_VAL_FRACTION, PED_VAL_FRACTION), ("train", "val"), SEED
        )
    )
    for src in ("ieee8023", "figure1"):
        groups = sorted(
            set(df.loc[(df["set"] == "adult") & (df["source"] == src), "group"])
            - set(split_of_group)
        )
        split_of_group.update(
            split_groups(groups, ADULT_FRACTIONS, ("train", "val", "test"), SEED + 1)
        )
    for g in mixed_groups:  # a child's film filed as an adult's: used nowhere
        split_of_group[g] = "excluded"
    df["split_of_group"] = df["group"].map(split_of_group).fillna("none")
    df["split"] = df["split_of_group"]
    df.loc[(df["set"] == "ped_train") & (df["split_of_group"] == "ped_test"), "split"] = "excluded"
    df.loc[df["set"].str.startswith("copy"), "split"] = "copy"  # evaluation only

    df.to_csv(args.work / "manifest.csv", index=False)
    for s, arr in pre.items():
        np.save(args.work / f"pre{s}.npy", arr)
    shapes = np.array([r.shape for r in raws], np.int32)
    offsets = np.concatenate([[0], np.cumsum([r.size for r in raws])]).astype(np.int64)
    np.savez(
        args.work / "raw.npz",
        pixels=np.concatenate([r.ravel() for r in raws]),
        shapes=shapes,
        offsets=offsets,
    )

    summary = summarise(df, pairs, mixed_groups)
    (HERE / "data_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"done in {time.time() - t0:.0f} s; wrote {args.work}/manifest.csv, raw.npz, pre*.npy")


def summarise(df: pd.DataFrame, pairs: pd.DataFrame, mixed_groups: list[str]) -> dict:
    """Counts per split and set, what the dedupe merged, and per-source image statistics."""
    cross = pairs[pairs["set_a"] != pairs["set_b"]]
    kinds = cross.groupby(["set_a", "set_b"]).size()
    copy_adult = df[df["set"] == "copy_adult"]
    matched = copy_adult["group"].isin(df.loc[df["set"] == "adult", "group"])
    copy_ped = df[df["set"] == "copy_ped"]
    stat_cols = ["width", "height", "aspect", "jpeg_q", "border", "mean", "std"]
    by_source = {}
    for (s, src), rows in df.groupby(["set", "source"]):
        desc = {
            c: dict(
                median=float(rows[c].median()),
                p10=float(rows[c].quantile(0.1)),
                p90=float(rows[c].quantile(0.9)),
            )
            for c in stat_cols
        }
        desc["share_with_flat_border_over_2pct"] = float((rows["border"] > 0.02).mean())
        by_source[f"{s}/{src}"] = desc
    return dict(
        films=int(len(df)),
        by_set_split={
            f"{k[0]}/{k[1]}": int(v) for k, v in df.groupby(["set", "split"]).size().items()
        },
        copy_split_of_group={
            f"{k[0]}/{k[1]}": int(v)
            for k, v in df[df["set"].str.startswith("copy")]
            .groupby(["set", "split_of_group"])
            .size()
            .items()
        },
        adult_groups_by_source_split={
            f"{k[0]}/{k[1]}": int(v)
            for k, v in df[df["set"] == "adult"]
            .groupby(["source", "split"])["group"]
            .nunique()
            .items()
        },
        near_pairs_total=int(len(pairs)),
        near_pairs_across_sets={f"{a}~{b}": int(v) for (a, b), v in kinds.items()},
        near_pairs_within_adult_between_patients=int(
            ((pairs["set_a"] == "adult") & (pairs["set_b"] == "adult")).sum()
        ),
        copy_adult_matched_to_adult_public=int(matched.sum()),
        copy_adult_unmatched=copy_adult.loc[~matched, "path"].map(lambda p: Path(p).name).tolist(),
        copy_ped_matched_to_kermany=int(
            copy_ped["group"].isin(df.loc[df["set"].str.startswith("ped"), "group"]).sum()
        ),
        mixed_child_adult_groups=[
            df.loc[df["group"] == g, ["set", "path"]]
            .assign(path=lambda x: x["path"].map(lambda p: Path(p).name))
            .to_dict("records")
            for g in mixed_groups
        ],
        ped_train_excluded_for_test_overlap=int(
            ((df["set"] == "ped_train") & (df["split"] == "excluded")).sum()
        ),
        image_stats_by_set_source=by_source,
    )


if __name__ == "__main__":
    main()
