"""A hospital's export as `predict` meets it: a DICOMDIR and extensionless files (real
films as CR and DX, a lateral, a CT slice, a report, a corrupt file, a file the index names
but the medium lost) beside a README.txt and a Thumbs.db. Every DICOM object gets its row
with the right status, the other files are listed, the frontal films are predicted."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.fileset import FileSet

from pneumoscope.data.dicom import dicomdir_references
from pneumoscope.inference.inputs import scan_inputs
from pneumoscope.inference.predict import predict_to_csv
from tests.helpers import REPO, film_dataset, report_dataset, run_cli

RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"
pytestmark = pytest.mark.realdata


def _films(shared_data: Path) -> tuple[Path, Path]:
    test = shared_data / "chest_xray_224" / "test"
    return sorted((test / "NORMAL").glob("*.jpeg"))[0], sorted((test / "PNEUMONIA").glob("*.jpeg"))[
        0
    ]


def _gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def write_pacs_export(root: Path, normal: Path, pneumonia: Path) -> dict[str, Path]:
    """The export, and {role: path} of each object in it."""
    chest = {"BodyPartExamined": "CHEST"}
    objects = {
        "cr_frontal": film_dataset(_gray(normal), "CR", ViewPosition="AP", **chest),
        "dx_frontal": film_dataset(_gray(pneumonia), "DX", instance=2, ViewPosition="PA", **chest),
        "lateral": film_dataset(_gray(normal), "DX", instance=3, ViewPosition="LL"),
        "ct": film_dataset(_gray(normal), "CT", series=2, **chest),
        "report": report_dataset(),
        "lost": film_dataset(_gray(normal), "DX", instance=4, ViewPosition="PA"),
    }
    fs = FileSet()
    for ds in objects.values():
        fs.add(ds)
    fs.write(root)
    written = FileSet(pydicom.dcmread(root / "DICOMDIR"))
    roles = {
        role: Path(written.find(SOPInstanceUID=ds.SOPInstanceUID)[0].path)
        for role, ds in objects.items()
    }
    good = roles["dx_frontal"].read_bytes()
    (root / "IM99").write_bytes(good[: len(good) // 3])  # cut off in the middle of its pixels
    roles["lost"].unlink()
    (root / "README.txt").write_text("Export of study 1, 6 objects.\n")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    return {**roles, "dicomdir": root / "DICOMDIR", "corrupt": root / "IM99"}


def test_predict_on_a_pacs_export(shared_data, tmp_path):
    normal, pneumonia = _films(shared_data)
    roles = write_pacs_export(tmp_path / "export", normal, pneumonia)
    assert not any(p.suffix for role, p in roles.items() if role != "dicomdir")
    out = tmp_path / "p.csv"
    r = run_cli("predict", "--run", str(RUN_V1), str(tmp_path / "export"), "--out", str(out))
    assert r.returncode == 1, r.stderr  # the corrupt and the lost file failed
    assert "2 predicted (" in r.stdout and "2 failed, 2 out of scope, 2 skipped" in r.stdout
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 8 and df["path"].is_unique  # each object once: scan and index agree
    by_path = df.set_index("path")
    row = {role: by_path.loc[str(p)] for role, p in roles.items()}
    expected = {
        "cr_frontal": "ok",
        "dx_frontal": "ok",
        "lateral": "out_of_scope",
        "ct": "out_of_scope",
        "report": "skipped",
        "dicomdir": "skipped",
        "corrupt": "error",
        "lost": "error",
    }
    assert {role: r["status"] for role, r in row.items()} == expected
    assert "lateral view (ViewPosition LL)" in row["lateral"]["error"]
    assert "--allow view" in row["lateral"]["error"]
    assert "modality CT is not a projection radiograph" in row["ct"]["error"]
    assert row["report"]["error"].startswith("DICOM Structured Report (SOP class Basic Text SR")
    assert row["dicomdir"]["error"].startswith("DICOMDIR, the index of a DICOM file-set")
    assert row["corrupt"]["error"].startswith("truncated pixel data")
    assert "cannot open" in row["lost"]["error"]
    # the films are predicted as their JPEG sources are (12-bit copies of the same pixels)
    jpeg = tmp_path / "jpeg.csv"
    assert predict_to_csv(RUN_V1, [str(normal), str(pneumonia)], jpeg).ok == 2
    ref = pd.read_csv(jpeg)["probability"].to_numpy()
    got = [float(row[k]["probability"]) for k in ("cr_frontal", "dx_frontal")]
    assert np.abs(np.array(got) - ref).max() < 0.03
    # the other files are named on stderr and listed beside the CSV
    listed = (tmp_path / "p.skipped.txt").read_text().split("\n")
    assert listed == [str(tmp_path / "export" / n) for n in ("README.txt", "Thumbs.db")] + [""]
    names = "README.txt, Thumbs.db"
    listing = (
        f"skipped 2 files that are not images: {names} (listed in {tmp_path / 'p.skipped.txt'})"
    )
    assert listing in r.stderr
    assert "note: the age rule is not applied" in r.stderr  # run_v1's card has no population
    assert "Traceback" not in r.stderr


def test_relaxed_rules_and_a_dicomdir_given_alone(shared_data, tmp_path):
    normal, pneumonia = _films(shared_data)
    roles = write_pacs_export(tmp_path / "export", normal, pneumonia)
    found = scan_inputs([str(roles["dicomdir"])])  # the index alone: it and what it names
    assert found.paths[0] == str(roles["dicomdir"]) and found.not_images == []
    assert sorted(found.paths[1:]) == sorted(map(str, dicomdir_references(roles["dicomdir"])))
    assert str(roles["lost"]) in found.paths and str(roles["corrupt"]) not in found.paths
    both = scan_inputs([str(tmp_path / "export"), str(roles["dicomdir"])])
    assert len(both.paths) == 9  # the folder's 8, and the DICOMDIR asked for again
    out = tmp_path / "p.csv"
    r = run_cli(
        "predict", "--run", str(RUN_V1), str(roles["dicomdir"]), "--out", str(out),
        "--allow", "view", "--allow", "modality",
    )  # fmt: skip
    assert r.returncode == 1 and "4 predicted" in r.stdout, r.stdout + r.stderr
    df = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert df.loc[str(roles["lateral"]), "status"] == "ok"
    assert df.loc[str(roles["lateral"]), "note"].startswith(
        "outside the intended use, analysed because of --allow view: lateral view"
    )  # the CSV says the film is outside what the model learnt from
    assert df.loc[str(roles["ct"]), "status"] == "ok"  # one slice, analysed as asked
    assert "--allow modality" in df.loc[str(roles["ct"]), "note"]
    assert df.loc[str(roles["report"]), "status"] == "skipped"  # no flag makes a report a film
    bad = run_cli("predict", "--run", str(RUN_V1), str(roles["dicomdir"]), "--allow", "colour")
    assert bad.returncode == 2 and "--allow 'colour'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_explain_on_a_pacs_export(shared_data, tmp_path, one_torch_thread):
    from typer.testing import CliRunner

    from pneumoscope.cli import app

    normal, pneumonia = _films(shared_data)
    roles = write_pacs_export(tmp_path / "export", normal, pneumonia)
    out = tmp_path / "heat"
    args = ["explain", "--run", str(RUN_V1), str(tmp_path / "export"), "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--allow", "view"])
    assert r.exit_code == 1, r.output  # the corrupt and the lost file
    assert "3 heatmaps, 2 failed, 3 skipped or out of scope" in r.output
    assert "skipped 2 files that are not images: README.txt, Thumbs.db" in r.output
    df = pd.read_csv(out / "explanations.csv", keep_default_na=False).set_index("path")
    assert df.loc[str(roles["lateral"]), "status"] == "ok"  # allowed
    assert df.loc[str(roles["ct"]), "status"] == "out_of_scope"
    assert Path(df.loc[str(roles["dx_frontal"]), "heatmap"]).is_file()
    assert (out / "skipped.txt").read_text().splitlines()[0].endswith("README.txt")
