"""Score a run at another image size than it was trained at ("train low, test high").

A network that ends in global pooling takes any size; films prepared larger show the
anatomy larger, as the training crops did, but the batch-norm running statistics were
measured at the training size and shift with the size. ``refit_size`` recomputes them on
training films prepared at the new size (a seeded sample, plain films, cumulative
average, no gradient: the weights are untouched), saves the network and a card whose
input is the new size, and keeps the trained weights beside them. From then on every
command prepares films at that size, because they all read the size from the card.
The calibration and the guard fitted at the old size no longer hold: ``pneumoscope
calibrate --refit-size`` refits both straight after (docs/results.md has the rule and the
measurements that adopted 192 px for runs trained at 160 px).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import Cache, counts_table, open_cache
from pneumoscope.model.architectures import build_model
from pneumoscope.model.contract import RunFiles, file_sha256
from pneumoscope.model.run import LoadedRun, load_run, row_batches, save_weights

REFIT_FILMS = 1024


def batch_norms(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def refit_norms(loaded: LoadedRun, net: torch.nn.Module, images, rows, batch_size=64) -> int:
    """Recompute ``net``'s batch-norm running statistics on ``images[rows]`` (uint8, as
    the cache holds them, through the run's own input path); returns how many there are."""
    norms = batch_norms(net)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    for _, chunk in row_batches(images, rows, batch_size):
        net(loaded.model_input(torch.from_numpy(chunk).unsqueeze(1)))
    net.eval()
    return len(norms)


def check_cache(loaded: LoadedRun, cache: Cache, data: str | Path) -> int:
    """The new size, when ``cache`` differs from the run's preprocessing by its size only."""
    have, want = cache.preprocess, loaded.preprocess
    if dataclasses.replace(have, img_size=want.img_size) != want:
        raise UserError(
            f"{data} was prepared with {have.to_dict()}; --refit-size needs the run's "
            f"preprocessing {want.to_dict()} at another --img-size"
        )
    if have.img_size == want.img_size:
        raise UserError(
            f"{data} is at the run's own size ({want.img_size} px): nothing to refit; "
            "prepare the data at the size to score at"
        )
    return have.img_size


def check_same_films(loaded: LoadedRun, cache: Cache, data: str | Path) -> None:
    """DATA must hold the run's films in the same splits (compared by the hash of each
    film's decoded pixels, which does not depend on the size): a film the run trained on
    must never calibrate or test it. Where the training cache is gone, its counts."""
    trained = Path(loaded.card.training_data.cache or "")
    if (trained / "cache.json").is_file():
        same = _film_splits(open_cache(trained)) == _film_splits(cache)
    else:
        same = counts_table(cache.manifest) == loaded.card.training_data.counts
    if not same:
        raise UserError(
            f"{data} does not hold the run's films in the same train/val/test splits as "
            f"{trained} did; prepare it from the same source with the same split settings"
        )


def _film_splits(cache: Cache) -> list[tuple[str, str]]:
    m = cache.manifest
    return sorted(zip(m["sha1"].astype(str), m["split"].astype(str), strict=True))


def network_at(loaded: LoadedRun, size: int) -> torch.nn.Module:
    """The run's network built for ``size`` px with its weights, or one line saying why
    this architecture cannot take another size (its layers depend on it)."""
    card = loaded.card
    net = build_model(card.architecture, card.input.in_chans, size, pretrained=False)
    try:
        net.load_state_dict(loaded.model.state_dict())
        probe = torch.zeros(1, 1, size, size, dtype=torch.uint8)
        net.eval()(loaded.model_input(probe))
    except RuntimeError:
        raise UserError(
            f"{card.architecture} cannot score at {size} px: its layers depend on the "
            f"image size it was trained at ({card.input.img_size} px)"
        ) from None
    return net


def refit_sample(cache: Cache, films: int, seed: int) -> np.ndarray:
    rows = cache.split("train")["index"].to_numpy()
    pick = np.random.default_rng(seed).permutation(len(rows))[:films]
    return np.sort(rows[pick])


def refit_size(run: str | Path, data: str | Path, films: int = REFIT_FILMS, seed: int = 0) -> dict:
    """Make RUN score films at DATA's size: batch norms refitted on ``films`` training
    films of DATA, weights and card rewritten (the trained weights kept as
    model.trained.safetensors). The calibration, the guard and any export were fitted on
    the old weights at the old size: they are removed, and ``calibrate`` refits the first
    two (the CLI's --refit-size does so at once). Returns the card's ``size_refit``
    record."""
    if films < 1:
        raise UserError(f"the refit needs at least one training film, got {films}")
    loaded = load_run(run, use_calibration=False)
    cache = open_cache(data)
    size = check_cache(loaded, cache, data)
    check_same_films(loaded, cache, data)
    net = network_at(loaded, size)
    rows = refit_sample(cache, films, seed)
    n_norms = refit_norms(loaded, net, cache.images, rows)
    files = loaded.files
    previous = loaded.card.size_refit or {}
    record = {
        "trained_img_size": previous.get("trained_img_size", loaded.preprocess.img_size),
        "img_size": size,
        "batch_norms": n_norms,
        "films": int(len(rows)),
        "seed": seed,
        "cache": str(Path(data).expanduser().resolve()),
        "trained_weights": RunFiles.TRAINED_WEIGHTS,
        "trained_weights_sha256": keep_trained_weights(files),
    }
    for stale in files.fitted_files():  # calibration, guard, exports: of the old weights
        if stale != files.weights:
            stale.unlink(missing_ok=True)
    save_weights(net, files.weights)
    card = loaded.card
    card.input = dataclasses.replace(
        card.input, preprocess=dataclasses.replace(card.input.preprocess, img_size=size)
    )
    card.size_refit = record
    card.save(files)
    return record


def keep_trained_weights(files: RunFiles) -> str:
    """Copy the weights training wrote beside the run (once: a second refit starts from
    the same weights, since only the statistics change); their SHA-256."""
    if not files.trained_weights.exists():
        shutil.copy2(files.weights, files.trained_weights)
    return file_sha256(files.trained_weights)
