"""The numeric precision a training run uses, chosen for the machine (``--precision``).

``auto`` (the default) trains in bf16 mixed precision (Lightning's ``bf16-mixed``: the
weights, the optimiser and BatchNorm statistics stay float32; convolutions and matrix
products run in bfloat16 under autocast) where the hardware runs bfloat16 fast, and in
float32 elsewhere:

* a CPU with bf16 matrix units: Intel AMX-BF16 (Sapphire Rapids and later) or AVX512-BF16
  (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later), used by PyTorch's
  oneDNN; ResNet-18 training steps run about 2.2-2.5x faster than float32 on such a CPU
  (bench/train.py);
* a CUDA GPU with native bf16 (Ampere and later).

Everywhere else (older x86 CPUs, ARM, Apple MPS, older GPUs) ``auto`` keeps float32: there
bf16 is emulated and slower than float32. ``bf16`` asks for bf16 mixed precision whatever
the machine: on a CPU without bf16 units it still runs (same numerics, emulated, slower),
with a warning; on a GPU without native bf16 it is refused. ``fp32`` always trains in
float32. Lightning's own names (32, 32-true, bf16-mixed, 16-mixed, bf16-true, 64) are
accepted as before, so older run configs repeat unchanged.

bf16 needs no loss scaling (its exponent range is float32's); the loss, the metrics and the
validation pass (which picks the best epoch and the threshold) run in float32.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pneumoscope.model.hardware import cpu_signals

BF16 = "bf16-mixed"
FP32 = "32-true"
# Lightning names accepted from older configs, and what they mean here
ALIASES = {"32": "fp32", "32-true": "fp32", "bf16-mixed": "bf16"}


@dataclass(frozen=True)
class PrecisionChoice:
    """What the Trainer gets (``lightning``), why (for the model card), and a warning for
    the user when the choice will be slow ('' when none)."""

    lightning: str
    reason: str
    warning: str = ""


def cpu_bf16_unit(signals: dict[str, bool]) -> str | None:
    """The CPU's bf16 matrix unit that oneDNN uses ('AMX-BF16' or 'AVX512-BF16'), or None."""
    if not signals.get("onednn", False):
        return None
    if signals.get("amx_bf16"):
        return "AMX-BF16"
    if signals.get("avx512_bf16"):
        return "AVX512-BF16"
    return None


def gpu_bf16() -> bool:
    """Whether the CUDA GPU computes bf16 natively (not emulated)."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation argument
        return bool(torch.cuda.is_bf16_supported())


def choose_precision(
    asked: str, device: str, cpu_unit: str | None = None, gpu_has_bf16: bool = False
) -> PrecisionChoice:
    """The precision for ``asked`` (a --precision value) on ``device`` ('cpu', 'cuda' or
    'mps'), given the CPU's bf16 unit (``cpu_bf16_unit``) and whether the GPU has native
    bf16. Raises UserError for a precision the device cannot run."""
    from pneumoscope.core.errors import UserError

    want = ALIASES.get(asked, asked)
    if want == "auto":
        return _auto(device, cpu_unit, gpu_has_bf16)
    if want == "fp32":
        return PrecisionChoice(FP32, f"float32 (--precision {asked})")
    if want == "bf16":
        return _bf16_asked(asked, device, cpu_unit, gpu_has_bf16)
    if asked.startswith("16") and device == "cpu":
        raise UserError(
            f"--precision {asked} needs a CUDA GPU; on CPU use --precision bf16, fp32 or auto"
        )
    return PrecisionChoice(asked, f"--precision {asked}")


def _auto(device: str, cpu_unit: str | None, gpu_has_bf16: bool) -> PrecisionChoice:
    if device == "cpu" and cpu_unit:
        return PrecisionChoice(BF16, f"CPU has {cpu_unit} (auto)")
    if device == "cuda" and gpu_has_bf16:
        return PrecisionChoice(BF16, "GPU has native bf16 (auto)")
    why = {
        "cpu": "CPU has no AMX-BF16 or AVX512-BF16 (auto)",
        "cuda": "GPU has no native bf16 (auto)",
    }.get(device, f"bf16 is not chosen automatically on {device} (auto)")
    return PrecisionChoice(FP32, why)


def _bf16_asked(
    asked: str, device: str, cpu_unit: str | None, gpu_has_bf16: bool
) -> PrecisionChoice:
    from pneumoscope.core.errors import UserError

    if device == "cuda" and not gpu_has_bf16:
        raise UserError(
            f"--precision {asked}: this GPU has no native bf16 (Ampere or newer has); "
            "use --precision fp32, 16-mixed or auto"
        )
    if device == "cpu" and not cpu_unit:
        return PrecisionChoice(
            BF16,
            f"--precision {asked}; CPU without AMX-BF16 or AVX512-BF16: emulated",
            "this CPU has no bf16 matrix units (AMX-BF16, AVX512-BF16): bf16 is emulated "
            "and trains slower than float32; --precision auto or fp32 would be faster",
        )
    has = {"cpu": f"CPU has {cpu_unit}", "cuda": "GPU has native bf16"}.get(device, device)
    return PrecisionChoice(BF16, f"--precision {asked}; {has}")


def machine_precision(asked: str, device: str) -> PrecisionChoice:
    """``choose_precision`` with this machine's signals."""
    unit = cpu_bf16_unit(cpu_signals()) if device == "cpu" else None
    return choose_precision(asked, device, unit, gpu_bf16() if device == "cuda" else False)


# fast-cpu where bf16 would be emulated: the float32 recipe, a preset of its own (160 px,
# 12 epochs); in float32 fast-cpu's 192 px for 14 epochs would run about 1.7x longer and
# the 30-minute cap would cut it short.
FAST_CPU, FAST_CPU_FP32 = "fast-cpu", "fast-cpu-fp32"


def fast_cpu_preset(cpu_unit: str | None) -> tuple[str, str]:
    """The fast-cpu preset for a CPU with this bf16 unit (``cpu_bf16_unit``): fast-cpu where
    bf16 runs natively, fast-cpu-fp32 elsewhere, and a note for the user ('' for fast-cpu)."""
    if cpu_unit:
        return FAST_CPU, ""
    from pneumoscope.core.settings import read_preset

    own, fp32 = read_preset("train", FAST_CPU), read_preset("train", FAST_CPU_FP32)
    return FAST_CPU_FP32, (
        "this CPU has no bf16 matrix units (AMX-BF16, AVX512-BF16): training the float32 "
        f"recipe ({FAST_CPU_FP32}), {fp32['img_size']} px for {fp32['epochs']} epochs, "
        f"instead of {FAST_CPU}'s {own['img_size']} px for {own['epochs']}"
    )


def machine_fast_cpu_preset() -> tuple[str, str]:
    """``fast_cpu_preset`` for this machine's CPU."""
    return fast_cpu_preset(cpu_bf16_unit(cpu_signals()))


def main() -> None:
    """``python -m pneumoscope.training.precision``: the fast-cpu preset for this machine
    on stdout (what scripts/quickstart.sh trains), the note on stderr."""
    name, note = machine_fast_cpu_preset()
    print(name)
    if note:
        print(f"note: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
