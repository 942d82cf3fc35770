"""--precision: the choice for the machine (auto | bf16 | fp32) from its capability signals,
what the card records, seeded bf16 and fp32 runs that repeat bit for bit, a float32
validation pass, and a resume that refuses to continue in another precision."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.model import hardware as H
from pneumoscope.model.contract import ModelCard
from pneumoscope.model.run import load_run
from pneumoscope.training import precision as P
from pneumoscope.training.callbacks import RunRecorder
from pneumoscope.training.config import TrainConfig, resolve_config
from pneumoscope.training.train import train
from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AMX = {"amx_bf16": True, "avx512_bf16": True, "onednn": True}
AVX = {"amx_bf16": False, "avx512_bf16": True, "onednn": True}
NONE = {"amx_bf16": False, "avx512_bf16": False, "onednn": True}


# --------------------------------------------------------------------------- the choice


def test_auto_picks_bf16_only_where_the_hardware_runs_it_fast():
    assert P.cpu_bf16_unit(AMX) == "AMX-BF16" and P.cpu_bf16_unit(AVX) == "AVX512-BF16"
    assert P.cpu_bf16_unit(NONE) is None
    assert P.cpu_bf16_unit({**AMX, "onednn": False}) is None  # no oneDNN: no fast bf16 path
    cases = [
        (("auto", "cpu", "AMX-BF16"), ("bf16-mixed", "CPU has AMX-BF16 (auto)")),
        (("auto", "cpu", "AVX512-BF16"), ("bf16-mixed", "CPU has AVX512-BF16 (auto)")),
        (("auto", "cpu", None), ("32-true", "CPU has no AMX-BF16 or AVX512-BF16 (auto)")),
        (("auto", "cuda", None, True), ("bf16-mixed", "GPU has native bf16 (auto)")),
        (("auto", "cuda", None, False), ("32-true", "GPU has no native bf16 (auto)")),
        (("auto", "mps", None), ("32-true", "bf16 is not chosen automatically on mps (auto)")),
        (("fp32", "cpu", "AMX-BF16"), ("32-true", "float32 (--precision fp32)")),
        (("32", "cpu", "AMX-BF16"), ("32-true", "float32 (--precision 32)")),  # older configs
        (("bf16", "cpu", "AVX512-BF16"), ("bf16-mixed", "--precision bf16; CPU has AVX512-BF16")),
        (("bf16-mixed", "cuda", None, True),
         ("bf16-mixed", "--precision bf16-mixed; GPU has native bf16")),
        (("16-mixed", "cuda", None, True), ("16-mixed", "--precision 16-mixed")),
    ]  # fmt: skip
    for args, (lightning, reason) in cases:
        choice = P.choose_precision(*args)
        assert (choice.lightning, choice.reason, choice.warning) == (lightning, reason, ""), args


def test_bf16_asked_without_the_hardware_warns_on_cpu_and_is_refused_on_gpu():
    # CPU: runs (emulated, the same numerics), with a warning that says what is faster
    c = P.choose_precision("bf16", "cpu", None)
    assert c.lightning == "bf16-mixed" and "emulated" in c.reason
    assert "slower than float32" in c.warning and "--precision auto or fp32" in c.warning
    for asked, device, match in (
        ("bf16", "cuda", "this GPU has no native bf16"),
        ("16-mixed", "cpu", "needs a CUDA GPU; on CPU use --precision bf16, fp32 or auto"),
    ):
        with pytest.raises(UserError, match=match) as e:
            P.choose_precision(asked, device, None, False)
        assert "\n" not in str(e.value)


def test_cpu_signals_fall_back_to_proc_cpuinfo_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(H, "CPUINFO", info)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert P.cpu_bf16_unit(P.cpu_signals()) == (
        "AVX512-BF16" if P.cpu_signals()["onednn"] else None
    )
    assert P.cpu_signals()["amx_bf16"] is False
    info.write_text("flags\t\t: fpu amx_tile amx_bf16 avx512_bf16\n")
    assert P.cpu_signals()["amx_bf16"] is True
    info.write_text("flags\t\t: fpu sse avx2\n")  # an older x86 CPU
    assert P.cpu_bf16_unit(P.cpu_signals()) is None
    info.unlink()  # no /proc (another OS): no signal, float32
    assert P.cpu_signals()["avx512_bf16"] is False


def test_fast_cpu_falls_back_to_the_float32_preset_on_a_cpu_without_bf16(monkeypatch, tmp_path):
    """What the quickstart trains: fast-cpu where bf16 runs natively, the fast-cpu-fp32
    preset (float32, 160 px, 12 epochs; otherwise fast-cpu's) with a note where it would be
    emulated; `python -m pneumoscope.training.precision` names it for the script."""
    from pneumoscope.core.settings import read_preset

    assert P.fast_cpu_preset("AVX512-BF16") == ("fast-cpu", "")
    assert P.fast_cpu_preset("AMX-BF16") == ("fast-cpu", "")
    name, note = P.fast_cpu_preset(None)
    assert name == "fast-cpu-fp32"
    assert "no bf16 matrix units" in note and "160 px for 12 epochs" in note
    assert "fast-cpu's 192 px for 14" in note
    own, fp32 = read_preset("train", "fast-cpu"), read_preset("train", "fast-cpu-fp32")
    assert (fp32["img_size"], fp32["epochs"], fp32["precision"]) == (160, 12, "fp32")
    differ = {k for k in own.keys() | fp32.keys() if own.get(k) != fp32.get(k)}
    assert differ == {"img_size", "epochs", "precision"}  # everything else is fast-cpu's
    info = tmp_path / "cpuinfo"  # this machine made into an older x86 CPU
    info.write_text("flags\t\t: fpu sse avx2\n")
    monkeypatch.setattr(H, "CPUINFO", info)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert P.machine_fast_cpu_preset() == (name, note)


def test_the_quickstart_asks_the_module_for_its_preset():
    r = subprocess.run(
        [sys.executable, "-m", "pneumoscope.training.precision"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    unit = P.cpu_bf16_unit(P.cpu_signals())
    assert r.stdout == f"{P.fast_cpu_preset(unit)[0]}\n"
    assert ("note:" in r.stderr) == (unit is None)


def test_this_machines_signals_agree_with_its_cpu_flags():
    flags = H.cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this OS")
    assert P.cpu_signals()["avx512_bf16"] == ("avx512_bf16" in flags)


def test_auto_is_the_default_and_presets_keep_it(tmp_path):
    assert TrainConfig(data="d", out="o").precision == "auto"
    for name in ("fast-cpu", "seed1-cnn", "seed2-efficientnet"):
        assert resolve_config(name, {"data": "d", "out": str(tmp_path)}).precision == "auto"
    # the float32 recipe says so
    assert resolve_config("fast-cpu-fp32", {"data": "d", "out": "o"}).precision == "fp32"
    cfg = resolve_config(None, {"data": "d", "out": "o", "precision": "fp32"})
    assert cfg.precision == "fp32"
    with pytest.raises(UserError, match="--precision must be one of auto, bf16, fp32"):
        resolve_config(None, {"data": "d", "out": "o", "precision": "fp16"})


def test_old_cards_round_trip_and_the_reason_is_written_when_known():
    card = json.loads(_fixture_card().read_text())
    assert "precision_reason" not in ModelCard.from_dict(card).to_dict()["training"]
    card["training"]["precision_reason"] = "CPU has AMX-BF16 (auto)"
    loaded = ModelCard.from_dict(card)
    assert loaded.training.precision_reason == "CPU has AMX-BF16 (auto)"
    keys = list(loaded.to_dict()["training"])
    assert keys.index("precision_reason") == keys.index("precision") + 1


def _fixture_card():
    return REPO / "tests" / "fixtures" / "run_v1" / "model.json"


# --------------------------------------------------------------------------- runs


def _tiny(data_dir, out, precision: str) -> TrainConfig:
    return TrainConfig(
        data=str(data_dir),
        out=str(out),
        model="seed_cnn",
        epochs=2,
        batch_size=16,
        lr=3e-3,
        seed=3,
        threads=1,
        accelerator="cpu",
        precision=precision,
        augment={"rotation": 10, "crop": 0.2, "gamma": 0.2},
    )


def _weights(run) -> dict:
    return load_file(str(run / "model.safetensors"))


def _history(run) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns="elapsed_s")


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Two seeded runs in bf16 and two in fp32, on the same synthetic cache."""
    root = tmp_path_factory.mktemp("precision")
    cards = {}
    for name in ("bf16_a", "bf16_b", "fp32_a", "fp32_b"):
        torch.set_num_threads(1)
        cards[name] = train(_tiny(data_dir, root / name, name[:4]), progress=False)
    return root, cards


def test_seeded_runs_repeat_bit_for_bit_in_bf16_and_in_fp32(runs):
    root, cards = runs
    for p in ("bf16", "fp32"):
        a, b = _weights(root / f"{p}_a"), _weights(root / f"{p}_b")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), p
        pd.testing.assert_frame_equal(_history(root / f"{p}_a"), _history(root / f"{p}_b"))
        assert all(v.dtype in (torch.float32, torch.int64) for v in a.values())  # saved fp32
    # bf16 really ran: the same seed gives other weights than fp32
    a, b = _weights(root / "bf16_a"), _weights(root / "fp32_a")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert (cards["bf16_a"].training.precision, cards["fp32_a"].training.precision) == (
        "bf16-mixed",
        "32-true",
    )
    assert cards["fp32_a"].training.precision_reason == "float32 (--precision fp32)"
    assert cards["bf16_a"].training.precision_reason.startswith("--precision bf16")
    saved = json.loads((root / "bf16_a" / "model.json").read_text())["training"]
    assert saved["precision"] == "bf16-mixed" and saved["precision_reason"]


def test_bf16_training_keeps_batchnorm_statistics_and_validation_in_float32(runs, data_dir):
    """BatchNorm running statistics stay float32 buffers; the validation probabilities that
    chose the threshold are the saved float32 model's (a bf16 pass would differ by ~1e-2)."""
    root, _ = runs
    run = root / "bf16_a"
    bn = {k: v for k, v in _weights(run).items() if "running_" in k}
    assert bn and all(v.dtype == torch.float32 for v in bn.values())
    with np.load(run / "checkpoints" / "best_val.npz") as z:
        probs = z["probs"]
    cache = open_cache(data_dir)
    rows = cache.split("val")["index"].to_numpy()
    logits = load_run(run, use_calibration=False).predict_logits(cache.images, rows=rows)
    assert np.abs(1 / (1 + np.exp(-logits)) - probs).max() < 1e-5


def test_a_resume_in_another_precision_is_refused_in_one_line(tmp_path):
    state = RunRecorder(tmp_path, None, "bf16-mixed").state_dict()
    RunRecorder(tmp_path, None, "bf16-mixed").load_state_dict(state)  # same: fine
    old = {k: v for k, v in state.items() if k != "precision"}  # checkpoints before the field
    RunRecorder(tmp_path, None, "32-true").load_state_dict(old)
    with pytest.raises(UserError, match="trained in bf16-mixed.*resolves to 32-true") as e:
        RunRecorder(tmp_path, None, "32-true").load_state_dict(state)
    assert "\n" not in str(e.value)


def test_cli_precision_flag_reaches_the_card(data_dir, tmp_path):
    out = tmp_path / "cli"
    r = run_cli(
        "train", "--data", str(data_dir), "--out", str(out), "--model", "seed_cnn",
        "--epochs", "1", "--batch-size", "16", "--threads", "1", "--accelerator", "cpu",
        "--precision", "fp32", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "precision: 32-true (float32 (--precision fp32))" in r.stderr
    card = json.loads((out / "model.json").read_text())["training"]
    assert (card["precision"], card["precision_reason"]) == (
        "32-true",
        "float32 (--precision fp32)",
    )
