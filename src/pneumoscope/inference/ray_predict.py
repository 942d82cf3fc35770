"""`predict --engine ray`: prediction as a Ray Data job, with the local engine's rows.

The driver lists the inputs (:func:`pneumoscope.inference.predict.scan_inputs`) and
readies the model once (:func:`ray_model`): the run's ONNX model (``model.onnx``; the
int8 model with ``--backend onnx-int8``, or ``auto`` when it is current), exported on the
driver into a temporary folder when the run has no current export, so the run folder is
never written to. The model's bytes, the run's card and calibration (without the torch
network), its OOD guard and the intended-use allowances go to the workers through Ray's
object store: the workers need no access to the run folder.

Each worker is an actor with one ONNX Runtime session (one CPU, one thread); for each
batch of ``batch_size`` paths it screens and decodes every file exactly as the local
engine does and scores the images together, through the driver's
:class:`pneumoscope.inference.predictor.Predictor` rebuilt on the worker. Unreadable,
skipped and out-of-scope inputs get their rows and reasons there. The rows come back to
the driver in input order and are written by `predict` as usual (CSV or Parquet).

The workers read the inputs by the paths the driver lists: on a multi-node cluster they
must be mounted at the same paths on every node, and pneumoscope installed there.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.core.ray_session import cluster_cpus, data_job, ray_session
from pneumoscope.data.augment_config import AugmentConfig
from pneumoscope.data.views import Views
from pneumoscope.inference.export_record import check_export, export_problem, recorded_views
from pneumoscope.inference.intended_use import IntendedUse
from pneumoscope.inference.predictor import Predictor
from pneumoscope.inference.scoring import Prediction
from pneumoscope.model.ood import OodGuard
from pneumoscope.model.population_check import shipped_folder
from pneumoscope.model.run import LoadedRun
from pneumoscope.model.tta import draw_views


@dataclass
class RayModel:
    """Everything a worker needs to score, shipped once through the object store."""

    loaded: LoadedRun  # card, calibration and files' paths; model is None (ONNX scores)
    onnx: bytes
    kind: str  # "onnx" | "onnx-int8"
    guard: OodGuard | None
    allow: frozenset[str]
    model_id: str
    notes: list[str] = field(default_factory=list)  # for the user, said once
    check: str = ""  # the run's own population check folder; "" = the one shipped
    views: Views | None = None  # test-time augmentation's transforms (workers need no torch)


def ray_model(predictor: Predictor) -> RayModel:
    """The model the workers run for the predictor's backend (onnx-int8, or auto with a
    current int8 model: the int8 model; openvino: refused; anything else: float32 ONNX),
    with its guard, rules and model id."""
    loaded, backend = predictor.loaded, predictor.backend
    if backend == "openvino":
        raise UserError(
            "--engine ray runs ONNX Runtime on its workers: use --backend onnx, onnx-int8 or "
            "auto (OpenVINO runs with --engine local)"
        )
    int8 = backend == "onnx-int8" or (
        backend == "auto" and export_problem(loaded.root, int8=True) is None
    )
    notes: list[str] = []
    onnx = _onnx_bytes(loaded, int8, notes)
    bare = loaded.without_network()  # the torch network stays on the driver
    kind = "onnx-int8" if int8 else "onnx"
    allow = predictor.scope.allow
    own = (
        ""
        if Path(predictor.scope.population_folder) == shipped_folder()
        else predictor.scope.population_folder
    )
    views = _tta_views(loaded)
    return RayModel(bare, onnx, kind, predictor.guard, allow, predictor.model_id, notes, own, views)


def _tta_views(loaded: LoadedRun) -> Views | None:
    """The transforms of the run's test-time augmentation, as its export recorded them or
    drawn here (with torch), so that the workers apply them without torch."""
    tta = loaded.tta
    if tta is None or tta.copies <= 0:
        return None
    views = recorded_views(loaded.root, tta)
    return views or draw_views(tta.copies, AugmentConfig.from_dict(tta.augment), tta.seed)


def _onnx_bytes(loaded: LoadedRun, int8: bool, notes: list[str]) -> bytes:
    files = loaded.files
    if int8:
        check_export(files.root, int8=True)  # missing or stale: how to make it
        return files.int8.read_bytes()
    if export_problem(files.root) is None:
        return files.onnx.read_bytes()
    from pneumoscope.inference.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="pneumoscope-onnx-") as tmp:
        out = Path(tmp) / files.onnx.name
        export_onnx(files.root, out=out)
        notes.append(
            f"{files.root} has no current ONNX export: the Ray workers ran one exported for "
            f"this job (checked against PyTorch); 'pneumoscope export --run {files.root}' "
            "keeps one in the run"
        )
        return out.read_bytes()


def _runner(onnx: bytes):
    """An ONNX Runtime session (one thread) of the model's bytes."""
    from pneumoscope.inference.onnx_runner import OnnxRunner

    with tempfile.TemporaryDirectory(prefix="pneumoscope-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx)
        return OnnxRunner.at(path, threads=1)  # the session holds the model: file not needed


class Scorer:
    """The Ray Data actor: one ONNX session, then batches of {"i", "path"} -> row columns."""

    def __init__(self, model):
        if not isinstance(model, RayModel):  # its object-store reference (see below)
            import ray

            model = ray.get(model)
        self.model = model
        # + its test-time augmentation, with the transforms the driver shipped
        runner = model.loaded.scorer(_runner(model.onnx), model.views)
        check = model.check or shipped_folder()  # the worker's own copy of the package
        scope = IntendedUse.from_card(model.loaded.card, model.allow, check)
        # the driver's predictor, rebuilt from what was shipped (no run folder here)
        self.predictor = Predictor(model.loaded, scope, model.guard, model.model_id, runner=runner)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = self.predictor.score_screened([self.predictor.screen(str(p)) for p in batch["path"]])
        cols = to_columns(rows)
        cols["i"] = np.asarray(batch["i"], np.int64)
        cols["screened"] = np.full(len(rows), bool(self.predictor.scope.notes_for_inputs()))
        return cols


def to_columns(rows: Sequence[Prediction]) -> dict[str, np.ndarray]:
    """Rows as numpy columns (missing numbers NaN, a missing ood flag -1)."""

    def num(values):
        return np.array([np.nan if v is None else v for v in values], np.float64)

    def text(values):
        return np.array(list(values), dtype=object)

    return {
        "path": text(r.path for r in rows),
        "probability": num([r.probability for r in rows]),
        "label": text(r.label for r in rows),
        "ood": np.array([-1 if r.ood is None else int(r.ood) for r in rows], np.int8),
        "ood_score": num([r.ood_score for r in rows]),
        "status": text(r.status for r in rows),
        "error": text(r.error for r in rows),
        "note": text(r.note for r in rows),
        "estimated_age_group": text(r.estimated_age_group for r in rows),
        "adult_probability": num([r.adult_probability for r in rows]),
    }


def from_columns(b: dict[str, np.ndarray], k: int, threshold: float, mid: str) -> Prediction:
    """Row ``k`` of a batch of :func:`to_columns` as a Prediction again."""
    p, s, ood = float(b["probability"][k]), float(b["ood_score"][k]), int(b["ood"][k])
    adult = float(b["adult_probability"][k])
    return Prediction(
        str(b["path"][k]),
        threshold,
        mid,
        None if math.isnan(p) else p,
        str(b["label"][k]),
        None if ood < 0 else bool(ood),
        None if math.isnan(s) else s,
        str(b["status"][k]),
        str(b["error"][k]),
        str(b["note"][k]),
        estimated_age_group=str(b["estimated_age_group"][k]),
        adult_probability=None if math.isnan(adult) else adult,
    )


def ray_predict_rows(
    model: RayModel,
    paths: Sequence[str],
    batch_size: int = 32,
    address: str | None = None,
    scope: IntendedUse | None = None,
    actors: int | None = None,
) -> Iterator[Prediction]:
    """One Prediction per path, in input order, computed on a Ray cluster (``address``;
    default RAY_ADDRESS or a local cluster started for the job) by ``actors`` workers
    (default: one per CPU of the cluster). ``scope`` (the driver's rules) learns whether
    a worker screened a DICOM header, for its notes."""
    n = len(paths)
    if n == 0:
        return
    items = [{"i": i, "path": str(p)} for i, p in enumerate(paths)]
    blocks = -(-n // batch_size)
    with ray_session(address) as ray, data_job(ray, preserve_order=True):
        shipped = ray.put(model)  # once: Ray Data would copy constructor arguments
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(
            Scorer,
            fn_constructor_args=(shipped,),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors or min(cluster_cpus(ray), blocks)),
            num_cpus=1,
        )
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        for row, screened in _in_order(batches, n, model):
            if screened and scope is not None:
                scope.mark_screened()
            yield row


def _in_order(
    batches: Iterable[dict], n: int, model: RayModel
) -> Iterator[tuple[Prediction, bool]]:
    """The rows by input index (Ray keeps the order; a row that came early waits)."""
    thr, mid = model.loaded.threshold, model.model_id
    pending: dict[int, tuple[Prediction, bool]] = {}
    done = 0
    for b in batches:
        for k, i in enumerate(b["i"]):
            pending[int(i)] = (from_columns(b, k, thr, mid), bool(b["screened"][k]))
        while done in pending:
            yield pending.pop(done)
            done += 1
    if done != n or pending:
        raise RuntimeError(f"the Ray job returned {done + len(pending)} rows for {n} inputs")
