"""Benchmark the per-image costs of `data prepare` and `predict` and their two engines, local
and Ray (a local Ray cluster on this machine's cores), on the same real films.

    python bench/engines.py --run runs/r18 --source ../shared/data/chest_xray_224 --n 500 \\
        --cpus 2 --out bench/results/engines.json

Stages, timed in this one process, one thread, over the N files (read once before timing,
so the page cache serves every method): decode + preprocess (``decode_gray`` then
``preprocess_gray`` at the run's size and CLAHE), hashing (``exact_hash`` and
``perceptual_hash`` of the decoded pixels) and ONNX inference (ONNX Runtime, one thread,
batches of --batch-size, on the preprocessed images in memory).
Engines, wall time over the N files with --cpus cores: the prepare stage
(``cache.decode_rows`` with --cpus processes, against ``ray_prepare.decode_rows_ray``) and
`predict` (``predict_to_csv`` with the float32 ONNX backend, against ``engine="ray"``,
the CSV written to a temporary folder). The Ray cluster is started once, before timing
(its start is reported apart); each Ray job still pays for scheduling and for starting its
workers, which the per-image figure includes; each engine also runs a job of the first
--small files, and the two job times split its cost into a fixed part per job and a
marginal cost per image (what a large job tends to). Timed passes go round-robin over the
methods (--repeats), the median pass counts; the load average is recorded.
The shared films are small (224 px JPEGs), a hospital's are not: the first --film-n films
are also enlarged (bicubic) to each of --film-sizes pixels square and written as JPEG
(quality 95), 16-bit PNG and 16-bit DICOM (MONOCHROME2, 12 bits stored; uncompressed
and JPEG 2000 lossless), and decoding
(read + decode + preprocess at the run's size) and hashing are timed on those files too,
once each, page cache warm.
The run is copied into a temporary folder and exported to ONNX there, so it is left
untouched; only its architecture and size matter to the costs, not its weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from record import machine, method

from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import decode_rows
from pneumoscope.data.dedupe import exact_hash, perceptual_hash
from pneumoscope.data.preprocess import decode_gray, preprocess_gray
from pneumoscope.data.ray_prepare import decode_rows_ray
from pneumoscope.data.sources import parse_source_spec, read_source
from pneumoscope.inference.export import export_onnx
from pneumoscope.inference.onnx_runner import OnnxRunner
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.model.run import load_run

SMALL = " (small job)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a trained run (copied, not changed)")
    p.add_argument("--source", default="../shared/data/chest_xray_224", help="PATH or NAME=PATH")
    p.add_argument("--n", type=int, default=500, help="films timed")
    p.add_argument("--small", type=int, default=64, help="films of the small job (fixed costs)")
    p.add_argument("--cpus", type=int, default=2, help="cores for both engines")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--film-sizes", default="1024,2048", help="enlarged film sides, comma list")
    p.add_argument("--film-n", type=int, default=40, help="films enlarged per size")
    p.add_argument("--out", type=Path, default=Path("bench/results/engines.json"))
    return p.parse_args(argv)


def bench_files(spec: str, n: int) -> list[str]:
    name, path = parse_source_spec(spec)
    paths = [r.path for r in read_source(name, path).rows]
    if n and n < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]
    for p in paths:  # page cache: no method pays for the disk
        Path(p).read_bytes()
    return paths


def stage_costs(paths: list[str], run: Path, batch_size: int) -> dict:
    """Milliseconds per image of each stage, one process, one thread."""
    cfg = load_run(run).preprocess
    t0 = time.perf_counter()
    grays = [decode_gray(p) for p in paths]
    images = np.stack([preprocess_gray(g, cfg) for g in grays])
    t1 = time.perf_counter()
    for g in grays:
        exact_hash(g), perceptual_hash(g)
    t2 = time.perf_counter()
    runner = OnnxRunner(run, threads=1)
    runner.logits_and_features(images[:batch_size], batch_size)  # warm-up
    t3 = time.perf_counter()
    runner.logits_and_features(images, batch_size)
    t4 = time.perf_counter()
    n = len(paths)
    return {
        "decode_preprocess_ms": 1000 * (t1 - t0) / n,
        "hash_ms": 1000 * (t2 - t1) / n,
        "onnx_inference_ms": 1000 * (t4 - t3) / n,
    }


FILM_FORMATS = ("jpeg", "png16", "dicom16", "dicom16-j2k")


def write_film(gray: np.ndarray, side: int, fmt: str, path: Path) -> Path:
    """``gray`` enlarged to side x side, written as ``fmt`` (one of FILM_FORMATS)."""
    import cv2

    big = cv2.resize(gray, (side, side), interpolation=cv2.INTER_CUBIC)
    if fmt == "jpeg":
        cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
        return path
    wide = big.astype(np.uint16) * 16 + 8  # 12 bits stored in 16, as detectors give
    if fmt == "png16":
        cv2.imwrite(str(path), wide)
        return path
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(wide, "MONOCHROME2", 12)
    if fmt == "dicom16-j2k":
        from pydicom.uid import JPEG2000Lossless

        ds.compress(JPEG2000Lossless)  # as many archives store films (pylibjpeg-openjpeg)
    ds.save_as(path, enforce_file_format=True)
    return path


def film_costs(paths: list[str], run: Path, sizes: list[int], n: int, tmp: Path) -> dict:
    """Per film size and format: MB per file, ms per image to decode + preprocess and to
    hash, on enlarged copies of the first ``n`` films (one process, one thread)."""
    cfg = load_run(run).preprocess
    grays = [decode_gray(p) for p in paths[:n]]
    out = {}
    for side in sizes:
        for fmt in FILM_FORMATS:
            ext = {"jpeg": "jpg", "png16": "png"}.get(fmt, "dcm")
            files = [
                write_film(g, side, fmt, tmp / f"f{side}_{k}.{ext}") for k, g in enumerate(grays)
            ]
            for f in files:
                f.read_bytes()
            t0 = time.perf_counter()
            decoded = [decode_gray(f) for f in files]
            for g in decoded:
                preprocess_gray(g, cfg)
            t1 = time.perf_counter()
            for g in decoded:
                exact_hash(g), perceptual_hash(g)
            t2 = time.perf_counter()
            out[f"{fmt} {side}"] = {
                "side": side,
                "format": fmt,
                "mb_per_file": sum(f.stat().st_size for f in files) / len(files) / 1e6,
                "decode_preprocess_ms": 1000 * (t1 - t0) / len(files),
                "hash_ms": 1000 * (t2 - t1) / len(files),
            }
            for f in files:
                f.unlink()
    return out


def engine_methods(paths: list[str], run: Path, args, tmp: Path, tag: str = "") -> dict:
    cfg = load_run(run).preprocess
    tmp = tmp / f"engines{tag}"
    tmp.mkdir()
    listing = tmp / "inputs.csv"
    pd.DataFrame({"path": paths}).to_csv(listing, index=False)

    def predict(engine: str) -> pd.DataFrame:
        out = tmp / f"{engine}.csv"
        predict_to_csv(run, [str(listing)], out, args.batch_size, args.cpus, "onnx", engine=engine)
        return pd.read_csv(out)

    return {
        f"prepare stage, local{tag}": lambda: (
            decode_rows(paths, tmp / "l", cfg, args.cpus, False).ok
        ),
        f"prepare stage, ray{tag}": lambda: (
            decode_rows_ray(paths, tmp / "r", cfg, progress=False).ok
        ),
        f"predict, local{tag}": lambda: predict("local"),
        f"predict, ray{tag}": lambda: predict("ray"),
    }


def time_engines(methods: dict, repeats: int) -> tuple[dict, dict]:
    outputs = {name: fn() for name, fn in methods.items()}  # warm-up pass, kept for checks
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
        print(f"pass {r + 1}/{repeats} done", flush=True)
    return {name: float(np.median(s)) for name, s in seconds.items()}, outputs


def per_image(median_s: dict, n: int, n_small: int) -> dict:
    """Per engine: wall ms per image over N files, and a fixed part per job (start-up,
    scheduling) and a marginal ms per image, from the job times at N and at n_small."""
    out = {}
    for name in [k for k in median_s if not k.endswith(SMALL)]:
        big, small = median_s[name], median_s[name + SMALL]
        marginal = (big - small) / (n - n_small)
        out[name] = {
            "seconds": big,
            "seconds_small_job": small,
            "ms_per_image": 1000 * big / n,
            "marginal_ms_per_image": 1000 * marginal,
            "fixed_s_per_job": small - n_small * marginal,
        }
    return out


def agreement(outputs: dict) -> dict:
    """Whether the engines gave the same results on the timed files."""
    a, b = outputs["predict, local"], outputs["predict, ray"]
    return {
        "prepare_same_rows_decoded": bool(
            np.array_equal(outputs["prepare stage, local"], outputs["prepare stage, ray"])
        ),
        "predict_same_paths_and_status": bool(
            a["path"].tolist() == b["path"].tolist()
            and a["status"].tolist() == b["status"].tolist()
        ),
        "predict_max_probability_difference": float(
            (a["probability"] - b["probability"]).abs().max()
        ),
    }


def run(args: argparse.Namespace) -> dict:
    import ray

    paths = bench_files(args.source, args.n)
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as tmp:
        tmp = Path(tmp)
        run_copy = tmp / "run"
        shutil.copytree(args.run, run_copy, ignore=shutil.ignore_patterns("checkpoints"))
        export_onnx(run_copy)
        print(f"{len(paths)} files; stage costs ...", flush=True)
        stages = stage_costs(paths, run_copy, args.batch_size)
        print(f"films enlarged to {args.film_sizes} px ...", flush=True)
        sizes = [int(s) for s in args.film_sizes.split(",") if s]
        films = film_costs(paths, run_copy, sizes, args.film_n, tmp)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        try:
            small = paths[: args.small]
            methods = engine_methods(paths, run_copy, args, tmp)
            methods |= engine_methods(small, run_copy, args, tmp, SMALL)
            print("engines: warm-up pass ...", flush=True)
            median_s, outputs = time_engines(methods, args.repeats)
        finally:
            ray.shutdown()
    engines = per_image(median_s, len(paths), len(small))
    return {
        "n_files": len(paths),
        "n_files_small_job": len(small),
        "stages": stages,
        "films": films,
        "ray_cluster_start_s": ray_start,
        "engines": engines,
        "agreement": agreement(outputs),
    }


def table(res: dict, args: argparse.Namespace) -> str:
    s = res["stages"]
    infer = f"ONNX inference (batch {args.batch_size})"
    lines = [
        f"{res['n_files']} films, run {args.run.name}; {os.cpu_count()} cores, engines on "
        f"{args.cpus}; load average {os.getloadavg()[0]:.2f}; median of {args.repeats} passes",
        f"{'stage (1 process, 1 thread)':<34}{'ms/image':>10}",
        f"{'decode + preprocess':<34}{s['decode_preprocess_ms']:>10.2f}",
        f"{'exact + perceptual hash':<34}{s['hash_ms']:>10.2f}",
        f"{infer:<34}{s['onnx_inference_ms']:>10.2f}",
        f"{'engine (wall, ' + str(args.cpus) + ' cores)':<34}{'ms/image':>10}{'marginal':>10}"
        f"{'fixed s':>9}",
    ]
    for name, r in res["engines"].items():
        lines.append(
            f"{name:<34}{r['ms_per_image']:>10.2f}{r['marginal_ms_per_image']:>10.2f}"
            f"{r['fixed_s_per_job']:>9.2f}"
        )
    lines.append(f"{'enlarged films (1 thread)':<34}{'MB/file':>10}{'decode ms':>10}{'hash ms':>9}")
    for name, r in res["films"].items():
        lines.append(
            f"{name:<34}{r['mb_per_file']:>10.2f}{r['decode_preprocess_ms']:>10.2f}"
            f"{r['hash_ms']:>9.2f}"
        )
    lines.append(
        f"Ray cluster start (once): {res['ray_cluster_start_s']:.1f} s; {res['agreement']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    res = run(args)
    print(table(res, args))
    import onnxruntime
    import ray

    record = {
        "config": {
            "run": str(args.run),
            "source": args.source,
            "n_files": res["n_files"],
            "cpus": args.cpus,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "small_job": args.small,
            "film_sizes": args.film_sizes,
            "film_n": args.film_n,
        },
        "machine": machine(load_before, ray=ray.__version__, onnxruntime=onnxruntime.__version__),
        "method": method(__doc__),
        **{k: res[k] for k in ("stages", "films", "ray_cluster_start_s", "engines", "agreement")},
        "n_files_small_job": res["n_files_small_job"],
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
