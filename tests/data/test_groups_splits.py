"""Groups (patients and copies) and splits that never cut one, alone and through prepare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.data.groups import UnionFind, build_groups, group_names
from pneumoscope.data.prepare import prepare
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.splits import (
    regroup_splits,
    resolve_given,
    straddling_groups,
    stratified_group_split,
)
from tests.helpers import write_copy_source, write_kaggle_layout

CFG = PreprocessConfig(img_size=32)


def test_union_find_roots_are_smallest_members():
    uf = UnionFind(6)
    uf.union(4, 2)
    uf.union(2, 5)
    uf.union(1, 3)
    assert uf.roots().tolist() == [0, 1, 2, 1, 2, 2]


def test_patients_are_namespaced_by_source_and_links_merge():
    sources = ["a", "a", "b", "b"]
    patients = ["p1", "p1", "p1", "p2"]
    roots = build_groups(sources, patients)
    assert roots.tolist() == [0, 0, 2, 3]  # a:p1 and b:p1 are different people
    roots = build_groups(sources, patients, [1], [3])  # a copy links a:p1 and b:p2
    assert roots.tolist() == [0, 0, 2, 0]
    assert group_names(roots).tolist() == ["g000001", "g000001", "g000002", "g000001"]


def test_given_test_side_moves_straddling_groups_whole_and_reports_them():
    given = ["train", "test", "train", "val", "train", "", ""]
    groups = np.array([0, 0, 2, 2, 4, 4, 6])
    out, moves = resolve_given(given, groups, np.zeros(7, int), "test-side")
    assert out == ["test", "test", "val", "val", "train", "train", ""]
    assert [(m.group, m.to, m.n_from, m.n_moved) for m in moves] == [
        (0, "test", {"train": 1, "test": 1}, 1),
        (2, "val", {"train": 1, "val": 1}, 1),
    ]


def test_given_first_source_lets_the_first_source_decide():
    given = ["train", "test", "test", "train", "test"]
    groups = np.array([0, 0, 2, 2, 2])
    rank = np.array([0, 1, 1, 0, 0])  # rows 0, 3, 4 come from the first source
    out, moves = resolve_given(given, groups, rank, "first-source")
    assert out[:2] == ["train", "train"]  # the second source's copy follows the original
    assert out[2:] == ["test"] * 3  # the first source disagrees with itself: test side
    assert len(moves) == 2


def test_stratified_group_split_meets_fractions_with_whole_groups():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, 600)
    groups = np.repeat(np.arange(600), sizes)
    labels = np.repeat((rng.random(600) < 0.7).astype(int), sizes)
    part = stratified_group_split(labels, groups, (0.8, 0.1, 0.1), seed=0)
    for g in np.unique(groups):
        assert len(set(part[groups == g])) == 1
    shares = np.bincount(part, minlength=3) / len(part)
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.01)
    for p in range(3):
        assert abs(labels[part == p].mean() - labels.mean()) < 0.02
    np.testing.assert_array_equal(part, stratified_group_split(labels, groups, (0.8, 0.1, 0.1), 0))
    assert not np.array_equal(part, stratified_group_split(labels, groups, (0.8, 0.1, 0.1), 1))


def test_regroup_stratifies_by_label_and_source():
    n = 2000
    rng = np.random.default_rng(1)
    sources = np.where(np.arange(n) < 1500, "a", "b")
    labels = (rng.random(n) < np.where(sources == "a", 0.75, 0.3)).astype(int)
    groups = np.arange(n) // 2
    out, note = regroup_splits(labels, sources, groups, (0.7, 0.15, 0.15), seed=0)
    out = np.array(out)
    assert "label and source" in note and "seed 0" in note
    assert straddling_groups(out, groups) == []
    for s in ("a", "b"):
        for split in ("val", "test"):
            m = (sources == s) & (out == split)
            assert abs(labels[m].mean() - labels[sources == s].mean()) < 0.04


def test_straddling_groups_finds_cut_groups():
    assert straddling_groups(["train", "test", "train"], np.array([1, 1, 2])) == [1]
    assert straddling_groups(["train", "train"], ["x", "x"]) == []


# --- through prepare: a second source made of re-encoded, re-split copies -----------------


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("two")
    ped = write_kaggle_layout(base / "ped", {"train": 40, "test": 10}, seed=5)
    return ped, write_copy_source(ped, base / "cov")


def _prep(two_sources, out, **settings):
    ped, cov = two_sources
    return prepare(
        [f"ped={ped}", f"cov={cov}"], out, CFG, val_fraction=0.2, workers=1, progress=False,
        **settings,
    )  # fmt: skip


def test_dedupe_drop_keeps_the_first_source_and_leaks_nothing(two_sources, tmp_path):
    res = _prep(two_sources, tmp_path / "d", dedupe="drop")
    rep = res.report
    assert rep["duplicates"]["near"]["across_sources"] == {"cov + ped": 100}
    assert rep["duplicates"]["images_with_a_copy_in_another_source"] == {
        "ped": {"n": 100, "of": 100},
        "cov": {"n": 100, "of": 100},
    }
    assert rep["duplicates"]["near"]["within_source_different_patients"] == {}
    m = open_cache(tmp_path / "d").manifest
    assert set(m["source"]) == {"ped"} and len(m) == 100  # every copy dropped
    assert rep["leakage"]["passed"] and rep["leakage"]["groups_straddling_splits"] == 0
    # test-side: every group that either source put in test is in test
    assert rep["splits"]["moved"]["groups"] > 0 and len(m[m["split"] == "test"]) > 20
    dropped = pd.read_csv(tmp_path / "d" / "dropped.csv")
    assert len(dropped) == 100 and dropped["reason"].str.startswith("duplicate of ").all()
    acc = rep["accounting"]
    assert acc["balanced"] and acc["excluded_by_label_policy"] == 2  # COVID19 left out
    assert acc["files_listed"] == 202 and acc["cached"] == 100 and acc["dropped"] == 100
    assert set(m["age_group"]) == {"child"}  # the pediatric set's file names
    assert m["group"].str.match(r"^g\d{6}$").all() and m["patient"].str.startswith("ped:").all()


def test_first_source_keeps_the_original_split(two_sources, tmp_path):
    res = _prep(two_sources, tmp_path / "f", dedupe="drop", straddle="first-source")
    m = res.manifest
    assert (m["source_split"].replace("val", "train") == m["split"].replace("val", "train")).all()
    assert len(m[m["split"] == "test"]) == 20  # the original test split, untouched
    assert res.report["splits"]["moved"]["images"] == 0
    assert res.report["leakage"]["passed"]


def test_dedupe_group_keeps_copies_in_one_split(two_sources, tmp_path):
    res = _prep(two_sources, tmp_path / "g", dedupe="group")
    m = res.manifest
    assert len(m) == 200
    assert straddling_groups(m["split"].tolist(), m["group"].tolist()) == []
    by_group = m.groupby("group")["source"].nunique()
    assert (by_group == 2).all()  # each original shares its group with its copy
    assert res.report["leakage"]["passed"]
    assert any("count them twice" in w for w in res.report["warnings"])


def test_naive_off_reproduces_the_published_splits_and_warns(two_sources, tmp_path):
    res = _prep(two_sources, tmp_path / "n", dedupe="off", straddle="keep")
    m = res.manifest
    assert len(m) == 200
    assert (m["source_split"].replace("val", "train") == m["split"].replace("val", "train")).all()
    leak = res.report["leakage"]
    assert not leak["passed"] and leak["test_images_with_a_copy_outside_test"] > 0
    assert leak["groups_straddling_splits"] == 0  # patients alone do not straddle here
    assert res.report["warnings"][0].startswith("LEAKAGE")
    d = pd.read_csv(tmp_path / "n" / "duplicates.csv")
    assert len(d) == 100 and not d["linked"].any()


def test_label_conflicts_are_dropped_or_kept_grouped(tmp_path):
    root = write_kaggle_layout(tmp_path / "src", {"train": 20, "test": 6}, seed=7)
    a = root / "train" / "NORMAL" / "IM-0001-0000.jpeg"
    (root / "train" / "PNEUMONIA" / "person999_bacteria_1.jpeg").write_bytes(a.read_bytes())
    res = prepare(root, tmp_path / "d", CFG, val_fraction=0.2, workers=1, progress=False)
    lc = res.report["label_conflicts"]
    assert lc["n_clusters"] == 1 and lc["n_images"] == 2 and lc["action"].startswith("dropped")
    assert not res.manifest["path"].str.contains("IM-0001-0000|person999_").any()
    res = prepare(
        root, tmp_path / "k", CFG, val_fraction=0.2, workers=1, progress=False, conflicts="keep"
    )
    kept = res.manifest[res.manifest["path"].str.contains("IM-0001-0000|person999_")]
    assert len(kept) == 2 and kept["group"].nunique() == 1 and kept["split"].nunique() == 1
    # dropping copies never picks a label: one image per label stays, grouped
    (root / "train" / "NORMAL" / "IM-0001-0099.jpeg").write_bytes(a.read_bytes())
    res = prepare(
        root, tmp_path / "dk", CFG, val_fraction=0.2, workers=1, progress=False,
        conflicts="keep", dedupe="drop",
    )  # fmt: skip
    kept = res.manifest[res.manifest["path"].str.contains("IM-0001-0000|IM-0001-0099|person999_")]
    assert sorted(kept["label"]) == [0, 1] and kept["group"].nunique() == 1


def test_regroup_through_prepare(two_sources, tmp_path):
    res = _prep(
        two_sources, tmp_path / "r", dedupe="drop", split="regroup", fractions=[0.6, 0.2, 0.2]
    )
    m = res.manifest
    shares = m["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.6) < 0.1 and abs(shares["test"] - 0.2) < 0.1
    assert res.report["leakage"]["passed"] and "regrouped" in res.split_note


def test_bad_settings_are_user_errors(two_sources, tmp_path):
    ped, _ = two_sources
    with pytest.raises(UserError, match="--dedupe must be one of"):
        prepare(ped, tmp_path / "x", CFG, progress=False, dedupe="maybe")
    with pytest.raises(UserError, match="--fractions"):
        prepare(ped, tmp_path / "x", CFG, progress=False, split="regroup", fractions=[0.5, 0.5])
    with pytest.raises(UserError, match="given twice"):
        prepare([f"a={ped}", f"a={ped}"], tmp_path / "x", CFG, progress=False)
    with pytest.raises(UserError, match="matches no source"):
        prepare(ped, tmp_path / "x", CFG, progress=False, age_group={"nope": "child"})


@pytest.mark.realdata
def test_real_copies_are_all_found_and_nothing_else(shared_data, tmp_path):
    """Real pediatric X-rays and their copies made the way the second set made them."""
    src = shared_data / "chest_xray_224"
    root = tmp_path / "ped"
    for split, n in {"train": 40, "test": 15}.items():
        for label in ("NORMAL", "PNEUMONIA"):
            d = root / split / label
            d.mkdir(parents=True)
            for f in sorted((src / split / label).iterdir())[::11][:n]:
                (d / f.name).symlink_to(f)
    cov = write_copy_source(root, tmp_path / "cov", covid=0, size=256)
    res = prepare(
        [f"ped={root}", f"cov={cov}"], tmp_path / "d", CFG, workers=2, progress=False,
        dedupe="drop", straddle="first-source",
    )  # fmt: skip
    dup = res.report["duplicates"]
    assert dup["images_with_a_copy_in_another_source"] == {
        "ped": {"n": 110, "of": 110},
        "cov": {"n": 110, "of": 110},
    }
    assert dup["near"]["within_source"] == {} and dup["exact"]["within_source"] == {}
    m = res.manifest
    assert len(m) == 110 and set(m["source"]) == {"ped"}
    assert len(m[m["split"] == "test"]) == 30 and res.report["leakage"]["passed"]


def test_unsplit_rows_next_to_a_split_source_get_their_own_test_share():
    from pneumoscope.data.splits import assign_splits

    given = ["train"] * 200 + ["test"] * 50 + [""] * 200
    labels = [i % 2 for i in range(450)]
    groups = [i // 2 for i in range(450)]
    out, note = assign_splits(given, labels, groups, 0.1, seed=0)
    assert out[200:250] == ["test"] * 50  # the split source's test is untouched
    unsplit = out[250:]
    assert 0.15 < unsplit.count("test") / 200 < 0.25 and "val" not in out[200:250]
    assert "200 images without a split" in note
    assert straddling_groups(out, np.array(groups)) == []
