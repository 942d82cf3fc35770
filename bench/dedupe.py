"""Benchmark the exact near-duplicate search: the multi-index hash (FAISS, data/near_index.py)
against the exhaustive all-pairs search (data/dedupe.py ``near_pairs``), on synthetic codes.

    python bench/dedupe.py --n 100000 --threshold 24 --threads 2 --out bench/results/dedupe.json
    python bench/dedupe.py --threads 2      # 100k, 300k and 1M codes (the issue's table)

Codes: N seeded uniform random 256-bit codes (like 256-bit phashes, without their skew),
with planted copies of other rows: 1% of N (at least 10) at a random distance 0..threshold,
which must be found (recall 1.0), and 0.25% (at least 5) at threshold+1..threshold+4, which
must not (false pairs 0); a found pair farther than the threshold is also a false pair.
Each size and method runs in a fresh subprocess that makes the codes first, so its peak
resident set (VmHWM) counts that search only: "peak +MB" is the peak less the resident set
after the codes were made. Index: build = bit reordering + adding the codes to FAISS's
tables, query = its range searches + the exact check of the pairs found, total = all of
``index_near_pairs`` (setting chosen for N by ``exact_multihash``; the rest, "other_s", is
mostly freeing the index's hash tables, then importing FAISS); --threads OpenMP
threads for FAISS. The exhaustive search (numpy, one thread) runs as the baseline at sizes
up to --exhaustive-max, and its pairs are compared with the index's (recall against it,
pair lists equal). CPU seconds are recorded beside wall seconds: on a machine busy with
other work the wall time is not the search's. The load average is recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from record import machine, method

from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.dedupe import hamming, near_pairs
from pneumoscope.data.near_index import index_near_pairs

DEFAULT_SIZES = (100_000, 300_000, 1_000_000)
BITS = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", action="append", help="codes (repeatable, or a comma list)")
    p.add_argument("--threshold", type=int, default=24, help="Hamming distance [24]")
    p.add_argument("--threads", type=int, default=2, help="FAISS query threads [2]")
    p.add_argument("--exhaustive-max", type=int, default=100_000, help="baseline up to N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/dedupe.json"))
    p.add_argument("--worker", choices=("index", "exhaustive"), help=argparse.SUPPRESS)
    p.add_argument("--pairs-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = [int(x) for s in args.n for x in s.split(",")] if args.n else DEFAULT_SIZES
    if any(n < 100 for n in args.sizes) or args.threshold < 0:
        p.error("--n must be >= 100 and --threshold >= 0")
    return args


# ---------------------------------------------------------------- codes


def planted_codes(n: int, threshold: int, seed: int) -> tuple[np.ndarray, dict]:
    """(N, 4) uint64 uniform codes with planted copies; {"within", "beyond"}: (k, 2) pairs
    (i < j) planted at distances 0..threshold and threshold+1..threshold+4."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, np.iinfo(np.uint64).max, (n, 4), np.uint64, endpoint=True)
    n_in, n_out = max(10, n // 100), max(5, n // 400)
    rows = rng.permutation(n)[: 2 * (n_in + n_out)].reshape(2, -1)  # disjoint src / dst
    dist = np.concatenate(
        [rng.integers(0, threshold + 1, n_in), rng.integers(threshold + 1, threshold + 5, n_out)]
    )
    dist = np.minimum(dist, BITS)
    rank = np.argsort(rng.random((len(dist), BITS)), axis=1)  # random distinct bit positions
    flips = np.packbits(rank < dist[:, None], axis=1).view(np.uint64)
    words[rows[1]] = words[rows[0]] ^ flips
    pairs = np.sort(rows.T, axis=1)
    return words, {"within": pairs[:n_in], "beyond": pairs[n_in:]}


# ---------------------------------------------------------------- worker (subprocess)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")  # not Linux


def worker(args: argparse.Namespace) -> None:
    """Run one method on one size; save its pairs; print {timings, memory} as JSON."""
    (n,) = args.sizes
    words, _ = planted_codes(n, args.threshold, args.seed)
    base = _status_mb("VmRSS")
    stats: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if args.worker == "index":
        i, j, d = index_near_pairs(words, args.threshold, threads=args.threads, stats=stats)
    else:
        i, j, d = near_pairs(words, args.threshold)
    stats.update(total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
    stats.update(baseline_rss_mb=base, peak_rss_mb=_status_mb("VmHWM"))
    np.savez(args.pairs_out, i=i, j=j, d=d)
    print(json.dumps(stats))


def run_worker(method: str, n: int, args: argparse.Namespace, tmp: Path) -> tuple[dict, tuple]:
    pairs_out = tmp / f"{method}_{n}.npz"
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--pairs-out",
           str(pairs_out), "--threshold", str(args.threshold), "--threads", str(args.threads),
           "--seed", str(args.seed)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} worker at n={n} failed:\n{done.stderr[-2000:]}")
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    stats["peak_increase_mb"] = stats["peak_rss_mb"] - stats["baseline_rss_mb"]
    with np.load(pairs_out) as z:
        return stats, (z["i"], z["j"], z["d"])


# ---------------------------------------------------------------- one size


def _pair_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist(), strict=True))


def check_pairs(n: int, args: argparse.Namespace, found: tuple) -> dict:
    """Recall of the planted pairs and false pairs, by the exact distance."""
    words, planted = planted_codes(n, args.threshold, args.seed)
    i, j, d = found
    exact = hamming(words[i], words[j]) if len(i) else np.zeros(0, np.int32)
    got = _pair_set(i, j)
    within = _pair_set(*planted["within"].T)
    beyond = _pair_set(*planted["beyond"].T)
    return {
        "pairs": len(i),
        "planted_within": len(within),
        "planted_beyond": len(beyond),
        "recall": len(within & got) / len(within),
        "false_pairs": len(beyond & got) + int(np.sum(exact > args.threshold)),
        "distances_exact": bool(np.array_equal(exact, d)),
        "sha1": hashlib.sha1(np.stack([i, j, d.astype(np.int64)]).tobytes()).hexdigest(),
    }


def bench_size(n: int, args: argparse.Namespace, tmp: Path) -> dict:
    print(f"n={n}: index ...", flush=True)
    index, found = run_worker("index", n, args, tmp)
    index["build_s"] = index["prepare_s"] + index["add_s"]
    index["query_plus_verify_s"] = index["query_s"] + index["verify_s"]
    index["other_s"] = index["total_s"] - index["build_s"] - index["query_plus_verify_s"]
    index["candidates_per_query"] = index.pop("candidates") / n
    out = {"n": n, "index": index, **check_pairs(n, args, found), "exhaustive": None}
    if n <= args.exhaustive_max:
        print(f"n={n}: exhaustive ...", flush=True)
        exh, base = run_worker("exhaustive", n, args, tmp)
        truth, got = _pair_set(base[0], base[1]), _pair_set(found[0], found[1])
        out["exhaustive"] = exh
        out["speedup_x"] = exh["total_s"] / index["total_s"]
        out["cpu_speedup_x"] = exh["cpu_s"] / index["cpu_s"]
        out["recall_vs_exhaustive"] = len(truth & got) / len(truth) if truth else 1.0
        out["equal_to_exhaustive"] = all(
            np.array_equal(a, b) for a, b in zip(found, base, strict=True)
        )
    return out


# ---------------------------------------------------------------- report


def table(results: list[dict], args: argparse.Namespace) -> str:
    head = (
        f"{'N':>9} {'setting':<12}{'build s':>9}{'query s':>9}{'total s':>9}{'cpu s':>9}"
        f"{'peak +MB':>10}{'recall':>8}{'false':>6}{'exh s':>9}{'x':>8}{'= exh':>7}"
    )
    lines = [
        f"threshold {args.threshold} of {BITS} bits, {args.threads} FAISS threads, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; setting = "
        "substrings x bits / flips; x = exhaustive time / index time",
        head,
        "-" * len(head),
    ]
    for r in results:
        ix, s, ex = r["index"], r["index"]["setting"], r["exhaustive"]
        tail = "        -       -      -"
        if ex:
            tail = f"{ex['total_s']:>9.2f}{r['speedup_x']:>8.1f}{str(r['equal_to_exhaustive']):>7}"
        lines.append(
            f"{r['n']:>9} {s['nhash']:>2}x{s['b']:<3}/{s['nflip']:<5}{ix['build_s']:>9.2f}"
            f"{ix['query_plus_verify_s']:>9.2f}{ix['total_s']:>9.2f}{ix['cpu_s']:>9.2f}"
            f"{ix['peak_increase_mb']:>10.0f}{r['recall']:>8.3f}{r['false_pairs']:>6d}" + tail
        )
    return "\n".join(lines)


def machine_info(load_before) -> dict:
    import faiss

    return machine(load_before, numpy=np.__version__, faiss=faiss.__version__)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_dedupe_") as tmp:
        results = [bench_size(n, args, Path(tmp)) for n in args.sizes]
    print(table(results, args))
    record = {
        "config": {
            "sizes": list(args.sizes),
            "threshold": args.threshold,
            "bits": BITS,
            "threads": args.threads,
            "exhaustive_max": args.exhaustive_max,
            "seed": args.seed,
        },
        "machine": machine_info(load_before),
        "method": method(__doc__),
        "results": results,
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
