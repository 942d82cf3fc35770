"""``--backend torch-bf16``: the run's torch model under bf16 autocast, channels-last.

Convolutions and the last layer run in bfloat16 on the CPU's bf16 units; the
normalisation before them and everything after the network stay in float32 (autocast
leaves element-wise ops alone, and logits and features are cast to float32 before the
temperature, the threshold and the OOD guard see them). bf16 keeps 8 bits of mantissa,
so logits move by about 1e-2: `bench/predict.py` measures what that does to AUROC and
calls. Where the CPU has no native bf16 (no AVX512-BF16 or AMX) oneDNN would emulate it,
slower than float32, so the backend refuses with a one-line message instead.
"""

from __future__ import annotations

import numpy as np
import torch

from pneumoscope.core.errors import UserError
from pneumoscope.model.hardware import cpu_features
from pneumoscope.model.run import LoadedRun, row_batches


def check_bf16_fast() -> None:
    """UserError unless this CPU runs bf16 natively."""
    cpu = cpu_features()
    if not cpu.bf16_fast:
        raise UserError(
            f"--backend torch-bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this "
            f"one ({cpu.machine}, {cpu.capability}) would emulate it, slower than float32: "
            "use --backend onnx-int8 (after 'pneumoscope export --int8') or torch"
        )


class TorchBf16Runner:
    """``LoadedRun.logits_and_features`` in bf16 autocast, channels-last; float32 out."""

    def __init__(self, loaded: LoadedRun, check: bool = True):
        if check:
            check_bf16_fast()
        self.loaded = loaded
        self.root = loaded.root
        self.net = loaded.inference_net().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def logits_and_features(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N,) and penultimate features (N, D), float32, of preprocessed uint8 images."""
        logits, feats = [], []
        for _, chunk in row_batches(images, rows, batch_size):
            x = torch.from_numpy(chunk).unsqueeze(1).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z, f = self.net(x)
            logits.append(z.float().numpy())
            feats.append(f.float().numpy())
        return np.concatenate(logits), np.concatenate(feats)
