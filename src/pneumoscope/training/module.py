"""The LightningModule: one-logit classifier, BCE with logits, batched augmentation,
and per-epoch metrics (loss, accuracy at 0.5, AUROC) on train and validation.

Randomness is a function of (seed, step, rank) only: the augmentation generator and the
global generator (dropout) are seeded per step, so a run resumed from an end-of-epoch
checkpoint continues exactly as the uninterrupted run did. Under DDP the
per-epoch outputs of every process are gathered before the metrics are computed, so the
validation AUROC is always over the whole validation set.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from pneumoscope.data.augment import AugmentConfig, augment_batch
from pneumoscope.evaluation.metrics import binary_metrics
from pneumoscope.model.architectures import build_model
from pneumoscope.model.network import model_input, normalize_float
from pneumoscope.model.run import sigmoid

# Lightning advice that does not apply here, silenced in every process (spawned ones too)
QUIET_WARNINGS = (
    ".*does not have many workers.*",  # batches come from a memory map: no workers needed
    ".*deterministic.*",
    ".*LeafSpec.*",  # Lightning vs newer torch
    ".*sync_dist=True.*",  # epoch metrics are gathered, identical on all ranks
    ".*callbacks used to create the checkpoint.*",
)


def quiet_warnings() -> None:
    for msg in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=msg)


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
        eval_crop: float = 1.0,
        optimizer: str = "adamw",
        scheduler: str = "cosine",
        plateau_factor: float = 0.5,
        plateau_patience: int = 2,
        channels_last: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(architecture, in_chans, img_size, pretrained=pretrained)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        pw = None if pos_weight is None else torch.tensor(float(pos_weight))
        self.register_buffer("pos_weight", pw, persistent=False)
        self.aug = AugmentConfig.from_dict(augment)
        self._train_out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._val_out: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last_val: dict = {}
        self.last_val_probs: np.ndarray | None = None
        self.last_val_labels: np.ndarray | None = None
        self.last_train: dict = {}
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._plateau is not None:
            checkpoint["plateau_scheduler"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the optimiser (hence the scheduler) is made after this hook: apply it there
        self._plateau_state = checkpoint.get("plateau_scheduler")

    def setup(self, stage: str) -> None:
        quiet_warnings()  # runs in every process, including ddp_spawn's
        if self.hparams.channels_last:
            # NHWC: oneDNN's and cuDNN's fast convolution layout. Values are unchanged (the
            # weights file is written contiguous); only the strides differ.
            self.net.to(memory_format=torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Dropout and anything else on the global generator: seeded by (seed, step, rank),
        # not by whatever drew from it before (a DataLoader iterator draws a seed when it is
        # made, at other moments in a resumed run), so a resumed run repeats the original.
        torch.manual_seed(_mix(self.hparams.seed, self.global_step, self.global_rank, 1))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        hp = self.hparams
        if self.trainer is not None and self.trainer.training:
            # One generator per step: the same step gets the same augmentation after resume.
            gen = torch.Generator(device=x.device)
            gen.manual_seed(_mix(hp.seed, self.global_step, self.global_rank, 0))
            xf = augment_batch(x.float().div_(255.0), self.aug, gen)
            return self._layout(normalize_float(xf, self.mean, self.std, hp.in_chans)), y
        return self._layout(model_input(x, self.mean, self.std, hp.in_chans, hp.eval_crop)), y

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=pw)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        # kept on the device: no host synchronisation per step
        self._train_out.append((logits.detach().float(), y.detach(), loss.detach() * len(y)))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        # float32 whatever the training precision: the validation AUROC (which picks the
        # best epoch) and the validation probabilities (which pick the threshold) are
        # those of the float32 model that is saved and served.
        x, y = batch
        with torch.autocast(x.device.type, enabled=False):
            logits = self(x)
        self._val_out.append((logits.detach().float(), y.detach()))

    def on_validation_epoch_end(self) -> None:
        # Validation runs once at the end of each training epoch, so the epoch's training
        # outputs are complete here too: both sets of metrics are computed in one place.
        if self.trainer.sanity_checking:
            self._val_out.clear()
            return
        train = self._gather(self._train_out, with_loss=True)
        self._train_out.clear()
        if train is not None:
            t_logits, t_y, t_loss = train
            tm = binary_metrics(t_y, sigmoid(t_logits), 0.5)
            self.last_train = {
                "train_loss": t_loss,
                "train_accuracy": tm["accuracy"],
                "train_auroc": tm["auroc"],
            }
        val = self._gather(self._val_out)
        self._val_out.clear()
        if val is None:
            return
        logits, y, _ = val
        probs = sigmoid(logits)
        loss = float(self._loss(torch.from_numpy(logits), torch.from_numpy(y)).cpu())
        m = binary_metrics(y, probs, 0.5)
        self.last_val = {"val_loss": loss, "val_accuracy": m["accuracy"], "val_auroc": m["auroc"]}
        self.last_val_probs, self.last_val_labels = probs, y
        if self._plateau is not None and self.trainer.training and np.isfinite(m["auroc"]):
            self._plateau.step(m["auroc"])
        for k, v in self.last_val.items():
            # identical on every process (computed from the gathered outputs): no sync needed
            self.log(k, v, prog_bar=k != "val_loss", sync_dist=False, rank_zero_only=False)

    def _gather(self, outs: list, with_loss: bool = False):
        """This epoch's (logits, labels[, mean loss]) from every process, as numpy."""
        if outs:
            logits = torch.cat([o[0] for o in outs]).cpu().numpy()
            y = torch.cat([o[1] for o in outs]).float().cpu().numpy()
            loss_sum = float(torch.stack([o[2] for o in outs]).sum().cpu()) if with_loss else 0.0
        else:
            logits, y, loss_sum = np.zeros(0, np.float32), np.zeros(0, np.float32), 0.0
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:
            import torch.distributed as dist

            parts: list = [None] * world
            dist.all_gather_object(parts, (logits, y, loss_sum))
            logits = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
            loss_sum = sum(p[2] for p in parts)
        if len(y) == 0:
            return None
        return logits, y, loss_sum / len(y)

    def configure_optimizers(self):
        hp = self.hparams
        params = list(self.parameters())
        if hp.optimizer == "rmsprop":  # Keras's RMSprop: rho 0.9, epsilon 1e-7
            opt = torch.optim.RMSprop(
                params, lr=hp.lr, alpha=0.9, eps=1e-7, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "constant":
            return opt
        if hp.scheduler == "plateau":
            # Stepped here, on validation AUROC, rather than by Lightning: Lightning steps
            # epoch schedulers after the end-of-epoch checkpoint and skips that step when
            # resuming, so a resumed run would drift from the uninterrupted one.
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=hp.plateau_factor, patience=hp.plateau_patience
            )
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
                self._plateau_state = None
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        self._per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        self._total_steps = total
        warmup = max(1, int(hp.warmup_epochs * self._per_epoch))

        def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 1% of lr
            if step < warmup:
                return (step + 1) / warmup
            t = min(1.0, (step - warmup) / max(1, self._total_steps - warmup))
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _mix(seed: int, counter: int, rank: int, stream: int) -> int:
    """A 63-bit seed from (seed, counter, rank, stream). Rank 0, stream 0 keeps the formula
    earlier versions used for the augmentation generator."""
    return (int(seed) * 1_000_003 + int(counter) + (int(rank) << 40) + (int(stream) << 52)) % (
        1 << 63
    )
