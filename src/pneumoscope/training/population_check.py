"""`pneumoscope population retrain`: the population check trained again on a prepared dataset.

The check (is this frontal film a young child's or an adult's?) is the small network of
:mod:`pneumoscope.training.popnet`, trained by outlier exposure as in
experiments/population_check/README.md, from a folder made by ``pneumoscope data prepare``:

* its rows of age group ``child`` and ``adult``, with the cache's splits (patients and
  copies already grouped by prepare, so no group straddles train / val / test);
* the ORIGINAL files of those rows (the manifest's paths), decoded and shrunk to a long
  side of at most 320 px, so that the source-mark augmentations
  (:mod:`pneumoscope.data.marks`) are drawn on the film before the check's own
  preprocessing (``preprocess_gray`` at 128 px, CLAHE); validation and test films go
  through that preprocessing alone, as the product does;
* every batch half children, half adults (drawn with replacement), plain BCE, AdamW with
  warm-up and cosine, the last step's weights (no selection);
* the threshold by the rule written before the experiment: ``t`` is the
  ``(floor(0.005 n) + 1)``-th highest p(adult) of the ``n`` validation children (flagged
  means strictly above ``t``), adults play no part in it;
* ONNX (input ``x``, output ``logit``, any batch size), checked against torch on the
  validation films (refused beyond ``ONNX_TOLERANCE``), and its card
  ``population_check.json`` in the format that
  :class:`~pneumoscope.model.population_check.PopulationCheck` reads: validation and test
  figures per age group with Wilson 95% intervals, sources and counts, the command that
  made it.

``run=RUN`` also installs the check as ``RUN/population_check/``, which the run then uses
instead of the shipped one.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core import __version__
from pneumoscope.core.errors import ImageReadError, UserError
from pneumoscope.core.io import atomic_write, write_json_atomic
from pneumoscope.data.cache import Cache, open_cache, with_progress
from pneumoscope.data.marks import RAW_LONG, augment, shrink
from pneumoscope.data.preprocess import PreprocessConfig, decode_gray, preprocess_gray
from pneumoscope.evaluation.metrics import wilson_interval
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.population_check import CARD_NAME, GROUPS, ONNX_NAME, RUN_FOLDER

CHILD, ADULT = GROUPS
IMG_SIZE = 128
FLAG_RATE = 0.005  # at most this share of the validation children above the threshold
ONNX_TOLERANCE = 1e-4  # max |p_onnx - p_torch| on the validation films
LR, WEIGHT_DECAY, WARMUP_SHARE = 2e-3, 1e-4, 0.125  # 250 warm-up steps of 2,000
SPLITS = {"val": "validation", "test": "test"}


def rule_threshold(child_val_scores: np.ndarray, rate: float = FLAG_RATE) -> float:
    """The (floor(rate * n) + 1)-th highest validation child score; flagged means strictly
    greater, so at most floor(rate * n) validation children are flagged."""
    s = np.sort(np.asarray(child_val_scores, dtype=np.float64))[::-1]
    return float(s[int(math.floor(rate * len(s)))])


def lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@dataclass
class _Films:
    """The rows the check uses and their pixels: shrunk originals for training, the check's
    preprocessed squares for validation and test."""

    rows: pd.DataFrame  # manifest rows of child and adult films, index 0..n-1
    raw: dict[int, np.ndarray]  # train rows: the decoded film, long side <= RAW_LONG
    squares: dict[int, np.ndarray]  # val and test rows: IMG_SIZE x IMG_SIZE uint8

    def where(self, split: str, group: str) -> np.ndarray:
        r = self.rows
        return np.flatnonzero(
            (r["split"] == split).to_numpy() & (r["age_group"] == group).to_numpy()
        )


def retrain(
    data_folder: str | Path,
    out_folder: str | Path,
    steps: int = 2000,
    seed: int = 0,
    batch: int = 64,
    max_minutes: float = 60.0,
    run: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train the population check on ``data_folder`` (made by ``data prepare``) and write it
    to ``out_folder`` (population_check.onnx + population_check.json); with ``run`` also
    install it as ``run/population_check/``. Returns ``out_folder``."""
    say = log or (lambda _msg: None)
    if steps < 1 or batch < 2 or max_minutes <= 0:
        raise UserError("--steps must be >= 1, --batch >= 2 and --max-minutes > 0")
    data_folder, out = Path(data_folder).expanduser(), Path(out_folder).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    run_dir = _check_run(run)
    cache = open_cache(data_folder)
    rows = _population_rows(cache)
    films = _decode(rows, data_folder, progress)
    child_train, adult_train = films.where("train", CHILD), films.where("train", ADULT)
    say(
        f"training on {len(child_train)} child and {len(adult_train)} adult films "
        f"({steps} steps of {batch}, seed {seed})"
    )
    model, done = _train(films, child_train, adult_train, steps, seed, batch, max_minutes, say)
    command = _command(data_folder, out, steps, seed, batch, max_minutes, run_dir)
    _export_and_write(model, films, cache, out, done, command, say)
    if run_dir is not None:
        install(out, run_dir)
        say(f"installed in {run_dir / RUN_FOLDER}")
    return out


def _check_run(run: str | Path | None) -> Path | None:
    if run is None:
        return None
    run_dir = Path(run).expanduser()
    if not (run_dir / RunFiles.CARD).is_file():
        raise UserError(
            f"--run {run_dir} is not a run folder (no {RunFiles.CARD}): give a folder made "
            "by 'pneumoscope train'"
        )
    return run_dir


def _population_rows(cache: Cache) -> pd.DataFrame:
    """The cache's child and adult rows of train / val / test, after the checks that a
    user can fix."""
    m = cache.manifest
    groups = m["age_group"].astype(str).str.strip()
    for group in (CHILD, ADULT):
        if not (groups == group).any():
            raise UserError(
                f"{cache.root} has no {group} films (manifest.csv, column age_group): "
                f"prepare them with their ages or with --age-group NAME={group}"
            )
    rows = m[groups.isin([CHILD, ADULT]) & m["split"].isin(["train", *SPLITS])].copy()
    rows["age_group"] = groups[rows.index]
    rows = rows.reset_index(drop=True)
    for split, group, why in (
        ("train", CHILD, "the check learns from them"),
        ("train", ADULT, "the check learns from them"),
        ("val", CHILD, "the threshold is set on them"),
    ):
        if not ((rows["split"] == split) & (rows["age_group"] == group)).any():
            raise UserError(
                f"{cache.root} has no {group} films in its {split} split ({why}): prepare "
                "it again so that the split holds some (e.g. --val-fraction 0.15)"
            )
    missing = [p for p in rows["path"].astype(str) if not Path(p).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of the {len(rows)} films listed in {cache.root / 'manifest.csv'} "
            f"are missing (first: {missing[0]}); the check decodes the original files: "
            "prepare the dataset again where they are"
        )
    return rows


def _decode(rows: pd.DataFrame, root: Path, progress: bool) -> _Films:
    """Each film decoded once: train films shrunk, the others as the check's squares."""
    cfg = PreprocessConfig(img_size=IMG_SIZE)
    raw: dict[int, np.ndarray] = {}
    squares: dict[int, np.ndarray] = {}
    items = list(zip(rows.index, rows["path"].astype(str), rows["split"], strict=True))
    for i, path, split in with_progress(items, len(items), progress, "decoding"):
        try:
            gray = decode_gray(path)
        except ImageReadError as exc:
            raise UserError(
                f"{path} (listed in {root / 'manifest.csv'}) can no longer be decoded: {exc}; "
                "prepare the dataset again"
            ) from None
        if split == "train":
            raw[i] = shrink(gray, RAW_LONG)
        else:
            squares[i] = preprocess_gray(gray, cfg)
    return _Films(rows, raw, squares)


@dataclass
class _Done:
    steps: int
    minutes: float
    cut: bool
    params: int


def _train(films, child, adult, steps, seed, batch, max_minutes, say):
    import torch

    from pneumoscope.training.popnet import PopNet, n_params, to_input

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PopNet()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    half = batch // 2
    y = torch.cat([torch.zeros(half), torch.ones(batch - half)])
    warmup = max(1, round(steps * WARMUP_SHARE))
    log_every = max(1, steps // 8)
    t0, losses, cut = time.perf_counter(), [], False
    for step in range(steps):
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup, LR)
        idx = np.concatenate([rng.choice(child, half), rng.choice(adult, batch - half)])
        x = np.stack([augment(films.raw[int(i)], rng, IMG_SIZE) for i in idx])
        loss = loss_fn(model(to_input(torch.from_numpy(x))), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        minutes = (time.perf_counter() - t0) / 60
        if (step + 1) % log_every == 0 or step == steps - 1:
            loss_now = np.mean(losses[-log_every:])
            say(f"step {step + 1}/{steps}: loss {loss_now:.4f}, {minutes:.1f} min")
        if minutes > max_minutes and step < steps - 1:
            cut = True
            say(f"cut by --max-minutes {max_minutes:g} at step {step + 1} of {steps}")
            break
    model.eval()
    done = _Done(len(losses), (time.perf_counter() - t0) / 60, cut, n_params(model))
    return model, done


def _probabilities(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64).reshape(-1)))


def _inputs(squares: np.ndarray) -> np.ndarray:
    """The check's input transform in NumPy, as the product applies it before ONNX Runtime."""
    from pneumoscope.training.popnet import MEAN, STD

    return (squares.astype(np.float32)[:, None] / 255.0 - MEAN) / STD


def _export_and_write(model, films: _Films, cache: Cache, out: Path, done, command, say) -> None:
    """ONNX exported in memory, checked against torch and scored; then the ONNX file and its
    card written (nothing is written when the check fails)."""
    import onnxruntime as ort

    scored = np.array(sorted(films.squares), dtype=np.int64)
    squares = np.stack([films.squares[int(i)] for i in scored])
    blob = _onnx_bytes(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    scores = np.concatenate(
        [
            _probabilities(session.run(None, {"x": _inputs(squares[s : s + 256])})[0])
            for s in range(0, len(squares), 256)
        ]
    )
    val = np.flatnonzero(films.rows.loc[scored, "split"].to_numpy() == "val")
    diff = float(np.abs(scores[val] - _torch_probabilities(model, squares[val])).max())
    if not diff <= ONNX_TOLERANCE:
        raise UserError(
            f"the ONNX export gives probabilities up to {diff:.2e} away from torch's on the "
            f"{len(val)} validation films (tolerance {ONNX_TOLERANCE:g}); nothing written to {out}"
        )
    score_of = dict(zip(scored.tolist(), scores.tolist(), strict=True))
    card = _card(films, cache, score_of, blob, done, command, diff, len(val))
    atomic_write(out / ONNX_NAME, lambda tmp: Path(tmp).write_bytes(blob))
    write_json_atomic(out / CARD_NAME, card)
    say(f"threshold {card['threshold']:.4f}; ONNX matches torch within {diff:.1e}; wrote {out}")


def _onnx_bytes(model) -> bytes:
    """The network as ONNX (TorchScript exporter, as the shipped check): input ``x``, output
    ``logit``, any batch size."""
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            torch.zeros(1, 1, IMG_SIZE, IMG_SIZE),
            buf,
            input_names=["x"],
            output_names=["logit"],
            dynamic_axes={"x": {0: "n"}, "logit": {0: "n"}},
            dynamo=False,
        )
    return buf.getvalue()


def _torch_probabilities(model, squares: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return _probabilities(model(torch.from_numpy(_inputs(squares))).numpy())


def _card(films, cache, score_of, blob, done, command, diff, n_checked) -> dict:
    from pneumoscope.training.popnet import ARCHITECTURE, MEAN, STD

    child_val = films.where("val", CHILD)
    scores_child_val = np.array([score_of[int(i)] for i in child_val])
    t = rule_threshold(scores_child_val)
    n_val = len(child_val)
    validation = {}
    for split, split_name in SPLITS.items():
        for group in (CHILD, ADULT):
            idx = films.where(split, group)
            if not len(idx):
                continue
            flagged = int(sum(score_of[int(i)] > t for i in idx))
            lo, hi = wilson_interval(flagged, len(idx)) or (0.0, 1.0)
            name = f"{group} {split_name}"
            if (split, group) == ("val", CHILD):
                name += " (threshold set here)"
            validation[name] = {
                "n": int(len(idx)),
                "flagged": flagged,
                "rate": round(flagged / len(idx), 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }
    counts = _counts(films.rows)
    train = counts["train"]
    recipe = (
        f"{done.steps} steps of batch {command['batch']} (half children, half adults, drawn "
        f"with replacement), AdamW lr {LR:g} (weight decay {WEIGHT_DECAY:g}), linear warm-up "
        f"then cosine, the last step's weights; source-mark augmentations "
        f"(pneumoscope.data.marks) applied to both groups alike; seed {command['seed']}"
    )
    limits = (
        f"Measured on {cache.root}'s own validation and test splits only: the check says "
        "'like these children or not', for these sources. "
        + (
            f"The threshold rests on {n_val} validation children: with fewer than 200 no "
            "validation child may score above it, and its 0.5% margin is mostly chance. "
            if n_val < 200
            else f"The threshold rests on {n_val} validation children. "
        )
        + (
            f"Training was cut by --max-minutes at step {done.steps} of {command['steps']}. "
            if done.cut
            else ""
        )
        + "Older children are expected to be flagged."
    )
    return {
        "format": 1,
        "name": f"popnet-{cache.root.resolve().name}-seed{command['seed']}",
        "task": (
            "Whose frontal chest film is this: a young child's like the training children, "
            "or an adult's (or an older child's)? One logit; sigmoid = p(adult)."
        ),
        "output": "adult_probability",
        "groups": {"at_or_below_threshold": CHILD, "above_threshold": ADULT},
        "threshold": t,
        "threshold_rule": (
            "Chosen on validation only, rule written before the runs "
            "(experiments/population_check/README.md): t is the (floor(0.005 n)+1)-th highest "
            f"p(adult) of the n = {n_val} child validation films, so that at most "
            f"floor(0.005 n) = {math.floor(FLAG_RATE * n_val)} of them are flagged."
        ),
        "architecture": (
            f"{ARCHITECTURE}; {done.params:,} parameters, 30 M multiply-accumulates at "
            f"{IMG_SIZE} px"
        ),
        "input": {
            **PreprocessConfig(img_size=IMG_SIZE).to_dict(),
            "mean": MEAN,
            "std": STD,
            "onnx_input": (
                f"x: N x 1 x {IMG_SIZE} x {IMG_SIZE} float32, (pixels / 255 - mean) / std"
            ),
            "onnx_output": "logit: N",
        },
        "training": {
            "data": str(cache.root.resolve()),
            "children": _describe(films.rows, CHILD, train[CHILD]),
            "adults": _describe(films.rows, ADULT, train[ADULT]),
            "counts": counts,
            "sources": _sources(cache, films.rows),
            "recipe": recipe,
            "steps": command["steps"],
            "steps_done": done.steps,
            "batch": command["batch"],
            "seed": command["seed"],
            "minutes": round(done.minutes, 2),
            "max_minutes": command["max_minutes"],
            "cut_by_max_minutes": done.cut,
            "onnx_check": {
                "films": n_checked,
                "max_abs_probability_difference": diff,
                "tolerance": ONNX_TOLERANCE,
            },
            "pneumoscope_version": __version__,
            "experiment": "experiments/population_check/README.md",
        },
        "validation": validation,
        "limits": limits,
        "retrain": command["line"],
        "files": {ONNX_NAME: hashlib.sha256(blob).hexdigest()},
    }


def _counts(rows: pd.DataFrame) -> dict:
    """{split: {child: n, adult: n}} for train, val and test."""
    return {
        split: {g: int(((rows["split"] == split) & (rows["age_group"] == g)).sum()) for g in GROUPS}
        for split in ("train", *SPLITS)
    }


def _describe(rows: pd.DataFrame, group: str, n_train: int) -> str:
    sub = rows[(rows["age_group"] == group) & (rows["split"] == "train")]
    per_source = ", ".join(f"{s} {n}" for s, n in sub["source"].value_counts().sort_index().items())
    return (
        f"{n_train} films of {sub['group'].nunique()} patient-or-copy groups trained on "
        f"({per_source})"
    )


def _sources(cache: Cache, rows: pd.DataFrame) -> list[dict]:
    """Each source the cache was prepared from (name, path, layout) with its films used
    here, per age group and split."""
    given = {s.get("name"): s for s in cache.info.data.get("sources", []) if isinstance(s, dict)}
    out = []
    for name, sub in rows.groupby("source", sort=True):
        info = given.get(name, {})
        out.append(
            {
                "name": str(name),
                "path": str(info.get("path", "")),
                "layout": str(info.get("layout", "")),
                "films": _counts(sub),
            }
        )
    return out


def _command(data, out, steps, seed, batch, max_minutes, run) -> dict:
    words = ["pneumoscope", "population", "retrain", "--data", str(data.resolve()),
             "--out", str(out.resolve()), "--steps", str(steps), "--seed", str(seed),
             "--batch", str(batch), "--max-minutes", f"{max_minutes:g}"]  # fmt: skip
    if run is not None:
        words += ["--run", str(run.resolve())]
    return {
        "line": shlex.join(words),
        "steps": steps,
        "seed": seed,
        "batch": batch,
        "max_minutes": max_minutes,
    }


def install(check: str | Path, run: str | Path) -> Path:
    """Copy a check folder's ONNX file and card to ``run/population_check/`` (the card
    last, so a run never sees a card without its weights). Returns that folder."""
    src, dst = Path(check), Path(run) / RUN_FOLDER
    if dst.exists() and dst.resolve() == src.resolve():
        return dst
    (dst / CARD_NAME).unlink(missing_ok=True)
    for name in (ONNX_NAME, CARD_NAME):
        atomic_write(dst / name, lambda tmp, name=name: shutil.copyfile(src / name, tmp))
    return dst
