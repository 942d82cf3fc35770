"""What this CPU's matrix units can do: the one probe behind training's ``--precision auto``
and inference's backends.

PyTorch's oneDNN runs bf16 convolutions on native bf16 instructions (AVX512-BF16, Intel
AMX-BF16) and emulates them elsewhere, where bf16 is slower than float32; int8 kernels (ONNX
Runtime, OpenVINO) are fastest with VNNI (AVX512-VNNI, AVX-VNNI, AMX) and still run, more
slowly, on plain AVX2. The answers come from PyTorch's cpuinfo probes
(``torch.cpu._is_*_supported``, which read the CPUID bits and whether the OS enabled AMX
tiles), and from the /proc/cpuinfo flags where this PyTorch lacks a probe.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def probe(name: str) -> bool | None:
    """PyTorch's private cpuinfo probe ``name`` (stable since torch 2.3); None if absent."""
    fn = getattr(torch.cpu, name, None)
    if not callable(fn):
        return None
    try:
        return bool(fn())
    except RuntimeError:
        return None


def cpuinfo_flags() -> set[str]:
    """The CPU flags the kernel reports (x86 'flags', ARM 'Features'); empty elsewhere."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_signals() -> dict[str, bool]:
    """amx_bf16, avx512_bf16 and vnni from PyTorch's probes, else the /proc/cpuinfo flags;
    onednn: whether PyTorch's oneDNN (which uses the bf16 units) is built in."""
    flags = cpuinfo_flags()

    def either(name: str, *flag_names: str) -> bool:
        found = probe(name)
        return any(f in flags for f in flag_names) if found is None else found

    return {
        "amx_bf16": either("_is_amx_tile_supported", "amx_bf16"),
        "avx512_bf16": either("_is_avx512_bf16_supported", "avx512_bf16"),
        "vnni": either("_is_vnni_supported", "avx512_vnni", "avx_vnni", "amx_int8"),
        "onednn": bool(torch.backends.mkldnn.is_available()),
    }


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's matrix-unit instruction sets that matter to training and inference."""

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
    signals = cpu_signals()
    return CpuFeatures(
        avx512_bf16=signals["avx512_bf16"],
        amx=signals["amx_bf16"],
        vnni=signals["vnni"],
        capability=torch.backends.cpu.get_cpu_capability(),
        machine=platform.machine(),
    )
