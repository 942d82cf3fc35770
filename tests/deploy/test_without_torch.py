"""An exported run scores, explains and writes DICOM results with torch unimportable, and
gives the very answers of the training install.

The processes here block torch, torchvision, timm, Lightning and grad-cam at import (a
meta-path finder that raises ImportError), which is what the serving install is like
without building one; tests/deploy/test_serving_install.py builds the real one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.realdata

TRAINING_ONLY = ("torch", "torchvision", "timm", "lightning", "pytorch_grad_cam", "onnxscript")
BLOCKER = f"""
import importlib.abc, sys
class _NoTraining(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAINING_ONLY!r}:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, _NoTraining())
"""


def _python(code: str, blocked: bool, cwd: Path) -> subprocess.CompletedProcess:
    script = (BLOCKER if blocked else "") + code
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _cli(args: list[str], blocked: bool, cwd: Path) -> subprocess.CompletedProcess:
    argv = ["pneumoscope", *args]
    code = f"import sys\nfrom pneumoscope.cli import main\nsys.argv = {argv!r}\nmain()"
    return _python(code, blocked, cwd)


def test_nothing_from_training_loads_with_torch_blocked(tmp_path):
    res = _python("import torch", blocked=True, cwd=tmp_path)
    assert res.returncode != 0 and "blocked for this test" in res.stderr


def test_predict_explain_and_dicom_results_match_the_training_install(exported, films, tmp_path):
    for blocked in (False, True):
        out = tmp_path / ("blocked" if blocked else "full")
        args = ["predict", str(films), "--run", str(exported), "--backend", "onnx"]
        args += ["--out", str(out / "p.csv"), "--gradcam", str(out / "heat")]
        args += ["--dicom-out", str(out / "dicom")]
        res = _cli(args, blocked, tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    full, lean = (pd.read_csv(tmp_path / k / "p.csv") for k in ("full", "blocked"))
    assert (full["status"] == "ok").all() and len(full) == 5
    cols = [c for c in full.columns if c != "heatmap"]
    pd.testing.assert_frame_equal(full[cols], lean[cols])
    for png in (tmp_path / "full" / "heat").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "blocked" / "heat" / png.name).read_bytes()
    made = sorted(p.name for p in (tmp_path / "blocked" / "dicom").rglob("*.dcm"))
    assert len(made) == 2  # the film's SR and its secondary capture


def test_python_api_without_torch(exported, films, tmp_path):
    code = (
        "import json\nfrom pneumoscope import api\n"
        f"m = api.load({str(exported)!r}, backend='onnx')\n"
        f"table = m.predict({str(films)!r})\n"
        "print(table[['probability', 'label', 'estimated_age_group']].to_json())"
    )
    full, lean = (_python(code, b, tmp_path) for b in (False, True))
    assert lean.returncode == 0, lean.stderr[-3000:]
    assert json.loads(lean.stdout) == json.loads(full.stdout)


def test_torch_backends_say_what_to_install(exported, films, tmp_path):
    args = ["predict", str(films), "--run", str(exported), "--out", str(tmp_path / "p.csv")]
    res = _cli(args, blocked=True, cwd=tmp_path)
    assert res.returncode != 0
    assert "pip install 'pneumoscope[train]'" in res.stderr and "Traceback" not in res.stderr


def test_the_exported_map_gives_grad_cams_heatmap(exported, films):
    """For a global-pooling + linear head, the class activation map is Grad-CAM's map: the
    heatmap from the export matches Grad-CAM on the torch network."""
    from pneumoscope.data.preprocess import load_image
    from pneumoscope.inference.gradcam import gradcam
    from pneumoscope.inference.onnx_runner import OnnxRunner
    from pneumoscope.model.run import load_run

    loaded = load_run(exported)
    imgs = np.stack([load_image(str(p), loaded.preprocess) for p in sorted(films.glob("*.jpeg"))])
    ours = OnnxRunner(exported).heatmaps(imgs, loaded.eval_crop)
    theirs = gradcam(loaded, imgs)
    assert ours.shape == theirs.shape == (4, 96, 96)
    assert float(np.abs(ours - theirs).max()) < 1e-3 and ours.max() > 0.99


@pytest.mark.parametrize(("arch", "has_map"), [("resnet18", True), ("seed_cnn", False)])
def test_only_a_pooling_linear_head_gets_the_map(arch, has_map):
    import torch

    from pneumoscope.model.architectures import build_model
    from pneumoscope.model.network import cam_weights

    net = build_model(arch, 1, 64, pretrained=False).eval()
    assert (cam_weights(net, torch.rand(2, 1, 64, 64)) is not None) == has_map


# The modules that need the training stack; every other module imports without it (a new
# torch import on the serving path fails here, in the quick tier).
NEEDS_TRAINING = {
    "data.augment", "data.loader", "inference.bf16", "inference.export", "inference.gradcam",
    "model.architectures", "model.ensemble", "model.hardware", "model.network",
    "model.weights", "training.callbacks", "training.ensemble", "training.module",
    "training.popnet", "training.precision", "training.train",
}  # fmt: skip


def test_only_the_training_modules_need_torch(tmp_path):
    code = (
        "import importlib, json, pkgutil, pneumoscope\nbad = []\n"
        "for m in pkgutil.walk_packages(pneumoscope.__path__, 'pneumoscope.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    try: importlib.import_module(m.name)\n"
        "    except ImportError: bad.append(m.name.removeprefix('pneumoscope.'))\n"
        "print(json.dumps(sorted(bad)))"
    )
    res = _python(code, blocked=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert set(json.loads(res.stdout.strip().splitlines()[-1])) == NEEDS_TRAINING


def test_a_ray_worker_scores_without_torch_as_predict_does(exported, films, tmp_path):
    """The Ray engine's worker (its actor, called here without a cluster) gets the run's
    test-time augmentation transforms from the driver and needs no torch."""
    jpegs = [str(p) for p in sorted(films.glob("*.jpeg"))]
    code = (
        "import json, numpy as np\n"
        "from pneumoscope.inference.predictor import Predictor\n"
        "from pneumoscope.inference.ray_predict import Scorer, ray_model\n"
        f"model = ray_model(Predictor.from_run({str(exported)!r}, 'onnx'))\n"
        "assert model.views is not None and len(model.views) == 2\n"
        f"cols = Scorer(model)({{'i': np.arange({len(jpegs)}), 'path': np.array({jpegs!r})}})\n"
        "print(json.dumps([float(p) for p in cols['probability']]))"
    )
    res = _python(code, blocked=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "p.csv"
    args = ["predict", *jpegs, "--run", str(exported), "--backend", "onnx", "--out", str(out)]
    assert _cli(args, blocked=False, cwd=tmp_path).returncode == 0
    local = pd.read_csv(out)["probability"].tolist()
    assert np.allclose(json.loads(res.stdout.strip().splitlines()[-1]), local, atol=1e-6)


def test_explain_with_an_exported_backend_needs_no_torch(exported, films, tmp_path):
    for blocked in (False, True):
        out = tmp_path / ("blocked" if blocked else "full")
        args = ["explain", str(films), "--run", str(exported), "--backend", "onnx"]
        res = _cli([*args, "--out", str(out)], blocked, tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    full, lean = (pd.read_csv(tmp_path / k / "explanations.csv") for k in ("full", "blocked"))
    assert (full["status"] == "ok").all() and len(full) == 5
    cols = [c for c in full.columns if c != "heatmap"]
    pd.testing.assert_frame_equal(full[cols], lean[cols])
    for png in (tmp_path / "full").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "blocked" / png.name).read_bytes()
    res = _cli(["explain", str(films), "--run", str(exported), "--out", str(tmp_path / "t")],
               blocked=True, cwd=tmp_path)  # fmt: skip
    assert res.returncode != 0 and "needs PyTorch" in res.stderr and "Traceback" not in res.stderr
