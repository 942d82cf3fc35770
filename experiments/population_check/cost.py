"""Cost per film of the population check against the pneumonia model, same process.

Times the forward pass (torch, float32, eval mode, ``torch.inference_mode``) on one
thread at batch 1 and batch 32 of: the pneumonia model (timm ``resnet18``, 1 input
channel, 1 logit, as the package builds it) at 160 px (the target's reference) and 192
px; the population check ``popnet`` at its input size; and, for the record, timm's
``mobilenetv3_small_050`` at the same size. Each timing is the median of ``--reps``
repeats after warm-up, interleaved round-robin so that a neighbour's load hits every model
alike. Also times ``load_image`` at the check's size (decode + resize + CLAHE of a 224 px
pediatric JPEG), the only extra preprocessing the check adds, and the ONNX Runtime forward
of popnet (one thread). Prints a table and writes ``cost.json``; the CPU (lscpu model name,
avx2/avx512_bf16/amx flags) is in both.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/population_check/cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import build, n_params  # noqa: E402

HERE = Path(__file__).resolve().parent


def cpu_name() -> dict:
    """lscpu's model name and the matrix/vector flags that decide CPU speed here."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except Exception:
        out = ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    flags_line = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    flags = set(flags_line.split())
    return dict(
        model=model,
        avx2="avx2" in flags,
        avx512_bf16="avx512_bf16" in flags,
        amx="amx_tile" in flags or "amx_bf16" in flags,
        logical_cpus=os.cpu_count(),
    )


def flops(model: torch.nn.Module, size: int) -> float:
    """Multiply-accumulates of one forward pass (conv and linear layers), by hooks."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            total[0] += (
                out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            )
        elif isinstance(m, torch.nn.Linear):
            total[0] += m.in_features * m.out_features

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 1, size, size))
    for h in hs:
        h.remove()
    return float(total[0])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=128, help="the check's input size")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", type=Path, default=HERE / "cost.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    entries = [
        ("resnet18", 160),
        ("resnet18", 192),
        ("popnet", args.size),
        ("mobilenetv3_small_050", args.size),
    ]
    models = {}
    for name, size in entries:
        m = build(name).eval()
        models[(name, size)] = m
    results = {k: {1: [], 32: []} for k in models}
    xs = {(k, b): torch.randn(b, 1, k[1], k[1]) for k in models for b in (1, 32)}
    with torch.inference_mode():
        for k, m in models.items():  # warm-up
            for b in (1, 32):
                for _ in range(3):
                    m(xs[(k, b)])
        for _ in range(args.reps):
            for k, m in models.items():
                for b in (1, 32):
                    x = xs[(k, b)]
                    n = 10 if b == 1 else 1
                    t = time.perf_counter()
                    for _ in range(n):
                        m(x)
                    results[k][b].append((time.perf_counter() - t) / n / b)
    rows = []
    for (name, size), r in results.items():
        rows.append(
            dict(
                model=name,
                size=size,
                params=n_params(models[(name, size)]),
                macs=flops(models[(name, size)], size),
                ms_per_film_b1=1e3 * float(np.median(r[1])),
                ms_per_film_b32=1e3 * float(np.median(r[32])),
            )
        )
    base = next(r for r in rows if r["model"] == "resnet18" and r["size"] == 160)
    for r in rows:
        r["ratio_b1"] = r["ms_per_film_b1"] / base["ms_per_film_b1"]
        r["ratio_b32"] = r["ms_per_film_b32"] / base["ms_per_film_b32"]
        r["ratio_macs"] = r["macs"] / base["macs"]

    extra = {
        "load_image_ms": preprocessing_ms(args.size),
        "onnxruntime_popnet": onnx_ms(models[("popnet", args.size)], args.size),
    }
    cpu = cpu_name()
    print(f"CPU: {cpu}; torch {torch.__version__}, 1 thread, float32")
    print(
        f"{'model':24s} {'px':>4s} {'params':>9s} {'MMAC':>8s} {'ms/film b1':>11s} {'x b1':>6s} "
        f"{'ms/film b32':>12s} {'x b32':>6s}"
    )
    for r in rows:
        print(
            f"{r['model']:24s} {r['size']:4d} {r['params']:9d} {r['macs'] / 1e6:8.1f} "
            f"{r['ms_per_film_b1']:11.3f} "
            f"{r['ratio_b1']:6.3f} {r['ms_per_film_b32']:12.3f} {r['ratio_b32']:6.3f}"
        )
    print(
        f"load_image at {args.size} px (224 px JPEG): {extra['load_image_ms']:.3f} ms/film; "
        f"popnet in ONNX Runtime (1 thread): {extra['onnxruntime_popnet']}"
    )
    args.out.write_text(
        json.dumps(
            dict(cpu=cpu, torch=torch.__version__, threads=1, reps=args.reps, rows=rows, **extra),
            indent=1,
        )
    )
    print(f"wrote {args.out}")


def preprocessing_ms(size: int, n: int = 200) -> float:
    from pneumoscope.data.preprocess import PreprocessConfig, load_image

    files = sorted(Path("/work/shared/data/chest_xray_224/test").glob("*/*.jpeg"))[:n]
    cfg = PreprocessConfig(img_size=size)
    load_image(files[0], cfg)
    t = time.perf_counter()
    for f in files:
        load_image(f, cfg)
    return 1e3 * (time.perf_counter() - t) / len(files)


def onnx_ms(model: torch.nn.Module, size: int) -> dict | str:
    """Median ms per film of popnet exported to ONNX, batch 1 and 32, one intra-op thread."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not installed"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "popnet.onnx")
        torch.onnx.export(
            model,
            torch.zeros(1, 1, size, size),
            path,
            input_names=["x"],
            output_names=["logit"],
            dynamic_axes={"x": {0: "n"}, "logit": {0: "n"}},
            dynamo=False,
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out = {}
        for b in (1, 32):
            x = np.random.default_rng(0).standard_normal((b, 1, size, size)).astype(np.float32)
            for _ in range(5):
                sess.run(None, {"x": x})
            ts = []
            for _ in range(15):
                n = 10 if b == 1 else 1
                t = time.perf_counter()
                for _ in range(n):
                    sess.run(None, {"x": x})
                ts.append((time.perf_counter() - t) / n / b)
            out[f"ms_per_film_b{b}"] = 1e3 * float(np.median(ts))
        out["onnx_bytes"] = os.path.getsize(path)
    return out


if __name__ == "__main__":
    main()
