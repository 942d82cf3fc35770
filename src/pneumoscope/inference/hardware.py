"""What this CPU's matrix units can do for inference, and so which backends run fast here.

PyTorch's oneDNN runs bf16 convolutions on native bf16 instructions (AVX512-BF16, Intel
AMX) and emulates them elsewhere, where bf16 is slower than float32; int8 kernels (ONNX
Runtime, OpenVINO) are fastest with VNNI (AVX512-VNNI, AVX-VNNI, AMX) and still run, at a
lower speed, on plain AVX2. The answers come from PyTorch's cpuinfo probes
(``torch.cpu._is_*_supported``), which read the CPUID bits, so they hold on any OS.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import cache

import torch


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)  # private but stable since torch 2.3; absent: no
    try:
        return bool(fn()) if fn else False
    except RuntimeError:
        return False


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's matrix-unit instruction sets that matter to the inference backends."""

    avx512_bf16: bool
    amx: bool
    vnni: bool
    capability: str  # PyTorch's kernel level: DEFAULT, AVX2, AVX512, ...
    machine: str

    @property
    def bf16_fast(self) -> bool:
        """Whether bf16 convolutions run natively (not emulated) here."""
        return self.avx512_bf16 or self.amx

    def to_dict(self) -> dict:
        return {**asdict(self), "bf16_fast": self.bf16_fast}


@cache
def cpu_features() -> CpuFeatures:
    return CpuFeatures(
        avx512_bf16=_probe("_is_avx512_bf16_supported"),
        amx=_probe("_is_amx_tile_supported"),
        vnni=_probe("_is_vnni_supported"),
        capability=torch.backends.cpu.get_cpu_capability(),
        machine=platform.machine(),
    )
