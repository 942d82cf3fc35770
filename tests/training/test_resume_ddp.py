"""A killed run resumes to exactly where the uninterrupted run ends; checkpoints are
written atomically; two CPU processes (DDP, gloo) train one run whose validation AUROC
is over the whole validation set and whose files only the first process writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.data.loader import IndexBatchSampler
from pneumoscope.model.run import load_run
from pneumoscope.training.callbacks import AtomicCheckpointIO
from pneumoscope.training.config import resume_config
from pneumoscope.training.train import TrainConfig, train
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Kill(Callback):
    """Dies in the middle of an epoch, like a killed process (after last.ckpt was saved)."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("killed")


class Final(Callback):
    """The network's weights when training ends (the last epoch, not the best one)."""

    def on_train_end(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


def _cfg(data_dir, out, scheduler: str) -> TrainConfig:
    return TrainConfig(
        data=str(data_dir),
        out=str(out),
        model="seed_cnn",  # dropout: the global generator matters too
        epochs=3,
        batch_size=16,
        optimizer="rmsprop" if scheduler == "plateau" else "adamw",
        scheduler=scheduler,
        patience=10,
        seed=11,
        threads=1,
        accelerator="cpu",
        augment={"rotation": 10, "hflip": 0.5, "gamma": 0.2, "crop": 0.1},
    )


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_killed_run_resumes_to_the_uninterrupted_result(data_dir, tmp_path, scheduler):
    whole = Final()
    train(_cfg(data_dir, tmp_path / "whole", scheduler), progress=False, callbacks=[whole])

    run = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train(_cfg(data_dir, run, scheduler), progress=False, callbacks=[Kill(1, 2)])
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "model.json").exists()
    assert len(pd.read_csv(run / "history.csv")) == 1  # epoch 0 only
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no partial files

    resumed = Final()
    notes: list[str] = []
    cfg = resume_config(run, {"max_minutes": 60.0})  # what --resume RUN does
    card = train(cfg, progress=False, resume=True, callbacks=[resumed], echo=notes.append)
    assert any("resuming" in n for n in notes)
    assert whole.state.keys() == resumed.state.keys()
    assert all(torch.equal(whole.state[k], resumed.state[k]) for k in whole.state)
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the best epoch's weights too
    ha = pd.read_csv(tmp_path / "whole" / "history.csv").drop(columns="elapsed_s")
    hb = pd.read_csv(run / "history.csv").drop(columns="elapsed_s")
    pd.testing.assert_frame_equal(ha, hb)  # the history survived the kill, row for row
    assert card.training.epochs_run == 3 and card.training.stopped_by == "max_epochs"
    whole_card = json.loads((tmp_path / "whole" / "model.json").read_text())
    assert card.best_epoch == whole_card["best_epoch"]
    assert card.threshold == whole_card["threshold"]
    assert not (run / "checkpoints" / "last.ckpt").exists()  # finished for good: removed


def test_resume_refusals_are_one_line(data_dir, tmp_path):
    with pytest.raises(UserError, match="config.yaml not found"):
        resume_config(tmp_path, {})
    run = tmp_path / "done"
    cfg = _cfg(data_dir, run, "cosine")
    cfg.epochs = 1
    train(cfg, progress=False)
    with pytest.raises(UserError, match="--lr cannot change.*only --max-minutes, --threads"):
        resume_config(run, {"lr": 0.1})
    with pytest.raises(UserError, match="finished already"):
        train(resume_config(run, {}), progress=False, resume=True)
    (run / "checkpoints" / "summary.json").unlink()
    (run / "model.json").unlink()  # killed before the first epoch ended: nothing to resume
    with pytest.raises(UserError, match="start the run again without --resume"):
        train(resume_config(run, {}), progress=False, resume=True)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_sampler_shards_batches_across_processes(monkeypatch):
    rows = np.arange(100, 153)  # 53 rows
    seen_train, seen_eval, counts = [], [], []
    for rank in (0, 1, 2):
        monkeypatch.setattr("pneumoscope.data.loader.process_rank", lambda r=rank: (r, 3))
        tr = IndexBatchSampler(rows, 8, shuffle=True, seed=4, drop_last=True)
        ev = IndexBatchSampler(rows, 8, shuffle=False)
        tb, eb = list(tr), list(ev)
        assert len(tb) == len(tr) == 53 // 8 // 3 and len(eb) == len(ev)
        counts.append(len(eb))
        seen_train += [int(i) for b in tb for i in b]
        seen_eval += [int(i) for b in eb for i in b]
    assert len(set(counts)) == 1  # the same number of evaluation batches everywhere
    assert sorted(seen_eval) == list(rows)  # every validation image exactly once
    assert len(seen_train) == len(set(seen_train))  # disjoint training batches
    monkeypatch.setattr("pneumoscope.data.loader.process_rank", lambda: (0, 1))
    single = [int(i) for b in IndexBatchSampler(rows, 8, True, seed=4, drop_last=True) for i in b]
    assert set(seen_train) <= set(single)  # the same seeded order, split by rank


def test_two_cpu_processes_with_ddp(data_dir, tmp_path):
    out = tmp_path / "ddp"
    r = run_cli(
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--model",
        "seed_cnn",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("best epoch") == 1  # one summary: only global zero reports
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["processes"] == 2
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [0, 1]  # one row per epoch, not one per process
    # the saved validation AUROC is over the whole validation set, not one process's half
    cache = open_cache(data_dir)
    val = cache.split("val")
    with np.load(out / "checkpoints" / "best_val.npz") as z:
        assert len(z["probs"]) == len(val)
    p = load_run(out).predict_proba(cache.images, rows=val["index"].to_numpy())
    auroc = roc_auc_score(val["label"].to_numpy(), p)
    assert auroc == pytest.approx(card["val_metrics"]["val_auroc"], abs=1e-6)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))
