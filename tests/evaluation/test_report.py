"""report.html from its template: one self-contained line of HTML, every value escaped, the
sections that depend on the result, and a card with fields missing."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import jinja2
import numpy as np
import pytest

from pneumoscope.data.cache import CacheInfo
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.evaluation.report import _templates, write_report
from pneumoscope.model.contract import ModelCard, RunFiles


def _result(**changes) -> dict:
    """A small evaluation result, shaped like metrics.json."""
    result = {
        "run": "/runs/r1",
        "data": "/data/cache",
        "split": "test",
        "created": "2025-01-01T00:00:00+00:00",
        "threshold_policy": "youden",
        "temperature": 1.5,
        "threshold": 0.5,
        "n": 4,
        "n_normal": 2,
        "n_pneumonia": 2,
        "auroc": 0.75,
        "brier": float("nan"),
        "confusion_matrix": [[1, 1], [1, 1]],
        "ci": {"auroc": [0.5, 0.9]},
        "bootstrap": {"replicates": 200, "n_patients": 4, "resampling_unit": "group"},
        "operating_points": {},
        "per_group": {},
        "metric_labels": {"auroc": "AUROC", "brier": "Brier score"},
        "per_image": {
            "csv": "predictions_test.csv",
            "false_positives": [{"index": 0, "path": "/x/a.png", "probability": 0.9}],
            "false_negatives": [],
        },
    }
    return {**result, **changes}


def _card(**changes) -> dict:
    card = {
        "architecture": "resnet18",
        "in_chans": 1,
        "preprocess": {"img_size": 64, "clahe": True},
        "normalization": {"mean": [0.5], "std": [0.25]},
        "training": {"epochs_run": 5, "stopped_by": "max_epochs", "imbalance": "weights"},
        "best_epoch": 3,
        "val_metrics": {"val_auroc": 0.9},
        "training_data": {"sources": ["ped", "cov"]},
    }
    return {**card, **changes}


def _page(tmp_path: Path, result: dict | None = None, card: dict | None = None) -> str:
    run = RunFiles(tmp_path / "run")
    loaded = SimpleNamespace(card=ModelCard.from_dict(card or _card()), root=run.root, files=run)
    counts = {"test": {"NORMAL": 2, "PNEUMONIA": 2, "total": 4}}
    info = CacheInfo(PreprocessConfig(img_size=8), counts=counts, split_note="given")
    cache = SimpleNamespace(info=info, images=np.full((1, 8, 8), 128, np.uint8))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    write_report(out / "report.html", result or _result(), loaded, cache)
    return (out / "report.html").read_text()


def test_page_is_one_self_contained_line_with_its_sections(tmp_path):
    page = _page(tmp_path)
    assert page.startswith("<!doctype html><html lang='en'><head>")
    assert page.endswith("</ul></body></html>")
    assert "\n" not in re.sub(r"<style>.*</style>", "", page, flags=re.S)  # as before templates
    assert "<h2>Metrics (test, n = 4: 2 NORMAL, 2 PNEUMONIA)</h2>" in page
    assert "<tr><td>AUROC</td><td>0.750</td><td>0.500 to 0.900</td></tr>" in page
    assert "<tr><td>Brier score</td><td>n/a</td><td></td></tr>" in page
    assert (
        "Intervals: percentile bootstrap, 200 replicates resampling 4 patient groups "
        "(a patient's images and their copies).</p>" in page
    )
    # one thumbnail among the false positives, none among the false negatives
    assert page.count("<div class='thumbs'><figure><img alt=\"a.png: p = 0.900\"") == 1
    assert "<h3>PNEUMONIA called NORMAL (lowest probability first): 0 of 1 shown</h3>" in page
    assert "<p>None.</p>" in page
    assert "Operating points" not in page and "<h2>By " not in page
    assert "<div class='grid'></div>" in page  # no plot files: no figures


def test_values_are_escaped(tmp_path):
    page = _page(tmp_path, _result(run="/runs/<script>&x", split="a&b"))
    assert "<script>" not in page
    assert "<h1>pneumoscope evaluation: &lt;script&gt;&amp;x on the a&amp;b split</h1>" in page
    assert "<code>/runs/&lt;script&gt;&amp;x</code>" in page


def test_operating_points_groups_and_plots_when_present(tmp_path):
    op = {"threshold": 0.4, "sensitivity": 1.0, "specificity": 0.5, "ppv": 0.6, "npv": 1.0}
    groups = {"source": {"ped": {"n": 30, "auroc": 0.8, "ci": {"auroc": [0.7, 0.9]}}}}
    out = tmp_path / "out"
    out.mkdir()
    cv2.imwrite(str(out / "roc_curve.png"), np.zeros((4, 4), np.uint8))
    page = _page(
        tmp_path,
        _result(operating_points={"f1": {**op, "f1": 0.75}}, per_group=groups),
    )
    assert (
        "<tr><td>f1</td><td>0.400</td><td>1.000</td><td>0.500</td><td>0.600</td><td>1.000</td>"
        "<td>0.750</td></tr>" in page
    )
    assert "<h2>By source</h2><table><tr><th>source</th><th>n</th>" in page
    assert "<tr><td>ped</td><td>30</td><td>0.800</td><td>0.700 to 0.900</td><td>n/a</td>" in page
    assert re.search(
        r"<div class='grid'><figure><img alt=\"ROC with the operating point\" "
        r"src=\"data:image/png;base64,[A-Za-z0-9+/=]+\"><figcaption>ROC with the operating "
        r"point</figcaption></figure></div>",
        page,
    )


def test_limitations_name_the_sources_and_a_validation_gap(tmp_path):
    items = re.findall(r"<li>(.*?)</li>", _page(tmp_path))
    assert len(items) == 7 and items[0].startswith("Trained on images from ped, cov only.")
    assert items[1] == (
        "Validation AUROC (0.900) is clearly higher than on this split (0.750): the evaluated "
        "images differ from the training distribution."
    )
    close = _card(val_metrics={"val_auroc": 0.76})
    items = re.findall(r"<li>(.*?)</li>", _page(tmp_path, card=close))
    assert len(items) == 6 and not any("Validation AUROC" in x for x in items)


def test_a_card_without_optional_fields_still_renders(tmp_path):
    required = {
        "architecture": "seed_cnn",
        "in_chans": 1,
        "preprocess": {"img_size": 150, "clahe": False},
        "normalization": {"mean": [0.5], "std": [0.25]},
    }
    page = _page(tmp_path, card=required)
    assert "<tr><td>architecture</td><td>seed_cnn</td></tr>" in page
    assert "<tr><td>input</td><td>150 px grayscale, CLAHE off</td></tr>" in page
    assert "<tr><td>validation AUROC</td><td>n/a</td></tr>" in page
    assert "Trained on images from unknown only." in page


def test_without_bootstrap_or_per_image_results(tmp_path):
    result = _result(bootstrap={"replicates": 0}, ci={})
    del result["per_image"]
    page = _page(tmp_path, result)
    assert "No intervals: evaluated with --bootstrap 0.</p>" in page
    assert "Most confident errors" not in page


def test_a_value_the_template_names_but_the_context_lacks_fails_loudly():
    with pytest.raises(jinja2.UndefinedError):
        _templates().get_template("report.html.j2").render({})
