"""Benchmark the prepare stage (decode, resize, CLAHE, exact and perceptual hashes) against a
naive single-process PIL loop over the same files, in the same run.

    python bench/prepare.py --source ../shared/data/chest_xray_224 \\
        --source ../shared/data/chest_xray_covid19_pneumonia_256 --n 2000 --img-size 128 \\
        --workers 2 --out bench/results/prepare.json

Methods, all on the same N files (spread evenly over the sources' file lists), each
producing the same things per image: a preprocessed img_size square, the SHA-1 of the
decoded gray pixels and a 256-bit perceptual hash:
  * naive PIL loop: one process; PIL open, convert("L"), CLAHE (OpenCV) at full
    resolution, resize (OpenCV, area), imagehash.phash of the full-resolution image;
  * pneumoscope, 1 process and --workers processes: ``cache.decode_rows``, the code
    ``data prepare`` runs (OpenCV decode, resize first, CLAHE on the small image, hashes
    from the one decode, the phash on a 64 x 64 thumbnail; results written to a
    memory-mapped array), process start-up included.
The files are read once before timing, so every method finds them in the page cache.
Timed passes go round-robin over the methods (--repeats), so a change in the machine's
load hits them all alike; the median pass counts. The load average is recorded: other
processes on the machine take cores from the parallel method first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import imagehash
import numpy as np
from PIL import Image
from record import machine, method

from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import decode_rows
from pneumoscope.data.dedupe import PHASH_SIZE, exact_hash, hamming, hex_to_words
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.sources import parse_source_spec, read_source

BASELINE = "naive PIL loop"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", action="append", required=True, help="PATH or NAME=PATH")
    p.add_argument("--n", type=int, default=2000, help="files timed (0 = all)")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/prepare.json"))
    return p.parse_args(argv)


def bench_files(specs: list[str], n: int) -> list[str]:
    paths: list[str] = []
    for spec in specs:
        name, path = parse_source_spec(spec)
        paths += [r.path for r in read_source(name, path).rows]
    if n and n < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]
    for p in paths:  # page cache: no method pays for the disk
        Path(p).read_bytes()
    return paths


def naive_loop(paths: list[str], cfg: PreprocessConfig) -> tuple[list[str], list[str]]:
    """The straightforward way: PIL decode, CLAHE at full size, resize, imagehash."""
    clahe = cv2.createCLAHE(cfg.clahe_clip_limit, (cfg.clahe_tile_grid, cfg.clahe_tile_grid))
    out = np.empty((len(paths), cfg.img_size, cfg.img_size), np.uint8)
    sha, ph = [], []
    for i, p in enumerate(paths):
        im = Image.open(p).convert("L")
        a = np.asarray(im)
        sha.append(exact_hash(a))
        eq = clahe.apply(a) if cfg.clahe else a
        out[i] = cv2.resize(eq, (cfg.img_size, cfg.img_size), interpolation=cv2.INTER_AREA)
        ph.append(str(imagehash.phash(im, hash_size=PHASH_SIZE)))
    return sha, ph


def pipeline(paths: list[str], cfg: PreprocessConfig, workers: int) -> tuple[list, list]:
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        dec = decode_rows(paths, Path(tmp), cfg, workers=workers, progress=False)
        return dec.sha1, dec.phash


def run(args: argparse.Namespace) -> dict:
    cfg = PreprocessConfig(img_size=args.img_size)
    paths = bench_files(args.source, args.n)
    methods = {
        BASELINE: lambda: naive_loop(paths, cfg),
        "pneumoscope, 1 process": lambda: pipeline(paths, cfg, 1),
        f"pneumoscope, {args.workers} processes": lambda: pipeline(paths, cfg, args.workers),
    }
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    outputs: dict[str, tuple] = {}
    print(f"{len(paths)} files; warm-up pass of each method ...", flush=True)
    for name, fn in methods.items():
        outputs[name] = fn()
    for r in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
        print(f"pass {r + 1}/{args.repeats} done", flush=True)
    base_sha, base_ph = outputs[BASELINE]
    results = {}
    for name in methods:
        med = float(np.median(seconds[name]))
        sha, ph = outputs[name]
        results[name] = {
            "seconds": seconds[name],
            "median_s": med,
            "images_per_s": len(paths) / med,
            "speedup_x": float(np.median(seconds[BASELINE])) / med,
            "sha1_equal_to_naive": float(
                np.mean([a == b for a, b in zip(sha, base_sha, strict=True)])
            ),
            "phash_bits_from_naive_mean": float(
                hamming(hex_to_words(ph), hex_to_words(base_ph)).mean()
            ),
        }
    return {"n_files": len(paths), "results": results}


def table(res: dict, args: argparse.Namespace) -> str:
    head = f"{'method':<26}{'img/s':>9}{'s':>8}{'x naive':>9}{'sha1 =':>8}{'phash d':>9}"
    lines = [
        f"{res['n_files']} files -> {args.img_size} px + CLAHE + SHA-1 + 256-bit phash; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; median of "
        f"{args.repeats} passes; sha1 = share equal to naive's, phash d = mean bits apart",
        head,
        "-" * len(head),
    ]
    for name, r in res["results"].items():
        lines.append(
            f"{name:<26}{r['images_per_s']:>9.1f}{r['median_s']:>8.2f}{r['speedup_x']:>9.2f}"
            f"{r['sha1_equal_to_naive']:>8.3f}{r['phash_bits_from_naive_mean']:>9.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    res = run(args)
    print(table(res, args))
    record = {
        "config": {
            "sources": args.source,
            "n_files": res["n_files"],
            "img_size": args.img_size,
            "workers": args.workers,
            "repeats": args.repeats,
        },
        "machine": machine(load_before, opencv=cv2.__version__),
        "method": method(__doc__),
        "results": res["results"],
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
