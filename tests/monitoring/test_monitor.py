"""`pneumoscope monitor` on audit logs written here line by line (the service's format,
serving/audit.py): windows by day and by count, each rate, the drift test, the labels, the
exit statuses and every user mistake as one line. tests/monitoring/test_live_traffic.py
runs it on the service's own log of real films."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.monitoring.monitor import monitor
from pneumoscope.monitoring.thresholds import Thresholds
from pneumoscope.monitoring.windows import psi
from tests.helpers import REPO, invoke_cli

RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"
MODEL_ID = "run_v1@d7c252803d31"  # the id the service gives run_v1's weights
START = datetime(2026, 12, 1, 8, tzinfo=timezone.utc)


def record(k: int, status: str = "ok", p: float | None = 0.3, **more) -> dict:
    """One audit line as the service writes it (AuditLog.outcome / refused)."""
    analysed = status == "ok"
    line = {
        "time": (START + timedelta(minutes=10 * k)).isoformat(timespec="milliseconds"),
        "request_id": f"r{k:04d}",
        "client": "127.0.0.1",
        "sha256": f"{k:064x}",
        "size": 1000,
        "model_id": MODEL_ID,
        "probability": p if analysed else None,
        "label": ("PNEUMONIA" if p >= 0.359 else "NORMAL") if analysed else None,
        "ood": False if analysed else None,
        "estimated_age_group": "child",
        "adult_probability": 0.001,
        "latency_ms": 12.5,
        "status": status,
        "http_status": {"ok": 200, "error": 415}.get(status, 422),
    }
    return {**line, **more}


def write_log(path: Path, records: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Validation probabilities: 300 draws of Beta(2, 3)."""
    p = np.random.default_rng(0).beta(2, 3, 300)
    path = tmp_path_factory.mktemp("ref") / "predictions_val.csv"
    pd.DataFrame({"path": [f"v{k}.png" for k in range(300)], "probability": p}).to_csv(
        path, index=False
    )
    return path


def like_validation(n: int, seed: int = 1, start: int = 0) -> list[dict]:
    p = np.random.default_rng(seed).beta(2, 3, n)
    return [record(start + k, p=float(v)) for k, v in enumerate(p)]


def run_monitor(tmp_path, reference, records, extra_lines=(), **options):
    log = write_log(tmp_path / "audit.jsonl", records, extra_lines)
    options.setdefault("by", "50")
    return monitor(RUN_V1, log, out=tmp_path / "out", reference=reference, **options)


# --- windows and rates -------------------------------------------------------------------


def test_traffic_like_validation_is_within(tmp_path, reference):
    result = run_monitor(tmp_path, reference, like_validation(100), population="child")
    assert result["within"] and result["alerts"] == []
    assert [w["window"] for w in result["windows"]] == ["1-50", "51-100"]
    for w in result["windows"]:
        assert w["verdict"] == "within" and w["drift"]["ks_p"] > 0.01
        assert w["error_rate"] == w["refusal_rate"] == w["ood_rate"] == 0
    assert result["reference"]["n"] == 300 and result["reference"]["ood_rate"] == 0.125
    assert (tmp_path / "out" / "monitor.html").is_file()
    assert not (tmp_path / "out" / "monitor_reliability.png").exists()  # no labels


def test_each_rate_counts_its_own_lines(tmp_path, reference):
    recs = like_validation(40)
    recs += [record(40 + k, "error", http_status=h, estimated_age_group=None)
             for k, h in enumerate((415, 500))]  # fmt: skip
    recs += [record(42 + k, "out_of_scope", estimated_age_group="adult") for k in range(3)]
    recs += [record(45, "skipped", estimated_age_group=None)]
    recs += [record(46 + k, ood=True, estimated_age_group="adult") for k in range(4)]
    result = run_monitor(tmp_path, reference, recs, population="child")
    [w] = result["windows"]
    assert (w["n"], w["analysed"]) == (50, 44)
    assert (w["errors"], w["client_errors"], w["server_errors"]) == (2, 1, 1)
    assert (w["refusals"], w["out_of_scope"], w["skipped"]) == (4, 3, 1)
    assert w["error_rate"] == 2 / 50 and w["refusal_rate"] == 4 / 50
    assert (w["ood"], w["ood_rate"]) == (4, 4 / 44)
    assert w["estimated_age_groups"] == {"child": 40, "adult": 7}
    assert w["out_of_population_rate"] == 7 / 47
    assert w["positive_rate"] == w["positives"] / 44
    assert w["alerts"] == ["out-of-population rate 0.149 > 0.1"]


def test_a_crossed_limit_alarms_and_a_small_window_is_not_judged(tmp_path, reference):
    recs = like_validation(60)
    for r in recs[20:30] + recs[55:]:  # 10 of the first 50, 5 of the last 10
        r.update(status="error", http_status=500, probability=None, label=None, ood=None)
    result = run_monitor(tmp_path, reference, recs)
    first, last = result["windows"]
    assert first["verdict"] == "ALERT" and first["alerts"] == ["error rate 0.200 > 0.05"]
    assert last["n"] == 10 and last["verdict"] == "too few to judge" and last["alerts"] == []
    assert result["alerts"] == ["1-50: error rate 0.200 > 0.05"] and not result["within"]
    looser = run_monitor(tmp_path, reference, recs, limits=Thresholds(max_error_rate=0.25))
    assert looser["within"]


def test_windows_by_day_from_since(tmp_path, reference):
    day = 24 * 6  # records are 10 minutes apart
    recs = like_validation(3 * day)
    result = run_monitor(tmp_path, reference, recs, by="day", since="2026-12-02")
    # START is 08:00 on 2026-12-01: 16 hours that day, 8 hours on the fourth
    assert [w["window"] for w in result["windows"]] == ["2026-12-02", "2026-12-03", "2026-12-04"]
    assert [w["n"] for w in result["windows"]] == [day, day, 8 * 6]
    assert result["lines"]["before_since"] == 16 * 6
    assert result["windows"][0]["first"].startswith("2026-12-02T00:00")


def test_a_window_drawn_elsewhere_drifts(tmp_path, reference):
    shifted = np.random.default_rng(2).beta(5, 1.5, 50)
    recs = like_validation(50) + [record(50 + k, p=float(v)) for k, v in enumerate(shifted)]
    result = run_monitor(tmp_path, reference, recs)
    same, moved = result["windows"]
    assert same["drift"]["ks_p"] > 0.05 and moved["drift"]["ks_p"] < 1e-6
    assert moved["drift"]["ks_d"] > 0.5 and moved["drift"]["psi"] > 0.25
    assert moved["alerts"][0].startswith("probabilities drifted from validation (KS D")


def test_psi_is_zero_on_the_same_sample_and_grows_with_the_shift():
    ref = np.random.default_rng(0).beta(2, 3, 2000)
    assert psi(ref, ref) == pytest.approx(0, abs=1e-12)
    small, large = (psi(np.clip(ref + d, 0, 1), ref) for d in (0.05, 0.2))
    assert 0 < small < large


# --- what is left out ----------------------------------------------------------------------


def test_lines_that_are_no_records_are_counted_and_skipped(tmp_path, reference):
    extra = ("not json", "[1, 2]", '{"time": "2026-12-01"}', "", '{"status": "ok", "prob')
    result = run_monitor(tmp_path, reference, like_validation(50), extra)
    assert result["lines"]["not_records"] == 4  # the blank line is no line
    assert result["lines"]["used"] == 50 and result["within"]
    assert any("4 lines are not audit records" in w for w in result["warnings"])


def test_another_models_lines_are_left_out_with_a_warning(tmp_path, reference):
    recs = like_validation(50) + [
        record(50 + k, model_id="other_run@0123456789ab") for k in range(7)
    ]
    recs.append(record(57, "error", model_id=None, http_status=503))  # before the model loaded
    recs.append(record(58, model_id="copied_folder@d7c252803d31"))  # the same weights
    result = run_monitor(tmp_path, reference, recs, by="100")
    assert result["lines"]["other_models"] == {"other_run@0123456789ab": 7}
    assert result["windows"][0]["n"] == 52
    assert any("other_run@0123456789ab (7 lines)" in w for w in result["warnings"])


def test_without_a_population_the_rate_is_not_measured_unless_named(tmp_path, reference):
    recs = like_validation(50)
    for r in recs[:10]:
        r["estimated_age_group"] = "adult"
    result = run_monitor(tmp_path, reference, recs)  # run_v1's card predates populations
    [w] = result["windows"]
    assert w["out_of_population_rate"] is None and w["estimated_age_groups"]["adult"] == 10
    assert any("--population child" in x for x in result["warnings"]) and result["within"]
    named = run_monitor(tmp_path, reference, recs, population="child")
    assert named["windows"][0]["out_of_population_rate"] == 0.2 and not named["within"]
    assert named["population"] == {"age_groups": ["child"], "from": "--population"}


# --- the reference ---------------------------------------------------------------------------


@pytest.fixture
def run_copy(tmp_path) -> Path:
    return Path(shutil.copytree(RUN_V1, tmp_path / "run"))


def test_the_reference_defaults_to_the_runs_validation_predictions(tmp_path, run_copy):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    p = np.clip(rng.beta(2, 3, 120) + 0.3 * y, 0, 1)
    pd.DataFrame(  # evaluate --split val's predictions_val.csv
        {
            "index": range(120),
            "path": "x.png",
            "label": y,
            "probability": p,
            "predicted": (p >= 0.359).astype(int),
            "outcome": "TP",
        }  # fmt: skip
    ).to_csv(run_copy / "predictions_val.csv", index=False)
    log = write_log(tmp_path / "audit.jsonl", like_validation(30))
    result = monitor(run_copy, log, by="30", out=tmp_path / "out")
    ref = result["reference"]
    assert ref["csv"] == str(run_copy / "predictions_val.csv") and ref["n"] == 120
    assert ref["prevalence"] == pytest.approx(y.mean())
    assert ref["positive_rate"] == pytest.approx(np.mean(p >= result["threshold"]))
    assert result["model_id"] == "run@d7c252803d31"  # the log's run_v1@ id: same weights
    assert result["lines"]["other_models"] == {}


def test_no_reference_says_how_to_make_one(tmp_path, run_copy):
    log = write_log(tmp_path / "audit.jsonl", like_validation(5))
    r = invoke_cli("monitor", "--run", str(run_copy), "--audit-log", str(log))
    _one_line_error(r, "no predictions_val.csv in", "--split val", "--reference")


def test_a_reference_of_another_model_and_a_small_one_are_warned(tmp_path):
    ref = tmp_path / "p.csv"
    shutil.copy(REPO / "tests" / "fixtures" / "run_v1_predictions.csv", ref)
    df = pd.read_csv(ref)
    df.loc[0, "model_id"] = "older@aaaaaaaaaaaa"
    df.to_csv(ref, index=False)
    result = run_monitor(tmp_path, ref, like_validation(20))
    assert result["reference"]["n"] == 8
    text = " ".join(result["warnings"])
    assert "predicted by older@aaaaaaaaaaaa" in text and "holds 8 films" in text
    assert "validation OOD rate (0.125" in text  # run_v1's tiny validation: over the limit


# --- labels ------------------------------------------------------------------------------------


def test_labels_by_request_id_give_intervals(tmp_path, reference):
    recs = like_validation(60)
    truth = [int(r["probability"] > 0.35) if k % 5 else 1 for k, r in enumerate(recs)]
    labels = tmp_path / "labels.csv"
    names = np.array(["NORMAL", "PNEUMONIA"])[truth]
    pd.DataFrame({"request_id": [r["request_id"] for r in recs], "label": names}).to_csv(
        labels, index=False
    )
    result = run_monitor(tmp_path, reference, recs, by="30", labels=labels)
    m = result["windows"][0]["labels"]
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    assert m["n"] == 30 and m["sensitivity"] == tp / (tp + fn)
    from scipy.stats import binomtest

    ci = binomtest(tp, tp + fn).proportion_ci(method="wilson")
    assert m["sensitivity_ci"] == pytest.approx([ci.low, ci.high], abs=1e-6)
    assert result["labels"]["overall"]["n"] == 60
    assert (tmp_path / "out" / "monitor_reliability.png").is_file()


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("sha256,label\nabc,MAYBE\n", "row 2: label 'MAYBE' is not NORMAL, PNEUMONIA, 0 or 1"),
        ("sha256,label\nabc,1\nabc,0\n", "gives abc two different labels"),
        ("path,label\nx.png,1\n", "needs a label column"),
    ],
)
def test_a_bad_labels_file_is_one_line(tmp_path, reference, content, fragment):
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    log = write_log(tmp_path / "audit.jsonl", like_validation(5))
    r = invoke_cli("monitor", "--run", str(RUN_V1), "--audit-log", str(log),
                   "--reference", str(reference), "--labels", str(labels))  # fmt: skip
    _one_line_error(r, fragment)


def test_labels_by_request_id_alone_refuse_a_batch_request(tmp_path, reference):
    recs = like_validation(4)
    for r in recs:
        r["request_id"] = "batch1"
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nbatch1,PNEUMONIA\n")
    with pytest.raises(UserError, match="give the labels a sha256 column too"):
        run_monitor(tmp_path, reference, recs, labels=labels)


# --- the command line --------------------------------------------------------------------------


def _one_line_error(r, *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_a_missing_audit_log_is_one_line(tmp_path, reference):
    missing = tmp_path / "nope.jsonl"
    r = invoke_cli("monitor", "--run", str(RUN_V1), "--audit-log", str(missing),
                   "--reference", str(reference))  # fmt: skip
    _one_line_error(r, f"audit log not found: {missing}", "--audit-log FILE")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--by", "week"], "--by 'week': give 'day' or a number"),
        (["--max-ood-rate", "1.5"], "--max-ood-rate"),
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO date"),
        (["--population", "teen"], "--population 'teen'"),
    ],
)
def test_a_wrong_flag_is_one_line(tmp_path, reference, flags, fragment):
    log = write_log(tmp_path / "audit.jsonl", like_validation(5))
    r = invoke_cli("monitor", "--run", str(RUN_V1), "--audit-log", str(log),
                   "--reference", str(reference), *flags)  # fmt: skip
    _one_line_error(r, fragment)


def test_a_log_of_another_model_only_is_one_line(tmp_path, reference):
    log = write_log(tmp_path / "audit.jsonl", [record(0, model_id="x@0123456789ab")])
    r = invoke_cli("monitor", "--run", str(RUN_V1), "--audit-log", str(log),
                   "--reference", str(reference))  # fmt: skip
    _one_line_error(r, "no line of", "x@0123456789ab (1 line)", "give --run the run")


def test_exit_status_is_0_within_and_3_over_a_limit(tmp_path, reference):
    log = write_log(tmp_path / "audit.jsonl", like_validation(40))
    args = ["monitor", "--run", str(RUN_V1), "--audit-log", str(log), "--reference",
            str(reference), "--by", "40", "--out", str(tmp_path / "out"), "--max-ood-rate",
            "0.2"]  # fmt: skip
    r = invoke_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "1-40" in r.stdout and "within" in r.stdout and "alert:" not in r.stderr
    r = invoke_cli(*args, "--drift-alpha", "0.999")  # any window "drifts"
    assert r.returncode == 3 and "alert: 1-40: probabilities drifted" in r.stderr


def test_help_has_examples_and_the_exit_statuses():
    r = invoke_cli("monitor", "--help")
    assert r.returncode == 0
    assert "Examples:" in r.stdout and "pneumoscope monitor --run" in r.stdout
    assert "Exit status: 0" in r.stdout and "3 a window crossed" in r.stdout
