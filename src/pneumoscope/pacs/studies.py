"""`pacs predict`: studies fetched from a PACS, predicted, their results stored back.

Each study is fetched (WADO-RS) into a private folder removed afterwards, its films go
through `predict`'s own path (``predict_rows``, the run's intended-use rules), and one CSV
row per instance is written, named ``<StudyInstanceUID>/<SOPInstanceUID>`` (never a patient
attribute, never the temporary path). Instances not fetched for their modality (a CT, an
SR) get a ``skipped`` row with the reason. With ``store``, each film's SR and secondary
capture go back into its study (STOW-RS); with ``dicom_out`` they are also kept on disk.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from pneumoscope.core.errors import UserError
from pneumoscope.inference.predict import Counts, predict_rows
from pneumoscope.inference.predictor import Predictor
from pneumoscope.inference.scoring import CSV_COLUMNS, Prediction
from pneumoscope.model.run import LoadedRun
from pneumoscope.pacs.dicomweb import (
    RADIOGRAPH_MODALITIES,
    DicomwebServer,
    RetrievedStudy,
    fetched_study,
)
from pneumoscope.pacs.results import DicomOutputs, write_dicom_outputs


@dataclass
class StudiesOutcome:
    """What ``predict_studies`` did, for the summary lines."""

    studies: int = 0
    counts: Counts = field(default_factory=Counts)
    results: DicomOutputs = field(default_factory=DicomOutputs)
    stored: int = 0
    store_errors: list[str] = field(default_factory=list)  # "<SOP UID>: reason"


def study_uids(
    server: DicomwebServer,
    studies: Iterable[str] = (),
    date: str | None = None,
    modality: str | None = None,
) -> list[str]:
    """The studies to predict: those named, else those a QIDO-RS query by date (needed,
    so that a query never walks a whole archive) and modality finds."""
    named = [s.strip() for s in studies if s.strip()]
    if named:
        return named
    if not date:
        raise UserError(
            "say which studies: --study UID (repeatable), or --date YYYYMMDD[-YYYYMMDD]"
        )
    found = server.find_studies(date=date, modality=modality)
    if not found:
        raise UserError(f"no study on {server.url} matches date {date} and modality {modality}")
    return [s.study_uid for s in found]


def predict_studies(
    loaded: LoadedRun,
    server: DicomwebServer,
    uids: list[str],
    out_csv: str | Path,
    *,
    backend: str = "torch",
    allow: Iterable[str] = (),
    modalities: Iterable[str] | str | None = RADIOGRAPH_MODALITIES,
    store: bool = False,
    dicom_out: str | Path | None = None,
) -> StudiesOutcome:
    """Predict every study in ``uids`` into one CSV; store and/or keep the DICOM results."""
    predictor = Predictor.from_run(loaded, backend, allow).ready()
    outcome = StudiesOutcome()
    out_csv = Path(out_csv).expanduser()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for uid in uids:
            with fetched_study(server, uid, modalities) as study:
                rows = _predict_one(predictor, study)
                _results(predictor, server, study, rows, outcome, store, dicom_out)
            for row in rows:
                writer.writerow(row.csv_cells())
                outcome.counts.add(row)
            fh.flush()
            outcome.studies += 1
    outcome.counts.notes += predictor.scope.notes_for_inputs()
    return outcome


def _predict_one(predictor: Predictor, study: RetrievedStudy) -> list[Prediction]:
    """A row per fetched instance (its path still the private file) and per skipped one."""
    rows = list(predict_rows(predictor, [str(f) for f in study.files]))
    uid = study.study.study_uid
    skipped = [predictor.refusal(f"{uid}/{s.sop_uid}", "skipped", s.reason) for s in study.skipped]
    return rows + skipped


def _results(predictor, server, study, rows, outcome, store: bool, dicom_out) -> None:
    """SR and capture per analysed film (kept in ``dicom_out`` or a private folder), sent
    back when ``store``; then the rows are renamed from private paths to UIDs."""
    uid = study.study.study_uid
    if store or dicom_out:
        with tempfile.TemporaryDirectory(dir=study.folder) as scratch:
            made = write_dicom_outputs(predictor, rows, dicom_out or scratch)
            made.errors = [(f"{uid}/{Path(p).stem}", why) for p, why in made.errors]
            _merge(outcome.results, made)
            if store:
                _store(server, uid, made.written, outcome)
    for row in rows:
        if row.path.startswith(str(study.folder)):
            row.path = f"{uid}/{Path(row.path).stem}"


def _store(server: DicomwebServer, uid: str, files: list[Path], outcome: StudiesOutcome) -> None:
    if not files:
        return
    answers = server.store([pydicom.dcmread(f) for f in files], study_uid=uid)
    outcome.stored += sum(a.ok for a in answers)
    outcome.store_errors += [f"{a.sop_uid}: {a.detail}" for a in answers if not a.ok]


def _merge(total: DicomOutputs, part: DicomOutputs) -> None:
    total.written += part.written
    total.images += part.images
    total.not_dicom += part.not_dicom
    total.no_result += part.no_result
    total.errors += [(p, why) for p, why in part.errors]
