"""`predict --engine ray` and `predict --shard I/N`.

The Ray engine runs on a local Ray cluster started here and must give the local engine's
rows on real films (paths, order, statuses, reasons, calls; probabilities within 1e-5),
bad files and DICOM objects out of scope included; shards must be disjoint and add up to
the whole run, row for row. Ray stays optional: without it, one line says how to get it,
and no module imports it when pneumoscope is imported.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.inference.scoring import CSV_COLUMNS
from pneumoscope.inference.shards import Shard, parse_shard
from tests.helpers import REPO, film_dataset, run_cli, write_dicom

RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"
N_FILMS = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The committed tiny run (no ONNX export), copied: the Ray engine must not write to it."""
    out = tmp_path_factory.mktemp("ray_run") / "run_v1"
    shutil.copytree(RUN_V1, out)
    return out


@pytest.fixture(scope="module")
def films(shared_data, tmp_path_factory):
    """A folder of 40 real films (links) with a truncated JPEG, a text file named .png, a
    CT image (out of scope), a film as DICOM and a README (no image: left out)."""
    root = tmp_path_factory.mktemp("ray_films") / "films"
    root.mkdir()
    src = shared_data / "chest_xray_224" / "test"
    for label in ("NORMAL", "PNEUMONIA"):
        for f in sorted((src / label).iterdir())[::9][: N_FILMS // 2]:
            (root / f.name).symlink_to(f)
    first = sorted((src / "NORMAL").iterdir())[0]
    data = first.read_bytes()
    (root / "cut.jpeg").write_bytes(data[: len(data) // 3])
    (root / "note.png").write_text("not an image\n")
    (root / "README.txt").write_text("films for the engine test\n")
    gray = cv2.resize(cv2.imread(str(first), cv2.IMREAD_GRAYSCALE), (96, 80))
    write_dicom(film_dataset(gray, "CT"), root / "ct.dcm")
    write_dicom(film_dataset(gray, "DX"), root / "film.dcm")
    return root


@pytest.fixture(scope="module")
def local_csv(run, films, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "p.csv"
    counts = predict_to_csv(run, [str(films)], out, batch_size=8, workers=1)
    assert counts.ok == N_FILMS + 1 and counts.failed == 2 and counts.out_of_scope == 1
    return out, counts


def _read(path) -> pd.DataFrame:
    if str(path).endswith(".parquet"):
        return pd.read_parquet(path)
    text = {c: str for c in ("label", "status", "error", "ood")}
    empty = {"probability": [""], "ood_score": [""]}
    return pd.read_csv(path, dtype=text, keep_default_na=False, na_values=empty)


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(b.columns) == CSV_COLUMNS
    for col in ("path", "label", "model_id", "status", "error"):
        assert a[col].fillna("").astype(str).tolist() == b[col].fillna("").astype(str).tolist(), col

    def flags(col):  # CSV: "true" / "false" / ""; Parquet: True / False / null
        return ["" if v is None or v == "" or v != v else str(v).lower() for v in col]

    assert flags(a["ood"]) == flags(b["ood"])
    for col, tol in (("probability", 1e-5), ("threshold", 1e-6), ("ood_score", 2e-4)):
        x, y = a[col].to_numpy(float), b[col].to_numpy(float)
        assert np.array_equal(np.isnan(x), np.isnan(y)), col
        assert np.nanmax(np.abs(x - y)) <= tol, col


@pytest.mark.realdata
def test_ray_engine_gives_the_local_engines_rows(run, films, local_csv, ray_cluster, tmp_path):
    out = tmp_path / "ray.csv"
    counts = predict_to_csv(run, [str(films)], out, batch_size=8, engine="ray")
    local, local_counts = local_csv
    a, b = _read(local), _read(out)
    _same_rows(a, b)
    assert len(b) == N_FILMS + 4  # and in the local engine's order (_same_rows)
    status = dict(zip(b["path"].str.rsplit("/", n=1).str[1], b["status"], strict=True))
    assert [status[k] for k in ("cut.jpeg", "note.png", "ct.dcm", "film.dcm")] == [
        "error", "error", "out_of_scope", "ok",
    ]  # fmt: skip
    assert b["probability"].notna().sum() == N_FILMS + 1
    assert (counts.ok, counts.failed, counts.out_of_scope) == (N_FILMS + 1, 2, 1)
    assert (
        [n for n in counts.notes if "age rule" in n]
        == [n for n in local_counts.notes if "age rule" in n]
        != []
    )  # a worker screened a DICOM header: the driver says what was not checked
    assert any("exported for this job" in n for n in counts.notes)
    assert not (run / "model.onnx").exists()  # the run folder was not written to
    assert counts.not_images == local_counts.not_images != []


@pytest.mark.realdata
def test_predict_cli_ray_engine_writes_parquet_rows(run, films, local_csv, ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address  # this test's cluster
    out = tmp_path / "p.parquet"
    r = run_cli("predict", "--run", str(run), str(films), "--out", str(out), "--engine", "ray",
                "--ray-address", address, "--batch-size", "16", "--no-progress")  # fmt: skip
    assert r.returncode == 1, r.stderr  # exit status 1: some inputs failed, as locally
    assert "2 failed, 1 out of scope" in r.stdout
    import pyarrow.parquet as pq

    types = {f.name: str(f.type) for f in pq.read_schema(out)}
    assert types["probability"] == types["ood_score"] == "double" and types["ood"] == "bool"
    table = _read(out)
    assert table["probability"].isna().sum() == table["ood"].isna().sum() == 3  # null: no score
    _same_rows(_read(local_csv[0]), table)


@pytest.mark.realdata
def test_shards_are_disjoint_and_add_up_to_the_whole_run(run, films, local_csv, tmp_path):
    whole = local_csv[0].read_text().splitlines()
    merged, listed, paths = whole[:1], [], []
    for i in (1, 2, 3):
        out = tmp_path / f"p.{i}.csv"
        predict_to_csv(run, [str(films)], out, batch_size=8, workers=1, shard=f"{i}/3")
        lines = out.read_text().splitlines()
        assert lines[0] == whole[0] and len(lines) > 1
        merged += lines[1:]  # what the documented awk one-liner does
        paths.append(set(_read(out)["path"]))
        listed.append((tmp_path / f"p.{i}.skipped.txt").is_file())
    (tmp_path / "merged.csv").write_text("\n".join(merged) + "\n")
    # the same rows in the same order; a probability may differ in its last digit, as the
    # shards batch the images differently
    _same_rows(_read(local_csv[0]), _read(tmp_path / "merged.csv"))
    assert sum(map(len, paths)) == len(set.union(*paths)) == len(whole) - 1 == N_FILMS + 4
    assert listed == [True, False, False]  # the README is listed once, by shard 1


def test_shard_blocks_cover_every_item_once():
    for n in (0, 1, 2, 7, 10, 45):
        for count in (1, 2, 3, 8):
            parts = [Shard(i, count).take(list(range(n))) for i in range(1, count + 1)]
            assert [x for p in parts for x in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard(" 2 / 8 ") == Shard(2, 8) and parse_shard(None) is None


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1/0", "3", "a/b", "-1/3", "1/3/5"])
def test_bad_shard_is_one_readable_line(spec):
    with pytest.raises(UserError, match="--shard must be I/N with 1 <= I <= N") as err:
        parse_shard(spec)
    assert "\n" not in str(err.value)


def test_predict_cli_refuses_a_bad_shard_and_an_unknown_engine(tmp_path):
    for args, said in (
        (["--shard", "4/3"], "--shard must be I/N"),
        (["--engine", "spark"], "--engine must be one of local, ray"),
        (["--ray-address", "127.0.0.1:6379"], "--ray-address goes with --engine ray"),
    ):
        r = run_cli("predict", "--run", str(RUN_V1), str(tmp_path), "--out",
                    str(tmp_path / "p.csv"), *args)  # fmt: skip
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and said in lines[0], r.stderr
    assert not (tmp_path / "p.csv").exists()


def test_ray_engine_refuses_an_address_that_does_not_answer(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a local port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("predict", "--run", str(RUN_V1), str(tmp_path), "--engine", "ray",
                "--ray-address", f"127.0.0.1:{port}")  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port}" in lines[0]


def test_ray_engine_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    with pytest.raises(UserError) as err:
        predict_to_csv(RUN_V1, [str(tmp_path)], tmp_path / "p.csv", engine="ray")
    assert "pip install 'pneumoscope[ray]'" in str(err.value) and "\n" not in str(err.value)


def test_nothing_imports_ray_on_import():
    code = (
        "import sys\n"
        "import pneumoscope.cli.main, pneumoscope.inference.predict, pneumoscope.data.prepare\n"
        "import pneumoscope.api, pneumoscope.serving.app\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.realdata
def test_gradcam_rows_locally_and_refused_on_ray(run, films, tmp_path):
    inputs = [str(p) for p in sorted(films.glob("*.jpeg"))[:2]] + [str(films / "note.png")]
    out = tmp_path / "p.csv"
    predict_to_csv(run, inputs, out, batch_size=8, workers=1, gradcam_dir=tmp_path / "heat")
    rows = pd.read_csv(out, keep_default_na=False)
    assert list(rows.columns) == [*CSV_COLUMNS, "heatmap"]
    assert rows["status"].tolist() == ["ok", "ok", "error"] and rows["heatmap"].iloc[2] == ""
    assert all((tmp_path / "heat").joinpath(h).is_file() for h in rows["heatmap"].iloc[:2])
    with pytest.raises(UserError, match="--gradcam needs --engine local"):
        predict_to_csv(run, inputs, out, gradcam_dir=tmp_path / "heat", engine="ray")
