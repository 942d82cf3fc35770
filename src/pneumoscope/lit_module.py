"""The LightningModule: one-logit classifier, BCE with logits, batched augmentation,
and per-epoch metrics (loss, accuracy at 0.5, AUROC) on train and validation."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment_batch
from .metrics import binary_metrics
from .models import build_model
from .runs import normalize, normalize_float, sigmoid


class Classifier(L.LightningModule):
    def __init__(
        self,
        architecture: str,
        in_chans: int,
        img_size: int,
        mean: list[float],
        std: list[float],
        lr: float,
        weight_decay: float,
        warmup_epochs: float,
        pos_weight: float | None,
        augment: dict,
        seed: int,
        pretrained: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(architecture, in_chans, img_size, pretrained=pretrained)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        pw = None if pos_weight is None else torch.tensor(float(pos_weight))
        self.register_buffer("pos_weight", pw, persistent=False)
        self.aug = AugmentConfig.from_dict(augment)
        self._train_out: list[tuple[np.ndarray, np.ndarray, float, int]] = []
        self._val_out: list[tuple[np.ndarray, np.ndarray]] = []
        self.last_val: dict = {}
        self.last_val_probs: np.ndarray | None = None
        self.last_val_labels: np.ndarray | None = None
        self.last_train: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        in_chans = self.hparams.in_chans
        if self.trainer is not None and self.trainer.training:
            # One generator per step: the same step gets the same augmentation after resume.
            gen = torch.Generator(device=x.device)
            gen.manual_seed(int(self.hparams.seed) * 1_000_003 + int(self.global_step))
            xf = augment_batch(x.float().div_(255.0), self.aug, gen)
            return normalize_float(xf, self.mean, self.std, in_chans), y
        return normalize(x, self.mean, self.std, in_chans), y

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self._train_out.append(
            (logits.detach().float().cpu().numpy(), y.cpu().numpy(), float(loss.detach()), len(y))
        )
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self._val_out.append((logits.float().cpu().numpy(), y.cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        # Validation runs once at the end of each training epoch, so the epoch's training
        # outputs are complete here too: both sets of metrics are computed in one place.
        if self._train_out:
            t_logits = np.concatenate([o[0] for o in self._train_out])
            t_y = np.concatenate([o[1] for o in self._train_out])
            t_loss = sum(o[2] * o[3] for o in self._train_out) / sum(o[3] for o in self._train_out)
            self._train_out.clear()
            tm = binary_metrics(t_y, sigmoid(t_logits), 0.5)
            self.last_train = {
                "train_loss": t_loss,
                "train_accuracy": tm["accuracy"],
                "train_auroc": tm["auroc"],
            }
        if not self._val_out:
            return
        logits = np.concatenate([o[0] for o in self._val_out])
        y = np.concatenate([o[1] for o in self._val_out])
        self._val_out.clear()
        probs = sigmoid(logits)
        loss = float(self._loss(torch.from_numpy(logits), torch.from_numpy(y)))
        m = binary_metrics(y, probs, 0.5)
        self.last_val = {"val_loss": loss, "val_accuracy": m["accuracy"], "val_auroc": m["auroc"]}
        self.last_val_probs, self.last_val_labels = probs, y
        for k, v in self.last_val.items():
            self.log(k, v, prog_bar=k != "val_loss")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = max(1, int(self.hparams.warmup_epochs * per_epoch))

        def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 1% of lr
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
