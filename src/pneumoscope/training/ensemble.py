"""Merge trained runs into one ensemble run (``pneumoscope ensemble``).

The members must take the same input (size, preprocessing, channels, kind of
normalisation, evaluation crop; ``dataset`` statistics differ a little by seed, and each
member keeps its own inside the ensemble) and must have been trained on the same films
with the same validation split: validation is what the ensemble is calibrated and
checked on, so a member that trained on another member's validation films would make
every validation figure a lie.
The ensemble's network (``model.ensemble.Ensemble``) is written as one weights file and
one card; calibration and the guard are not carried over (they were fitted on each
member alone): ``pneumoscope calibrate`` fits them for the ensemble, after which every
command uses it like any run.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

from pneumoscope.core import __version__
from pneumoscope.core.errors import UserError
from pneumoscope.model.contract import ModelCard, RunFiles, TrainingInfo, file_sha256
from pneumoscope.model.ensemble import Ensemble, ensemble_name
from pneumoscope.model.network import save_weights
from pneumoscope.model.run import LoadedRun, load_run


def check_members(members: list[LoadedRun], names: list[str]) -> None:
    """One line for the first member that does not fit with the first."""
    if len(members) < 2:
        raise UserError("an ensemble needs at least two runs")
    first = members[0].card
    for name, m in zip(names[1:], members[1:], strict=True):
        card = m.card
        own = dataclasses.replace(card.input, normalization=first.input.normalization)
        if own != first.input or card.input.normalization.kind != first.input.normalization.kind:
            raise UserError(
                f"{name} takes other input than {names[0]} ({card.input_note or card.input} "
                f"against {first.input_note or first.input}); ensemble members must share "
                "the image size, preprocessing, channels and kind of normalisation"
            )
        same = (card.training_data.counts, card.training_data.split_note)
        if same != (first.training_data.counts, first.training_data.split_note):
            raise UserError(
                f"{name} was trained on other films or another split than {names[0]}; "
                "ensemble members must share the training cache, or one member's training "
                "films would be another's validation films"
            )


def member_record(path: Path, loaded: LoadedRun) -> dict:
    card = loaded.card
    return {
        "run": str(path.resolve()),
        "architecture": card.architecture,
        "weights_sha256": file_sha256(loaded.files.weights),
        "seed": card.training.seed,
        "best_epoch": card.best_epoch,
        "val_auroc": card.validation.auroc,
        "train_seconds": card.training.train_seconds,
    }


def ensemble_card(members: list[LoadedRun], records: list[dict]) -> ModelCard:
    """The first member's card, made the ensemble's: its architecture, the members, the
    training time of all of them, no threshold until calibrated."""
    first = members[0].card
    seconds = [m.card.training.train_seconds for m in members]
    training: TrainingInfo = dataclasses.replace(
        first.training,
        train_seconds=sum(seconds) if all(s is not None for s in seconds) else None,
        seed=None,
        stopped_by=None,
        epochs_run=None,
        written_as={},  # a new card: today's keys, whatever the members' cards said
    )
    return dataclasses.replace(
        first,
        architecture=ensemble_name([m.card.architecture for m in members]),
        pneumoscope_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        threshold=0.5,
        threshold_policy="0.5 (not calibrated yet: run pneumoscope calibrate)",
        training=training,
        best_epoch=None,
        val_metrics={},
        ensemble={"combination": "mean of the members' logits", "members": records},
        calibration=None,
    )


def merge_runs(runs: list[str | Path], out: str | Path) -> ModelCard:
    """Write the ensemble of ``runs`` to ``out`` (a new or empty folder); its card."""
    paths = [Path(r).expanduser() for r in runs]
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; give a new folder for the ensemble")
    if any(p.resolve() == out.resolve() for p in paths):
        raise UserError("the ensemble cannot be written into one of its members")
    members = [load_run(p, use_calibration=False) for p in paths]
    check_members(members, [str(p) for p in paths])
    first_spec = members[0].card.input
    net = Ensemble([m.model for m in members], first_spec.in_chans)
    norms = [m.card.input.normalization for m in members]
    net.set_normalisations([n.mean for n in norms], [n.std for n in norms])
    net.compose_head()
    net.eval()
    records = [member_record(p, m) for p, m in zip(paths, members, strict=True)]
    card = ensemble_card(members, records)
    out.mkdir(parents=True, exist_ok=True)
    files = RunFiles(out)
    save_weights(net, files.weights)
    card.save(files)
    return card
