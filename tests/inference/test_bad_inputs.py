"""The whole-batch guarantee: every file a source lists ends up either in the cache or in
rejected.csv with a reason; one bad file never stops the batch and nothing vanishes.

Each kind of awkward file is decoded on its own in test_preprocess.py / test_dicom.py;
here they are mixed with good images in the class folders of one source and in a CSV.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.sources import read_source
from tests.helpers import (
    build_cache,
    dicom_dataset,
    dicom_ramp,
    fake_xray,
    png_header_only,
    write_dicom,
)

CFG = PreprocessConfig(img_size=32, clahe=False)  # no CLAHE: brightness checks stay simple


def _gradient(h: int = 64, w: int = 64) -> np.ndarray:
    """Dark on the left, bright on the right."""
    return np.tile(np.linspace(0, 255, w), (h, 1)).astype(np.uint8)


def _write_mixed(folder: Path, seed: int) -> tuple[dict[str, str | None], dict[str, str]]:
    """Good and bad files in one class folder.

    Returns ({name: expected reason fragment, or None when it must be cached},
    {name: "bright-right" | "bright-left"} for files whose orientation is checked).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    expect: dict[str, str | None] = {}
    for i in range(3):
        cv2.imwrite(str(folder / f"good{i}.jpeg"), fake_xray(rng, bool(seed), 64))
        expect[f"good{i}.jpeg"] = None

    g = _gradient()
    cv2.imwrite(str(folder / "sixteen.png"), (g.astype(np.uint16) * 16 + 1000))  # 12-bit data
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([g, g, g, np.full_like(g, 128)]))
    Image.fromarray(np.dstack([g] * 3)).convert("CMYK").save(folder / "cmyk.jpg")
    write_dicom(
        dicom_dataset(dicom_ramp(100, 4000, np.uint16), bits_stored=12), folder / "mono2.dcm"
    )
    mono1 = dicom_dataset(dicom_ramp(100, 4000, np.uint16), "MONOCHROME1", bits_stored=12)
    write_dicom(mono1, folder / "mono1.dcm")  # low stored values are bright: left bright
    expect.update(dict.fromkeys(["sixteen.png", "rgba.png", "cmyk.jpg", "mono2.dcm"]))
    expect["mono1.dcm"] = None
    orientation = {n: "bright-right" for n in ("sixteen.png", "rgba.png", "cmyk.jpg", "mono2.dcm")}
    orientation["mono1.dcm"] = "bright-left"

    (folder / "corrupt.jpeg").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("this is a text file, not an X-ray\n" * 20)
    (folder / "huge.png").write_bytes(png_header_only(60_000, 60_000))
    write_dicom(dicom_dataset(None), folder / "nopixels.dcm")
    expect.update(
        {
            "corrupt.jpeg": "not a readable image",
            "empty.png": "empty file",
            "notes.txt": "not a readable image",
            "huge.png": "too large",
            "nopixels.dcm": "without pixel data",
        }
    )
    cv2.imwrite(str(folder / "whole.jpeg"), fake_xray(rng, False, 128))
    data = (folder / "whole.jpeg").read_bytes()
    (folder / "whole.jpeg").unlink()
    (folder / "truncated.jpeg").write_bytes(data[: len(data) // 3])
    expect["truncated.jpeg"] = ""  # libjpeg may pad a cut scan: either outcome, never lost
    return expect, orientation


def _check_batch(rows_paths: list[str], out: Path, res) -> tuple[pd.DataFrame, pd.DataFrame]:
    manifest = pd.read_csv(out / "manifest.csv")
    rejected = pd.read_csv(out / "rejected.csv")
    assert len(manifest) == len(res.manifest) and len(rejected) == len(res.rejected)
    assert len(manifest) + len(rejected) == len(rows_paths)  # nothing lost
    assert sorted([*manifest["path"], *rejected["path"]]) == sorted(rows_paths)
    assert rejected["reason"].fillna("").str.len().min() > 0  # every rejection says why
    info = json.loads((out / "cache.json").read_text())
    assert info["n_images"] + info["n_rejected"] == len(rows_paths)
    return manifest, rejected


def test_every_listed_file_is_cached_or_rejected_with_its_reason(tmp_path):
    root = tmp_path / "mixed"
    expected, orientation = {}, {}
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        exp, ori = _write_mixed(root / cls, seed=label)
        expected.update({f"{cls}/{k}": v for k, v in exp.items()})
        orientation.update({f"{cls}/{k}": v for k, v in ori.items()})
    (root / "NORMAL" / ".DS_Store").write_bytes(b"\x00")  # debris, not data
    (root / "__MACOSX" / "NORMAL").mkdir(parents=True)

    read = read_source("mixed", root)
    assert read.layout == "class-folders" and not read.excluded
    paths = [r.path for r in read.rows]
    assert len(paths) == len(expected) == 2 * 14

    out = tmp_path / "cache"
    res = build_cache(read.rows, out, CFG, "test", workers=1, progress=False)
    manifest, rejected = _check_batch(paths, out, res)

    def key(p: str) -> str:
        return Path(p).relative_to(root.resolve()).as_posix()

    cached = {key(p): i for p, i in zip(manifest["path"], manifest["index"], strict=True)}
    reasons = {key(p): r for p, r in zip(rejected["path"], rejected["reason"], strict=True)}
    for name, fragment in expected.items():
        if fragment is None:
            assert name in cached, f"{name} should be readable: {reasons.get(name)}"
        elif fragment:
            assert fragment in reasons.get(name, ""), f"{name}: {reasons.get(name)}"
        else:
            assert (name in cached) != (name in reasons)

    images = np.load(out / "images.npy", mmap_mode="r")
    for name, how in orientation.items():
        img = images[cached[name]].astype(float)
        left, right = img[:, :8].mean(), img[:, -8:].mean()
        if how == "bright-right":
            assert right - left > 150, (name, left, right)
        else:
            assert left - right > 150, (name, left, right)
    sixteen = images[cached["NORMAL/sixteen.png"]]
    assert sixteen.min() <= 5 and sixteen.max() >= 250  # 16-bit range kept, not clipped
    labels = dict(zip(map(key, manifest["path"]), manifest["label"], strict=True))
    assert labels["NORMAL/good0.jpeg"] == 0 and labels["PNEUMONIA/good0.jpeg"] == 1


def test_csv_listing_of_bad_and_missing_files_loses_nothing(tmp_path):
    expected, _ = _write_mixed(tmp_path / "imgs", seed=3)
    names = sorted(expected)
    lines = ["path,label"] + [f"imgs/{n},{i % 2}" for i, n in enumerate(names)]
    lines += ["imgs/not_there.png,1", "imgs/good0.jpeg,maybe", ",0"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")

    read = read_source("lst", tmp_path / "list.csv")
    assert len(read.rows) == len(names) + 1 and len(read.excluded) == 2
    assert len(read.rows) + len(read.excluded) == len(lines) - 1  # every listed line accounted

    out = tmp_path / "cache"
    res = build_cache(read.rows, out, CFG, "test", workers=1, progress=False)
    _, rejected = _check_batch([r.path for r in read.rows], out, res)
    missing = rejected[rejected["path"].str.endswith("not_there.png")]
    assert len(missing) == 1 and "cannot open file" in missing["reason"].iloc[0]
