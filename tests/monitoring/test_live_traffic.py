"""`pneumoscope monitor` on real traffic: the service (in process, its decoding workers and
population check included) answers 40 official pediatric test films, then 40 films it was
not made for (20 adult films, 20 pictures that are no X-ray), writing its audit log; the
monitor reads that log against validation predictions of 60 other pediatric films.

The run is tests/fixtures/run_v1 with a training population written into a copy of its
card (children, as its training films were): today's runs record one, so the service
refuses the adult films as out_of_scope, as it would in production.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.helpers import invoke_cli

RUN_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"
pytestmark = [pytest.mark.realdata, pytest.mark.slow]  # serves 80 films: about 30 s


def _children_run(root: Path) -> Path:
    run = root / "run"
    shutil.copytree(RUN_V1, run)
    card = json.loads((run / "model.json").read_text())
    group = {"age_groups": ["child"], "age_min": 1, "age_max": 5, "views": ["AP"]}
    card["population"] = {"sources": [{"name": "slice", **group}], **group}
    (run / "model.json").write_text(json.dumps(card, indent=2))
    return run


def _not_xrays(root: Path, n: int) -> list[Path]:
    """Pictures that are no X-ray: flat colours and gradients with a caption."""
    root.mkdir()
    out = []
    for k in range(n):
        img = np.zeros((200, 160, 3), np.uint8)
        img[:] = (k * 37 % 255, 120, 200 - k * 9)
        img[:, :, 1] = np.linspace(60 + k * 5, 200, 160, dtype=np.uint8)[None, :]
        cv2.putText(img, f"scan {k}", (8, 100), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        path = root / f"picture_{k:02d}.png"
        cv2.imwrite(str(path), img)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def traffic(shared_data, tmp_path_factory):
    import torch
    from fastapi.testclient import TestClient

    from pneumoscope.inference.predict import predict_to_csv
    from pneumoscope.serving.app import create_app
    from pneumoscope.serving.engine import Engine
    from pneumoscope.serving.settings import ServeSettings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other jobs (tests/conftest.py)
    root = tmp_path_factory.mktemp("live")
    run = _children_run(root)
    test = shared_data / "chest_xray_224" / "test"
    normal = sorted((test / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted((test / "PNEUMONIA").glob("*.jpeg"))
    validation = normal[:30] + pneumonia[:30]  # stands in for the run's validation films
    children = normal[30:50] + pneumonia[30:50]
    adults_csv = pd.read_csv(shared_data / "adult_public" / "adults.csv")
    adults = [shared_data / "adult_public" / p for p in adults_csv["path"][:20]]
    foreign = adults + _not_xrays(root / "pictures", 20)
    reference = root / "predictions_val.csv"
    predict_to_csv(run, [str(p) for p in validation], reference, workers=1)

    log = root / "audit.jsonl"
    settings = ServeSettings(run=run, audit_log=log)
    with TestClient(create_app(settings, Engine.load(run)), base_url="http://localhost") as c:
        for films in (children[:20], children[20:], foreign[:20], foreign[20:]):
            files = [("files", (p.name, p.read_bytes())) for p in films]
            assert c.post("/v1/predict/batch", files=files).status_code == 200
    torch.set_num_threads(threads)
    truth = {hashlib.sha256(p.read_bytes()).hexdigest(): p.parent.name for p in children}
    return {"root": root, "run": run, "log": log, "reference": reference, "truth": truth}


def _monitor(traffic, out: Path, *more: str):
    args = ["monitor", "--run", str(traffic["run"]), "--audit-log", str(traffic["log"])]
    args += ["--reference", str(traffic["reference"]), "--by", "40", "--out", str(out)]
    return invoke_cli(*args, *more)


def test_children_are_within_and_the_foreign_films_raise_the_alarm(traffic, tmp_path):
    r = _monitor(traffic, tmp_path / "m")
    assert r.returncode == 3, (r.stdout, r.stderr)
    result = json.loads((tmp_path / "m" / "monitor.json").read_text())
    children, foreign = result["windows"]
    assert result["lines"] == {"read": 80, "used": 80, "not_records": 0, "no_time": 0,
                               "before_since": 0, "other_models": {}}  # fmt: skip

    # the pediatric window: like validation
    assert (children["window"], children["n"], children["analysed"]) == ("1-40", 40, 40)
    assert children["verdict"] == "within" and children["alerts"] == []
    assert children["drift"]["ks_p"] > result["thresholds"]["drift_alpha"]
    assert children["error_rate"] == children["refusal_rate"] == 0
    assert children["out_of_population_rate"] <= 0.05
    assert abs(children["positive_rate"] - result["reference"]["positive_rate"]) < 0.2

    # the foreign window: adults refused as out of the population, the pictures that are
    # analysed score unlike validation's films
    assert foreign["verdict"] == "ALERT"
    assert foreign["out_of_scope"] >= 18 and foreign["refusal_rate"] > 0.1
    assert foreign["estimated_age_groups"]["adult"] >= 18
    assert foreign["out_of_population_rate"] > 0.1
    assert foreign["drift"]["ks_p"] < result["thresholds"]["drift_alpha"]
    assert foreign["drift"]["ks_d"] > children["drift"]["ks_d"]
    names = " ".join(foreign["alerts"])
    for what in ("refusal rate", "out-of-population rate", "drifted"):
        assert what in names
    assert result["alerts"] == [f"41-80: {a}" for a in foreign["alerts"]]
    assert result["within"] is False

    # the terminal, the page and the figures
    assert "1-40" in r.stdout and "41-80" in r.stdout and "ALERT" in r.stdout
    assert r.stderr.count("alert: 41-80") == len(foreign["alerts"])
    page = (tmp_path / "m" / "monitor.html").read_text()
    assert "41-80" in page and "Kolmogorov-Smirnov" in page and page.count("<figure>") == 2
    for png in ("monitor_rates.png", "monitor_histograms.png"):
        assert (tmp_path / "m" / png).read_bytes()[:4] == b"\x89PNG"


def test_labels_add_sensitivity_and_specificity_with_intervals(traffic, tmp_path):
    labels = tmp_path / "reads.csv"
    rows = [{"sha256": k, "label": v} for k, v in traffic["truth"].items()]
    pd.DataFrame(rows).to_csv(labels, index=False)
    r = _monitor(traffic, tmp_path / "m", "--labels", str(labels))
    assert r.returncode == 3, r.stderr
    result = json.loads((tmp_path / "m" / "monitor.json").read_text())
    children, foreign = result["windows"]
    m = children["labels"]
    assert (m["n"], m["n_normal"], m["n_pneumonia"]) == (40, 20, 20)
    for key in ("sensitivity", "specificity"):
        low, high = m[f"{key}_ci"]
        assert 0 <= low <= m[key] + 1e-9 and m[key] <= high + 1e-9 and high <= 1
        assert high - low > 0.1  # 20 films: a wide interval
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    assert m["sensitivity"] == tp / 20 and m["specificity"] == tn / 20
    assert foreign["labels"] == {"n": 0}
    overall = result["labels"]["overall"]
    assert overall["n"] == 40 and overall["ece"] is not None
    bins = result["labels"]["reliability"]
    assert sum(b["n"] for b in bins) == 40
    for b in bins:  # (the interval's ends are computed: 1 - 1e-16 for a rate of 1)
        assert b["observed_ci"][0] - 1e-9 <= b["observed_rate"] <= b["observed_ci"][1] + 1e-9
    assert "sensitivity" in r.stdout and "Wilson" in r.stdout
    assert (tmp_path / "m" / "monitor_reliability.png").is_file()
    assert "Observed performance" in (tmp_path / "m" / "monitor.html").read_text()


def test_a_garbage_line_in_the_log_is_counted_not_fatal(traffic, tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = traffic["log"].read_text().splitlines()
    lines.insert(5, "{'not': json")
    lines.append(lines[-1][:40])  # a last line cut short by a crash
    log.write_text("\n".join(lines) + "\n")
    r = invoke_cli("monitor", "--run", str(traffic["run"]), "--audit-log", str(log),
                   "--reference", str(traffic["reference"]), "--by", "40",
                   "--out", str(tmp_path / "m"))  # fmt: skip
    assert r.returncode == 3 and "Traceback" not in r.stderr
    result = json.loads((tmp_path / "m" / "monitor.json").read_text())
    assert result["lines"]["not_records"] == 2 and result["lines"]["used"] == 80
    assert f"{log}: 2 lines are not audit records" in r.stderr
    assert [w["n"] for w in result["windows"]] == [40, 40]
