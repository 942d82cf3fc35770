"""Lightning callbacks of a training run: the run recorder, the resumable last checkpoint,
backbone freezing, and atomic checkpoint writes.

Only the global-zero process writes files; every process runs the callbacks, so the
collective calls (checkpoint saving) line up under DDP.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write, write_json_atomic
from pneumoscope.model.architectures import head_module
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.network import save_weights


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, then rename over it.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in
    the system temp folder, so the final move can be a copy across file systems."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class LastCheckpoint(Checkpoint):
    """At the end of every epoch: RUN/checkpoints/last.ckpt, the full training state
    (weights, optimiser, schedulers, early stopping, loops, the recorder's history), which
    ``--resume`` continues from.

    Saved in ``on_train_epoch_end``, where Lightning's own ModelCheckpoint saves, so a
    resume starts cleanly at the next epoch; a Checkpoint subclass, so Lightning runs it
    after every other callback (early stopping included) and the state is complete."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)  # every process calls it; global zero writes


class FreezeBackbone(Callback):
    """Train only the classifier for the first ``epochs`` epochs, then everything.

    Frozen parameters have ``requires_grad`` off, so they get no gradient and the
    optimiser (which holds every parameter from the start) leaves them untouched, weight
    decay included. The state is a function of the epoch, so resuming needs nothing saved.
    BatchNorm statistics keep updating, as in the design this reproduces.
    """

    def __init__(self, epochs: int):
        self.epochs = int(epochs)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        frozen = trainer.current_epoch < self.epochs
        head = {id(p) for p in head_module(pl_module.net).parameters()}
        for p in pl_module.net.parameters():
            if id(p) not in head:
                p.requires_grad_(not frozen)


class RunRecorder(Callback):
    """After each epoch's validation: append to history.csv and, when validation AUROC
    improves, save the weights atomically, so a killed run still leaves its best model.

    Its state (history rows, best epoch, best validation predictions) is part of the
    checkpoint, so a resumed run's history continues where it stopped."""

    def __init__(self, out: Path, init: dict | None = None, precision: str | None = None):
        self.files = RunFiles(Path(out))
        self.init = init
        self.precision = precision  # Lightning's name; a resume must continue in the same
        self.rows: list[dict] = []
        self.best_auroc = -np.inf
        self.best: dict = {}
        self.best_probs: np.ndarray | None = None
        self.best_labels: np.ndarray | None = None
        self.elapsed_before = 0.0  # seconds spent before a resume
        self.t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not pl_module.last_val:
            return
        epoch = trainer.current_epoch
        self.rows.append(
            {
                "epoch": epoch,
                **pl_module.last_train,
                **pl_module.last_val,
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "elapsed_s": round(self._elapsed(), 1),
            }
        )
        auroc = pl_module.last_val["val_auroc"]
        improved = bool(np.isfinite(auroc) and auroc > self.best_auroc)
        if improved:
            self.best_auroc = auroc
            self.best = {"epoch": epoch, **pl_module.last_val}
            self.best_probs = pl_module.last_val_probs
            self.best_labels = pl_module.last_val_labels
        if not trainer.is_global_zero:
            return
        df = pd.DataFrame(self.rows)
        atomic_write(self.files.history, lambda tmp: df.to_csv(tmp, index=False))
        if improved:
            save_weights(pl_module.net, self.files.weights)
            self._save_best_val()

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        es = trainer.early_stopping_callback
        if es is not None and es.stopped_epoch:
            stopped = "early_stopping"
        elif len(self.rows) >= (trainer.max_epochs or 0):
            stopped = "max_epochs"
        else:
            stopped = "max_time"
        write_json_atomic(
            self.files.summary,
            {
                "stopped_by": stopped,
                "init": self.init,
                "train_seconds": self._elapsed(),
            },
        )

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def _save_best_val(self) -> None:
        probs = np.asarray(self.best_probs, np.float64)
        labels = np.asarray(self.best_labels, np.float64)
        atomic_write(
            self.files.best_val,
            lambda tmp: _savez(tmp, probs=probs, labels=labels),
        )

    # Plain types and tensors only: checkpoints are loaded with weights_only=True.
    def state_dict(self) -> dict:
        return {
            "rows": [{k: _plain(v) for k, v in r.items()} for r in self.rows],
            "best_auroc": float(self.best_auroc),
            "best": {k: _plain(v) for k, v in self.best.items()},
            "best_probs": None if self.best_probs is None else torch.from_numpy(self.best_probs),
            "best_labels": None
            if self.best_labels is None
            else torch.from_numpy(np.asarray(self.best_labels)),
            "elapsed_s": self._elapsed(),
            "init": self.init,
            "precision": self.precision,
        }

    def load_state_dict(self, state: dict) -> None:
        _same_precision(state.get("precision"), self.precision, self.files.root)
        self.rows = list(state["rows"])
        self.best_auroc = float(state["best_auroc"])
        self.best = dict(state["best"])
        bp, bl = state.get("best_probs"), state.get("best_labels")
        self.best_probs = None if bp is None else bp.numpy()
        self.best_labels = None if bl is None else bl.numpy()
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.t0 = time.perf_counter()
        self.init = state.get("init", self.init)


def _same_precision(saved: str | None, now: str | None, run: Path) -> None:
    """A resumed run continues in the precision it started in (``--precision auto`` can
    resolve otherwise on another machine). Checkpoints older than the field: no check."""
    if saved is None or now is None or saved == now:
        return
    raise UserError(
        f"{run} was trained in {saved} precision, but here its config resolves to {now} "
        "(--precision auto picks by machine); resume it on a machine like the one it "
        f"started on, or start a new run with --weights {run}"
    )


def _plain(v):
    """numpy scalars -> Python numbers (weights_only loading refuses numpy objects)."""
    return v.item() if hasattr(v, "item") else v


def _savez(tmp: str, **arrays) -> None:
    with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
        np.savez(fh, **arrays)
