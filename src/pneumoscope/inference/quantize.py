"""Static int8 quantisation of an exported model: QDQ format, per-channel weights,
activation ranges calibrated on validation images.

Why static: dynamic quantisation re-measures every activation at run time and, for conv
nets, ran slower than float32 (see :mod:`pneumoscope.inference.export`). Static QDQ
fixes each activation's scale from calibration images, so ONNX Runtime fuses
QuantizeLinear/DequantizeLinear pairs around Conv, Gemm, Add and pooling into int8
kernels (QLinearConv, ...) that use the CPU's VNNI/AMX units; OpenVINO reads the same
file as an int8 model. Weights are signed int8 per output channel (the layer-wise
alternative loses the small filters of a ResNet), activations unsigned int8 (what
x86 int8 kernels take), ranges by MinMax over the calibration images: on the ResNet-18
reference it kept validation AUROC within 0.0002 of float32.

Weights use 7 of their 8 bits (``reduce_range``): without VNNI (an AVX2-only CPU such as
AMD Zen 3), ONNX Runtime's u8 x s8 kernels add pairs of products in 16 bits, which full
8-bit weights can overflow. On such a CPU the 8-bit model of a 160 px reference run moved
a validation probability by 0.19 and flipped 18 of 521 calls; the 7-bit one moved none by
more than 0.03 and flipped 3, AUROC +0.0001. The file is the same on every CPU, so it is
made safe for all of them.

The calibration images are a seeded sample of the validation split (256 by default),
never test images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pneumoscope.core.io import atomic_write
from pneumoscope.inference.export_record import INT8_FORMAT

CALIB_N = 256
CALIB_BATCH = 32
INPUT = "image"


def calibration_sample(n_images: int, n: int = CALIB_N, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded sample of ``n`` of ``n_images`` (all when fewer)."""
    if n_images <= n:
        return np.arange(n_images)
    return np.sort(np.random.default_rng(seed).choice(n_images, n, replace=False))


def _reader(images: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """Batches of preprocessed uint8 images (B, 1, S, S) under the model's input name."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                np.ascontiguousarray(images[i : i + CALIB_BATCH, None])
                for i in range(0, len(images), CALIB_BATCH)
            )

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT: batch}

    return ImageReader()


def quantize_qdq(src: Path, dst: Path, calib_images: np.ndarray) -> dict:
    """Write the static int8 QDQ model of ``src`` to ``dst`` (atomically); its settings.

    quant_pre_process first: it folds batch norms into the convolutions (so they are
    quantised as one) and re-infers shapes the dynamo exporter leaves symbolic.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="pneumoscope-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))

        def write(out: str) -> None:
            quantize_static(
                str(pre),
                out,
                _reader(calib_images),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                reduce_range=True,
            )

        atomic_write(dst, write)
    return {
        "format": INT8_FORMAT,
        "ops": quantised_ops(dst),
        "weight_type": "QInt8 per-channel, 7-bit range",
        "activation_type": "QUInt8",
        "calibration": {"method": "MinMax", "n_images": len(calib_images)},
    }


def quantised_ops(path: Path) -> list[str]:
    """The op types that take a dequantised input in ``path``: those that run in int8."""
    import onnx

    graph = onnx.load(str(path)).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sorted(
        {n.op_type for n in graph.node if n.op_type != "QuantizeLinear" and set(n.input) & dq}
    )
