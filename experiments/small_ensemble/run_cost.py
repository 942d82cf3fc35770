"""What a run costs to score films as the product scores them, against a baseline run.

    python experiments/small_ensemble/run_cost.py --base runs/fc_s0 --base-data work/pediatric160 \\
        --run runs/ens --data work/pediatric128 --n 256

Each run scores the same N validation films (by manifest path, from its own cache, so
each at its own size) with its calibration's scorer: the film and its test-time views, an
ensemble's members all. The films are loaded into memory first (no disk in the timing);
the two runs alternate, --repeats passes each after a warm-up pass, and the median pass
gives films per second. The figure that matters is the ratio of the run's time to the
baseline's, measured in this one process with the same threads; absolute figures depend
on the machine and its load (recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pneumoscope.data.cache import open_cache
from pneumoscope.model.run import load_run

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # experiments/record.py
from record import machine, method  # noqa: E402


def films(data: Path, paths: list[str]) -> np.ndarray:
    cache = open_cache(data)
    index = dict(zip(cache.manifest["path"], cache.manifest["index"], strict=True))
    return np.ascontiguousarray(cache.images[[index[p] for p in paths]])


def timed_pass(scorer, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    scorer.predict_logits(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--base-data", required=True, type=Path)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "run_cost.json")
    a = ap.parse_args()
    load = os.getloadavg()
    torch.set_num_threads(a.threads)
    paths = list(open_cache(a.base_data).split("val")["path"][: a.n])
    runs = {"base": (a.base, a.base_data), "run": (a.run, a.data)}
    scorers, inputs, times = {}, {}, {k: [] for k in runs}
    for key, (run, data) in runs.items():
        loaded = load_run(run)
        scorers[key], inputs[key] = loaded.scorer(), films(data, paths)
        timed_pass(scorers[key], inputs[key])  # warm-up
    for _ in range(a.repeats):
        for key in runs:
            times[key].append(timed_pass(scorers[key], inputs[key]))
    med = {k: float(np.median(v)) for k, v in times.items()}
    report = {
        "machine": machine(load, torch=torch.__version__),
        "method": method(__doc__),
        "films": len(paths),
        "base": {
            "run": str(a.base),
            "seconds": med["base"],
            "films_per_s": len(paths) / med["base"],
        },
        "run": {"run": str(a.run), "seconds": med["run"], "films_per_s": len(paths) / med["run"]},
        "ratio": med["run"] / med["base"],
    }
    print(f"{'run':<40} {'s per pass':>10} {'films/s':>8} {'x base':>7}")
    for key in runs:
        r = report[key]
        print(f"{r['run']:<40} {r['seconds']:>10.2f} {r['films_per_s']:>8.1f} "
              f"{med[key] / med['base']:>7.2f}")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
