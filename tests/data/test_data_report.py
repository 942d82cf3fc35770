"""The data report (json, markdown, terminal), configs and presets, and the command line."""

from __future__ import annotations

import json
import re

import jinja2
import pandas as pd
import pytest
import yaml

from pneumoscope.core.errors import UserError
from pneumoscope.core.settings import preset_folder, preset_names
from pneumoscope.data.config import DataConfig, resolve_config
from pneumoscope.data.prepare import prepare
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.report import render_markdown
from tests.helpers import run_cli, write_copy_source, write_kaggle_layout


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("rep")
    ped = write_kaggle_layout(base / "ped", {"train": 30, "test": 8}, seed=11)
    cov = write_copy_source(ped, base / "cov", seed=1)
    (ped / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    return ped, cov


def test_report_files_account_for_every_file(sources, tmp_path):
    ped, cov = sources
    res = prepare(
        [f"ped={ped}", f"cov={cov}"],
        tmp_path / "d",
        PreprocessConfig(img_size=32),
        val_fraction=0.2,
        workers=2,
        progress=False,
        dedupe="drop",
        age_group={"ped": "child"},
    )
    out = tmp_path / "d"
    rep = json.loads((out / "data_report.json").read_text())
    assert rep == json.loads(json.dumps(res.report))
    acc = rep["accounting"]
    assert acc == {
        "files_listed": 76 + 1 + 76 + 2,
        "excluded_by_label_policy": 2,
        "rows_read": 153,
        "rejected_unreadable": 1,
        "dropped": 76,
        "cached": 76,
        "balanced": True,
    }
    assert rep["rejected"]["files"][0]["path"].endswith("broken.jpeg")
    assert [s["name"] for s in rep["sources"]] == ["ped", "cov"]
    assert rep["sources"][0]["layout"] == "class-folders"
    assert rep["sources"][1]["layout"] == "covid19-pneumonia"
    counts = pd.DataFrame(rep["counts"]["by_split_source_age_class"])
    assert set(counts["age_group"]) == {"child"} and counts["n"].sum() == 76
    assert rep["leakage"]["passed"]
    md = (out / "data_report.md").read_text()
    headings = ["## Sources", "## Duplicates", "## Label conflicts", "## Groups and splits"]
    headings += ["## Final counts", "## Leakage check", "**PASSED**", "broken.jpeg"]
    for heading in headings:
        assert heading in md, heading
    moved = r"given split: \d+ \(train -> test: \d+\)\. Dropped copies whose given split "
    assert re.search(moved + r"differed from their group's: train -> test: \d+\.\n\n", md)
    for name in ("excluded.csv", "dropped.csv", "duplicates.csv", "rejected.csv"):
        assert (out / name).is_file()
    assert len(pd.read_csv(out / "excluded.csv")) == 2
    saved = yaml.safe_load((out / "prepare_config.yaml").read_text())
    assert saved["dedupe"] == "drop" and saved["sources"] == [f"ped={ped}", f"cov={cov}"]
    info = json.loads((out / "cache.json").read_text())
    assert info["n_images"] + info["n_rejected"] + info["n_dropped"] == 153


def test_markdown_is_rendered_from_the_json_and_its_tables_are_whole(sources, tmp_path):
    ped, cov = sources
    prepare(
        [f"ped={ped}", f"cov={cov}"], tmp_path / "n", PreprocessConfig(img_size=32),
        val_fraction=0.2, workers=2, progress=False, dedupe="off", straddle="keep",
    )  # fmt: skip
    md = (tmp_path / "n" / "data_report.md").read_text()
    rep = json.loads((tmp_path / "n" / "data_report.json").read_text())
    assert render_markdown(rep) == md  # the json holds everything the page says
    assert md.startswith("# Data report: custom\n\n> **Warning:** LEAKAGE: ")
    assert "\n\n\n" not in md and md.endswith(" s.\n")
    assert f"| sources | `ped={ped}`<br>`cov={cov}` |\n" in md
    assert "\n**FAILED**: images or their copies are in several splits" in md
    assert re.search(r"\n## Timing\n\n(\w+ \d+\.\d s, )+total \d+\.\d s\.\n$", md)
    # every table: a header, its rule, and rows with as many cells as the header
    tables = re.findall(r"(?:^\|.*\|\n)+", md, flags=re.M)
    assert len(tables) == 8  # settings, sources, rejected, duplicates x2, counts x2, leakage
    for table in tables:
        header, rule, *rows = table.splitlines()
        assert rule == "|" + "|".join(["---"] * (header.count(" | ") + 1)) + "|"
        assert all(row.count(" | ") == header.count(" | ") for row in rows), table
    rep.pop("leakage")
    with pytest.raises(jinja2.UndefinedError):  # a missing value fails, it is not left blank
        render_markdown(rep)


def test_presets_load_and_say_what_they_do():
    shipped = set(preset_names("data"))  # in the package: pneumoscope/presets/data
    assert {"pediatric", "keras-combined-naive", "keras-combined-dedup"} <= shipped
    naive = resolve_config(preset="keras-combined-naive")
    dedup = resolve_config(preset="keras-combined-dedup")
    assert [s.split("=")[0] for s in dedup.sources] == ["pediatric", "covid_pneumonia"]
    # the pair is a controlled comparison: it differs in how copies are handled, and only there
    a, b = naive.model_dump(), dedup.model_dump()
    assert {k for k in a if a[k] != b[k]} == {"dedupe", "straddle", "conflicts", "preset"}
    assert (naive.dedupe, naive.straddle, naive.conflicts) == ("off", "keep", "keep")
    assert (dedup.dedupe, dedup.straddle, dedup.conflicts) == ("drop", "first-source", "drop")
    assert dedup.preset == "keras-combined-dedup"
    over = resolve_config(preset="keras-combined-dedup", img_size=128, sources=["x=/tmp"])
    assert over.img_size == 128 and over.sources == ["x=/tmp"]  # another list
    moved = resolve_config(preset="keras-combined-dedup", sources=["pediatric=/data/cx"])
    assert moved.sources == ["pediatric=/data/cx", dedup.sources[1]]  # one path moved
    for name in preset_names("data"):  # every key is a known setting
        path = preset_folder("data") / f"{name}.yaml"
        assert set(yaml.safe_load(path.read_text())) <= set(DataConfig.model_fields)


def test_config_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="did you mean keras-combined-dedup"):
        resolve_config(preset="keras-combined-dedupe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [a]\ndedup: drop\n")
    with pytest.raises(UserError, match="unknown setting 'dedup'.*did you mean dedupe"):
        resolve_config(config=bad)
    bad.write_text("sources: [a]\ndedupe: off\n")  # YAML's bare off is a boolean
    assert resolve_config(config=bad).dedupe == "off"
    with pytest.raises(UserError, match="--fractions must look like"):
        resolve_config(sources=["a"], fractions="0.8;x")
    with pytest.raises(UserError, match="no source"):
        resolve_config()


def test_cli_prepare_with_a_config_prints_the_report(sources, tmp_path):
    ped, cov = sources
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "sources": [f"ped={ped}", f"cov={cov}"],
                "dedupe": "off",
                "straddle": "keep",
                "img_size": 32,
                "val_fraction": 0.25,
            }  # fmt: skip
        )
    )
    r = run_cli("data", "prepare", "--config", str(cfg), "--out", str(tmp_path / "n"))
    assert r.returncode == 0, r.stderr
    assert "leakage check: FAILED" in r.stdout and "data_report.md" in r.stdout
    assert "WARNING: LEAKAGE" in r.stderr and "1 file(s) could not be read" in r.stderr
    r = run_cli(
        "data", "prepare", "--config", str(cfg), "--dedupe", "drop", "--straddle",
        "test-side", "--out", str(tmp_path / "d"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "leakage check: passed" in r.stdout and "LEAKAGE" not in r.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--preset", "nope"], "unknown --preset 'nope'"),
        (["--source", "x=/no/such/dir"], "source 'x' not found: /no/such/dir"),
        (["--source", "/tmp", "--split", "random"], "--split must be one of given, regroup"),
        (["--source", "/tmp", "--near-threshold", "300"], "--near-threshold must be between"),
    ],
)
def test_cli_prepare_mistakes_are_one_line(args, fragment, tmp_path):
    r = run_cli("data", "prepare", *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
