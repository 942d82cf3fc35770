"""Whether a run's ONNX export (and its int8 model) can be used: present, finished, made
from the current weights, and of the current int8 format. Shared by the ONNX Runtime and
OpenVINO runners and the export itself."""

from __future__ import annotations

import json
from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.data.views import Views
from pneumoscope.model.contract import RunFiles, read_card
from pneumoscope.model.tta import TestTimeAugmentation

# 7-bit weights (reduce_range): full 8-bit weights saturate ONNX Runtime's int8 kernels on
# CPUs without VNNI (AVX2 only), where they moved validation probabilities by up to 0.19
INT8_FORMAT = "QDQ (static, 7-bit weights)"
OLD_INT8 = {
    "QDQ (static)": "made with 8-bit weights, which are wrong on CPUs without VNNI",
}


def export_problem(run: str | Path, int8: bool = False) -> str | None:
    """Why RUN's ONNX export cannot be used (missing, unfinished, stale), or None if it can."""
    files = RunFiles.of(run)
    path = files.int8 if int8 else files.onnx
    again = f"run 'pneumoscope export --run {files.root}{' --int8' if int8 else ''}'"
    if not path.is_file():
        return f"{path} not found; {again} first"
    record_path = files.export_record
    if not record_path.is_file():
        return f"{record_path} is missing (the export did not finish); {again} again"
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as exc:
        return f"{record_path} is not valid JSON ({exc}); {again} again"
    if record.get("weights_sha256") != files.weights_sha256():
        return f"{path} was exported from other weights than {files.weights}; {again} again"
    if int8 and not record.get("int8"):
        return f"{path} is not from the latest export (it had no int8); {again} again"
    if int8 and record["int8"].get("format") != INT8_FORMAT:
        why = OLD_INT8.get(record["int8"].get("format"), "a dynamic one (last layer only)")
        return f"{path} is an older int8 model, {why}; {again} again"
    return None


def check_export(run: str | Path, int8: bool = False) -> None:
    """Raise UserError with the way out when RUN's ONNX export is missing or stale."""
    read_card(run)  # a missing or unfinished run folder gets its own message
    problem = export_problem(run, int8)
    if problem:
        raise UserError(problem)


def recorded_views(run: str | Path, tta: TestTimeAugmentation | None) -> Views | None:
    """The test-time augmentation's transforms as the export recorded them, when it recorded
    them for this very setting (count, seed, augmentation); else None (draw them)."""
    if tta is None:
        return None
    try:
        record = json.loads(RunFiles.of(run).export_record.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    saved = record.get("tta_views") or {}
    setting = {k: saved.get(k) for k in ("copies", "seed", "augment")}
    if setting != {"copies": tta.copies, "seed": tta.seed, "augment": tta.augment}:
        return None
    return Views.from_dict(saved["views"])


def views_record(tta: TestTimeAugmentation | None) -> dict | None:
    """What export.json records of the test-time augmentation: its setting and the
    transforms drawn for it (with torch), so that an install without torch applies them."""
    if tta is None or tta.copies <= 0:
        return None
    from pneumoscope.data.augment_config import AugmentConfig
    from pneumoscope.model.tta import draw_views

    views = draw_views(tta.copies, AugmentConfig.from_dict(tta.augment), tta.seed)
    return {
        "copies": tta.copies,
        "seed": tta.seed,
        "augment": tta.augment,
        "views": views.to_dict(),
    }
