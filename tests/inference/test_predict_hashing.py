"""One predict call reads the weights file once for its SHA-256 (calibration check, OOD
guard check and model id all ask for it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.model import contract

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"


def test_one_predict_call_hashes_the_weights_once(tmp_path, monkeypatch):
    run = tmp_path / "run"  # a fresh path: nothing of it is cached yet
    shutil.copytree(FIXTURE, run)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"x{i}.png"), rng.integers(0, 256, (48, 48), np.uint8))
    hashed: list[Path] = []
    real = contract._sha256_of
    monkeypatch.setattr(contract, "_sha256_of", lambda p: hashed.append(p) or real(p))
    counts = predict_to_csv(
        run, [str(tmp_path / f"x{i}.png") for i in range(3)], tmp_path / "p.csv"
    )
    assert counts.ok == 3
    assert hashed == [(run / "model.safetensors").resolve()]
