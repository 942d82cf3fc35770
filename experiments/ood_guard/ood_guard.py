"""Benchmark out-of-distribution scores for the guard (issue 19): which score of the
penultimate features flags foreign images and adult films, yet lets the
pediatric test split through? Applies the rule written in README.md beside it.

    python experiments/ood_guard/ood_guard.py --run runs/c192_s0 --data work/ped192 \
        --adults ../shared/data/chest_xray_covid19_pneumonia_256/Data

Every candidate is fitted on the run's training images only (the guard's own seeded sample
of at most 3000, ``OodGuard.sample_rows``) and its threshold is the 99th percentile of its
validation scores, so about 1% of validation images are flagged by construction. Sets:
the official test split (n = 624, in distribution); seeded synthetic foreign images
written as PNG files (colour photo-like textures, CT-like slices, scanned documents, test
films rotated 90 degrees, test films inverted, smooth gradients); the adult COVID-19 films,
``train/COVID19`` (22, the set the rule chooses on) and ``test/COVID19`` (6, reported
apart). Files go through the path `predict` uses (``load_screened`` with the run's
preprocessing and intended-use rules), features through ``LoadedRun.logits_and_features``
(torch, float32). Candidates: (a) today's guard (``OodGuard``: Mahalanobis to the nearer
class mean, one shared Ledoit-Wolf covariance); (b) distance to the k-th nearest training
neighbour of the L2-normalised features (Sun et al., ICML 2022), k = 1, 5, 10, 50;
(c) Mahalanobis with one Ledoit-Wolf covariance per class; (d) Mahalanobis (shared
covariance) of the L2-normalised features, relative Mahalanobis (Ren et al. 2021), the norm
of the normalised feature outside the training features' top principal components (as in
ViM); and the larger of today's score and kNN k=10's, each divided by its own validation
threshold, thresholded again (a combination flags what either part flags). The rule
(README.md, "The out-of-distribution guard: the rule for a new score") is then
applied mechanically to these, the candidates listed before any was scored. The same
combination with each other candidate, (e), was added after the first table had adopted
nothing: printed, with the rule's checks, but not eligible. Last, the product's opt-in
guard (``OodGuard`` with method ``COMBINED``, `calibrate --ood-method
mahalanobis+residual`) is fitted on the same features and scored the same way, to show
that it flags what its candidate row does. ``--features`` keeps the computed features in
an .npz file so that a second run only scores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import sklearn
import torch
from sklearn.covariance import LedoitWolf

from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import open_cache
from pneumoscope.inference.intended_use import IntendedUse, load_screened
from pneumoscope.model.ood import COMBINED, OodGuard
from pneumoscope.model.run import load_run

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # experiments/record.py
from record import machine, method  # noqa: E402

QUANTILE = 0.99
KS = (1, 5, 10, 50)
FOREIGN_KINDS = ("photo", "ct", "document", "rotated", "inverted", "gradient")
TODAY = "(a) today: Mahalanobis, shared cov"
MAX_TEST_RATE, MIN_FOREIGN_RATE, ADULT_FACTOR = 0.03, 0.95, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("/work/runs18/c192_s0"))
    p.add_argument("--data", type=Path, default=Path("/work/runs18/ped192"))
    p.add_argument(
        "--adults", type=Path, default=Path("../shared/data/chest_xray_covid19_pneumonia_256/Data")
    )
    p.add_argument("--foreign", type=int, default=60, help="synthetic foreign images [60]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", type=Path, help="an .npz to keep (or reuse) the features in")
    p.add_argument("--out", type=Path, default=HERE / "results" / "ood_guard.json")
    return p.parse_args(argv)


# ---------------------------------------------------------------- foreign images


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    small = rng.random((cells, cells, channels)).astype(np.float32)
    big = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return big.reshape(size, size, channels)


def photo(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A colour photo-like image: smooth colour fields, fine texture and a few shapes."""
    img = 0.7 * _smooth_noise(rng, size, int(rng.integers(3, 9)), 3)
    img += 0.3 * rng.random((size, size, 3)).astype(np.float32)
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        ctr = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(img, ctr, int(rng.integers(10, size // 3)), c, -1)
    return img


def ct_slice(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An axial CT-like slice: a round body with a bright bony ring, dark lungs, a spine,
    in a black field."""
    img = np.zeros((size, size), np.uint8)
    c = size // 2
    ax = (int(size * rng.uniform(0.35, 0.45)), int(size * rng.uniform(0.28, 0.38)))
    cv2.ellipse(img, (c, c), ax, 0, 0, 360, int(rng.integers(90, 130)), -1)
    cv2.ellipse(img, (c, c), (ax[0] - 8, ax[1] - 8), 0, 0, 360, 235, int(rng.integers(3, 7)))
    for side in (-1, 1):
        lung = (c + side * ax[0] // 2, c - 5)
        cv2.ellipse(img, lung, (ax[0] // 3, ax[1] // 2), 0, 0, 360, int(rng.integers(5, 30)), -1)
    cv2.circle(img, (c, c + ax[1] // 2), size // 18, 250, -1)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def document(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A scanned page: lines of black text on white."""
    img = np.full((size, size), int(rng.integers(225, 256)), np.uint8)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz     "))
    y = int(rng.integers(15, 30))
    while y < size - 10:
        text = "".join(rng.choice(letters, int(rng.integers(20, 40))))
        cv2.putText(img, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 1, cv2.LINE_AA)
        y += int(rng.integers(11, 18))
    return img


def gradient(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A smooth linear or radial gradient."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * np.pi)
        g = np.cos(a) * xx + np.sin(a) * yy
    else:
        cx, cy = rng.uniform(0, 1, 2)
        g = np.hypot(xx - cx, yy - cy)
    g = (g - g.min()) / (g.max() - g.min() + 1e-9)
    return (g * 255).astype(np.uint8)


def write_foreign(films: np.ndarray, n: int, seed: int, folder: Path) -> list[tuple[str, str]]:
    """n seeded foreign images as PNG files in ``folder``: (path, kind), kinds in turn;
    ``films`` are the test films the rotated and inverted ones are made from."""
    rng = np.random.default_rng(seed)
    makers = {"photo": photo, "ct": ct_slice, "document": document, "gradient": gradient}
    out = []
    for i in range(n):
        kind = FOREIGN_KINDS[i % len(FOREIGN_KINDS)]
        if kind in makers:
            img = makers[kind](rng)
        else:
            film = np.asarray(films[int(rng.integers(len(films)))])
            img = np.rot90(film).copy() if kind == "rotated" else 255 - film
        path = folder / f"{i:03d}_{kind}.png"
        cv2.imwrite(str(path), img)
        out.append((str(path), kind))
    return out


# ---------------------------------------------------------------- features


def file_features(loaded, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of files read as `predict` reads them."""
    scope = IntendedUse.from_card(loaded.card)
    imgs = []
    for p in paths:
        img, status, why = load_screened(p, loaded.preprocess, scope)
        if img is None:
            raise SystemExit(f"{p}: {status}: {why}")
        imgs.append(img)
    return loaded.logits_and_features(np.stack(imgs))


def compute_features(args: argparse.Namespace, loaded) -> dict[str, np.ndarray]:
    """Logits, features and labels of every set: train (the guard's sample), val, test,
    foreign, adults (choosing, then held-out)."""
    cache = open_cache(args.data)
    labels = cache.manifest["label"].to_numpy()
    out: dict[str, np.ndarray] = {}
    rows = {
        "train": OodGuard(seed=args.seed).sample_rows(cache.split("train")["index"].to_numpy()),
        "val": cache.split("val")["index"].to_numpy(),
        "test": cache.split("test")["index"].to_numpy(),
    }
    for name, r in rows.items():
        out[f"{name}_logit"], out[f"{name}_feat"] = loaded.logits_and_features(cache.images, rows=r)
        out[f"{name}_label"] = labels[r]
    with tempfile.TemporaryDirectory() as tmp:
        films = cache.images[np.sort(rows["test"])]
        foreign = write_foreign(films, args.foreign, args.seed, Path(tmp))
        out["foreign_logit"], out["foreign_feat"] = file_features(loaded, [p for p, _ in foreign])
    out["foreign_kind"] = np.array([k for _, k in foreign])
    for name, sub in (("choose", "train"), ("held", "test")):
        paths = sorted(str(p) for p in (args.adults / sub / "COVID19").glob("*.jpg"))
        out[f"{name}_logit"], out[f"{name}_feat"] = file_features(loaded, paths)
    return out


# ---------------------------------------------------------------- candidates


def l2n(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn(train: np.ndarray, k: int):
    bank = l2n(train)

    def score(f: np.ndarray, _z: np.ndarray) -> np.ndarray:
        sims = l2n(f) @ bank.T
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        return np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))

    return score


def _maha_min(f: np.ndarray, means, precisions) -> np.ndarray:
    d2 = [np.einsum("nd,de,ne->n", f - m, p, f - m) for m, p in zip(means, precisions, strict=True)]
    return np.sqrt(np.maximum(np.min(np.stack(d2), axis=0), 0.0))


def maha_per_class(train: np.ndarray, y: np.ndarray):
    means = [train[y == c].mean(axis=0) for c in (0, 1)]
    precs = [LedoitWolf().fit(train[y == c]).precision_ for c in (0, 1)]
    return lambda f, _z: _maha_min(np.asarray(f, np.float64), means, precs)


def maha_l2(train: np.ndarray, y: np.ndarray):
    t = l2n(train)
    means = [t[y == c].mean(axis=0) for c in (0, 1)]
    prec = LedoitWolf(assume_centered=True).fit(t - np.stack(means)[y]).precision_
    return lambda f, _z: _maha_min(l2n(f), means, [prec, prec])


def relative_maha(train: np.ndarray, y: np.ndarray):
    means = [train[y == c].mean(axis=0) for c in (0, 1)]
    prec = LedoitWolf(assume_centered=True).fit(train - np.stack(means)[y]).precision_
    mu0 = train.mean(axis=0)
    prec0 = LedoitWolf().fit(train).precision_

    def score(f: np.ndarray, _z: np.ndarray) -> np.ndarray:
        f = np.asarray(f, np.float64)
        return _maha_min(f, means, [prec, prec]) ** 2 - _maha_min(f, [mu0], [prec0]) ** 2

    return score


def pca_residual(train: np.ndarray, dims: int):
    t = l2n(train)
    mu = t.mean(axis=0)
    _, _, vt = np.linalg.svd(t - mu, full_matrices=False)
    basis = vt[:dims]

    def score(f: np.ndarray, _z: np.ndarray) -> np.ndarray:
        x = l2n(f) - mu
        return np.linalg.norm(x - (x @ basis.T) @ basis, axis=1)

    return score


KNN_COMBINED = "(b) kNN k=10, L2-normalised"  # the one combination listed before any scoring
AFTER = "(e)"  # combinations added after the first table: reported, not eligible by the rule


def candidates(d: dict[str, np.ndarray], seed: int) -> dict[str, object]:
    """name -> score(features, logits), higher = farther from the training images."""
    tf, ty = np.asarray(d["train_feat"], np.float64), d["train_label"]
    today = OodGuard(seed=seed).fit(d["train_feat"], ty, d["val_feat"])
    out = {TODAY: lambda f, _z: today.distance(f)}
    for k in KS:
        out[f"(b) kNN k={k}, L2-normalised"] = knn(tf, k)
    out["(c) Mahalanobis, cov per class"] = maha_per_class(tf, ty)
    out["(d) Mahalanobis, L2-normalised"] = maha_l2(tf, ty)
    out["(d) relative Mahalanobis"] = relative_maha(tf, ty)
    for dims in (16, 64):
        out[f"(d) PCA residual, {dims} dims"] = pca_residual(tf, dims)
    singles = [n for n in out if n != TODAY]
    out[f"(d) max(today, {KNN_COMBINED[4:]})"] = combined(out, d, KNN_COMBINED)
    for name in [n for n in singles if n != KNN_COMBINED]:  # scored after the first table
        out[f"{AFTER} max(today, {name[4:]})"] = combined(out, d, name)
    return out


def combined(out: dict, d: dict[str, np.ndarray], other: str):
    """The larger of today's score and ``other``, each divided by its validation threshold."""
    parts = [out[TODAY], out[other]]
    thr = [np.quantile(s(d["val_feat"], d["val_logit"]), QUANTILE) for s in parts]
    return lambda f, z: np.maximum(*(s(f, z) / t for s, t in zip(parts, thr, strict=True)))


# ---------------------------------------------------------------- evaluation

SETS = ("val", "test", "foreign", "choose", "held")


def evaluate(score, d: dict[str, np.ndarray]) -> dict:
    """Flags of every set at the 99th percentile of the validation scores."""
    s = {name: score(d[f"{name}_feat"], d[f"{name}_logit"]) for name in SETS}
    thr = float(np.quantile(s["val"], QUANTILE))
    flags = {name: s[name] >= thr for name in SETS}
    res = {"threshold": thr}
    for name in SETS:
        res[name] = {"flagged": int(flags[name].sum()), "n": int(len(flags[name]))}
    adults = np.concatenate([flags["choose"], flags["held"]])
    res["adults_all"] = {"flagged": int(adults.sum()), "n": int(len(adults))}
    kinds = d["foreign_kind"]
    res["foreign_by_kind"] = {
        k: {"flagged": int(flags["foreign"][kinds == k].sum()), "n": int((kinds == k).sum())}
        for k in FOREIGN_KINDS
    }
    return res


def decide(results: dict[str, dict]) -> dict:
    """The rule of README.md beside this script, applied mechanically."""
    base_name = next(iter(results))
    base = results[base_name]["choose"]["flagged"]
    met = {}
    for name, r in list(results.items())[1:]:
        eligible = not name.startswith(AFTER)
        checks = {
            "test_rate_le_3pct": r["test"]["flagged"] / r["test"]["n"] <= MAX_TEST_RATE,
            "foreign_rate_ge_95pct": r["foreign"]["flagged"] / r["foreign"]["n"]
            >= MIN_FOREIGN_RATE,
            "adults22_ge_2x_today": r["choose"]["flagged"] >= ADULT_FACTOR * base,
        }
        r["rule"] = {**checks, "listed_before_scoring": eligible}
        if eligible and all(checks.values()):
            met[name] = r
    if not met:
        return {"adopted": None, "today_adults22": base, "meeting_all": []}
    best = max(met, key=lambda n: (met[n]["choose"]["flagged"], -met[n]["test"]["flagged"]))
    return {"adopted": best, "today_adults22": base, "meeting_all": list(met)}


def cell(r: dict) -> str:
    return f"{r['flagged']}/{r['n']} ({100 * r['flagged'] / r['n']:.1f}%)"


def print_table(results: dict[str, dict], kinds: bool = True) -> None:
    cols = ("val", "test", "foreign", "choose", "held", "adults_all")
    heads = ("validation", "test split", "foreign", "adults 22", "adults 6", "adults 28")
    print(f"{'candidate':<46}" + "".join(f"{h:>17}" for h in heads))
    for name, r in results.items():
        print(f"{name:<46}" + "".join(f"{cell(r[c]):>17}" for c in cols))
    if not kinds:
        return
    print("\nforeign flags by kind")
    print(f"{'candidate':<46}" + "".join(f"{k:>10}" for k in FOREIGN_KINDS))
    for name, r in results.items():
        fk = r["foreign_by_kind"]
        print(f"{name:<46}" + "".join(f"{fk[k]['flagged']:>6}/{fk[k]['n']:<3}" for k in fk))


def load_or_compute(args: argparse.Namespace, loaded) -> dict[str, np.ndarray]:
    if args.features and args.features.is_file():
        with np.load(args.features) as z:
            return {k: z[k] for k in z.files}
    d = compute_features(args, loaded)
    if args.features:
        np.savez(args.features, **d)
    return d


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    loaded = load_run(args.run, use_calibration=False)
    d = load_or_compute(args, loaded)
    t_feat = time.perf_counter() - t0
    results = {name: evaluate(s, d) for name, s in candidates(d, args.seed).items()}
    decision = decide(results)
    product = OodGuard(seed=args.seed, method=COMBINED)
    product.fit(d["train_feat"], d["train_label"], d["val_feat"])
    check = evaluate(lambda f, _z: product.distance(f), d)
    t_all = time.perf_counter() - t0
    print_table(results)
    saved = OodGuard.load(loaded.files)
    print(
        f"\nsaved guard threshold {saved.threshold_:.4f}, refit here "
        f"{next(iter(results.values()))['threshold']:.4f}"
    )
    print(
        f"rule: today's guard flags {decision['today_adults22']}/22 choosing adult films; "
        f"candidates meeting all three parts: {decision['meeting_all'] or 'none'}"
    )
    print(f"decision: {decision['adopted'] or 'none adopted, today guard stays'}")
    print(f"\nthe product's opt-in guard, OodGuard(method={COMBINED!r}), same features:")
    print_table({f"OodGuard {COMBINED}": check}, kinds=False)
    print(f"features {t_feat:.0f} s, total {t_all:.0f} s")
    record = {
        "machine": machine(load_before, torch=torch.__version__, sklearn=sklearn.__version__),
        "method": method(__doc__),
        "run": str(args.run),
        "data": str(args.data),
        "adults": str(args.adults),
        "seed": args.seed,
        "n_train_fit": int(len(d["train_feat"])),
        "results": results,
        "decision": decision,
        "product_opt_in": {"method": COMBINED, **check},
        "seconds": {"features": t_feat, "total": t_all},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, record)


if __name__ == "__main__":
    main()
