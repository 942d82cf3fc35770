"""Train -> evaluate -> predict on synthetic X-rays made here, checked against each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.data.prepare import prepare
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.evaluation.evaluate import evaluate
from pneumoscope.evaluation.metrics import youden_threshold
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.inference.scoring import CSV_COLUMNS
from pneumoscope.model.run import load_run
from pneumoscope.training.train import TrainConfig, train


def test_run_directory_is_complete(run_dir):
    for name in ("model.safetensors", "model.json", "history.csv", "curves.png", "config.yaml"):
        assert (run_dir / name).is_file(), name
    card = json.loads((run_dir / "model.json").read_text())
    assert card["architecture"] == "seed_cnn"
    assert card["preprocess"]["img_size"] == 32 and card["preprocess"]["clahe"] is True
    assert card["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert 0.0 < card["threshold"] < 1.0
    assert card["training_data"]["counts"]["train"]["total"] > 0
    assert card["training"]["imbalance"] == "pos-weight"
    n_pos = card["training_data"]["counts"]["train"]["PNEUMONIA"]
    n_neg = card["training_data"]["counts"]["train"]["NORMAL"]
    assert card["training"]["pos_weight"] == pytest.approx(n_neg / n_pos)
    hist = pd.read_csv(run_dir / "history.csv")
    assert {
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "train_auroc",
        "val_auroc",
    } <= set(hist.columns)
    assert len(hist) == card["training"]["epochs_run"]
    assert card["best_epoch"] == int(hist.loc[hist["val_auroc"].idxmax(), "epoch"])
    assert set(load_file(str(run_dir / "model.safetensors")))  # plain tensors, no pickle


def test_saved_weights_are_the_best_epoch_and_threshold_comes_from_validation(run_dir, data_dir):
    loaded = load_run(run_dir)
    cache = open_cache(data_dir)
    val = cache.split("val")
    p = loaded.predict_proba(cache.images, rows=val["index"].to_numpy())
    y = val["label"].to_numpy()
    assert roc_auc_score(y, p) == pytest.approx(loaded.card.val_metrics["val_auroc"], abs=1e-6)
    assert loaded.threshold == pytest.approx(youden_threshold(y, p), abs=1e-6)


def test_model_learns_the_synthetic_signal(run_dir, data_dir, tmp_path):
    m = evaluate(run_dir, data_dir, "test", out=tmp_path)
    assert m["auroc"] >= 0.9, m


def test_evaluate_writes_metrics_and_plots_that_agree_with_sklearn(run_dir, data_dir, tmp_path):
    m = evaluate(run_dir, data_dir, "test", out=tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "auroc",
        "accuracy",
        "precision",
        "sensitivity",
        "specificity",
        "f1",
        "confusion_matrix",
        "n",
        "threshold",
    ):
        assert key in saved
    assert saved["n"] == 40
    for png in ("confusion_matrix.png", "roc_curve.png", "pr_curve.png"):
        assert (tmp_path / png).stat().st_size > 1000
    loaded = load_run(run_dir)
    cache = open_cache(data_dir)
    test = cache.split("test")
    y = test["label"].to_numpy()
    p = loaded.predict_proba(cache.images, rows=test["index"].to_numpy())
    pred = (p >= m["threshold"]).astype(int)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    assert tn + fp + fn + tp == 40 and tp + fn == int(y.sum())


def test_predict_from_files_matches_evaluation_from_cache(
    run_dir, data_dir, synthetic_source, tmp_path
):
    """One preprocessing path: decoding the files again gives the cached probabilities."""
    bad = tmp_path / "bad files"
    bad.mkdir()
    (bad / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff garbage")
    (bad / "empty.png").write_bytes(b"")
    inputs = [
        str(synthetic_source / "test"),
        str(bad / "corrupt.jpeg"),
        str(bad / "empty.png"),
        str(tmp_path / "missing.png"),
    ]
    counts = predict_to_csv(
        run_dir, inputs, tmp_path / "p.csv", batch_size=7, workers=2, allow=("age",)
    )  # synthetic films are nobody's: the population check would refuse them
    df = pd.read_csv(tmp_path / "p.csv")
    assert list(df.columns) == CSV_COLUMNS
    assert len(df) == 40 + 3 and counts.ok == 40 and counts.failed == 3
    errors = df[df["status"] == "error"].set_index("path")["error"]
    assert "empty" in errors[str(bad / "empty.png")]
    assert (
        "not found" in errors[str(tmp_path / "missing.png")]
        or "cannot open" in errors[str(tmp_path / "missing.png")]
    )
    ok = df[df["status"] == "ok"]
    assert set(ok["label"]) <= {"NORMAL", "PNEUMONIA"}
    assert ((ok["probability"] >= ok["threshold"]) == (ok["label"] == "PNEUMONIA")).all()
    loaded = load_run(run_dir)
    cache = open_cache(data_dir)
    test = cache.split("test")
    p_cache = dict(
        zip(
            test["path"],
            loaded.predict_proba(cache.images, rows=test["index"].to_numpy()),
            strict=True,
        )
    )
    p_files = dict(zip(ok["path"], ok["probability"], strict=True))
    assert set(p_files) == set(p_cache)
    diffs = [abs(p_files[k] - p_cache[k]) for k in p_cache]
    assert max(diffs) < 1e-5


def test_predict_rejects_empty_inputs(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        predict_to_csv(run_dir, [str(tmp_path / "empty")], tmp_path / "p.csv")
    with pytest.raises(UserError, match="matches no files"):
        predict_to_csv(run_dir, [str(tmp_path / "*.dcm")], tmp_path / "p.csv")


def test_evaluate_refuses_a_cache_with_other_preprocessing(run_dir, synthetic_source, tmp_path):
    prepare(synthetic_source, tmp_path / "c48", PreprocessConfig(img_size=48), progress=False)
    with pytest.raises(UserError, match="prepare the data again"):
        evaluate(run_dir, tmp_path / "c48", "test")


@pytest.mark.parametrize("imbalance", ["sampler", "none"])
def test_other_imbalance_methods_and_timm_models_train(data_dir, tmp_path, imbalance):
    out = tmp_path / imbalance
    card = train(
        TrainConfig(
            data=str(data_dir),
            out=str(out),
            model="resnet10t",
            epochs=1,
            batch_size=16,
            imbalance=imbalance,
        ),
        progress=False,
    )
    assert card.training.pos_weight is None  # never two compensations at once
    assert card.architecture == "resnet10t"
    assert load_run(out).predict_proba(np.zeros((2, 32, 32), np.uint8)).shape == (2,)


def test_same_seed_same_weights(data_dir, tmp_path):
    def weights(name):
        train(
            TrainConfig(
                data=str(data_dir),
                out=str(tmp_path / name),
                model="seed_cnn",
                epochs=1,
                batch_size=16,
                seed=3,
            ),
            progress=False,
        )
        return load_file(str(tmp_path / name / "model.safetensors"))

    a, b = weights("a"), weights("b")
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_bad_training_options(data_dir, tmp_path):
    with pytest.raises(UserError, match="--imbalance"):
        train(TrainConfig(data=str(data_dir), out=str(tmp_path), imbalance="both"))
    with pytest.raises(UserError, match="unknown model 'resnet181'"):
        train(
            TrainConfig(data=str(data_dir), out=str(tmp_path), model="resnet181", epochs=1),
            progress=False,
        )


def test_training_ends_calibrated_and_predict_uses_it(run_dir, data_dir, tmp_path):
    cal = json.loads((run_dir / "calibration.json").read_text())
    assert cal["temperature"] > 0 and cal["policy"] == "youden"
    assert set(cal["thresholds_by_policy"]) == {"youden", "f1", "cost", "sensitivity"}
    assert cal["validation"]["after"]["nll"] <= cal["validation"]["before"]["nll"] + 1e-9
    loaded = load_run(run_dir)
    assert loaded.threshold == cal["threshold"] and loaded.temperature == cal["temperature"]
    raw = load_run(run_dir, use_calibration=False)
    x = open_cache(data_dir).images[:5]
    z = raw.predict_logits(x)
    np.testing.assert_allclose(
        loaded.predict_proba(x), 1 / (1 + np.exp(-z / cal["temperature"])), rtol=1e-6
    )


def test_calibrate_policies_and_stale_calibration(run_dir, data_dir, tmp_path):
    import shutil

    from pneumoscope.evaluation.calibration import calibrate

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    c = calibrate(run, data_dir, policy="sensitivity", target_sensitivity=0.99)
    assert c.validation_.at_threshold["sensitivity"] >= 0.99
    with pytest.raises(UserError, match="--policy"):
        calibrate(run, data_dir, policy="magic")
    from safetensors.torch import save_file

    state = load_file(str(run / "model.safetensors"))  # retrained weights: same shapes
    save_file(
        {k: v + 1 if v.is_floating_point() else v for k, v in state.items()},
        str(run / "model.safetensors"),
    )
    with pytest.raises(UserError, match="other weights"):
        load_run(run)


def test_threshold_tta_on_augmented_validation_copies(run_dir, data_dir, tmp_path):
    import shutil

    from pneumoscope.evaluation.calibration import augmented_logits, calibrate

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    plain = json.loads((run / "calibration.json").read_text())
    c = calibrate(run, data_dir, threshold_tta=3, threshold_tta_seed=7)
    n_val = c.validation_.n
    tv = c.threshold_tta_
    assert tv.copies == 3 and tv.n_scored == 4 * n_val and 0 <= tv.copies_auroc <= 1
    assert tv.augment == json.loads((run / "model.json").read_text())["training"]["augment"]
    # the temperature is fitted on the plain images only; the same seed gives the same copies
    assert c.temperature_ == pytest.approx(plain["temperature"], rel=1e-9)
    again = calibrate(run, data_dir, threshold_tta=3, threshold_tta_seed=7)
    assert again.threshold_ == c.threshold_
    assert "3 augmented copies" in load_run(run).threshold_policy
    # without threshold_tta, calibrate takes the run's training setting from its card
    card_path = run / "model.json"
    card = json.loads(card_path.read_text())
    assert card["training"]["threshold_tta"] == 0 and "threshold_views" not in card["training"]
    card["training"]["threshold_tta"] = 2
    card_path.write_text(json.dumps(card))
    assert calibrate(run, data_dir).threshold_tta_.n_scored == 3 * n_val
    # a card from before the rename says threshold_views: the same setting
    card["training"]["threshold_views"] = card["training"].pop("threshold_tta")
    card_path.write_text(json.dumps(card))
    assert calibrate(run, data_dir).threshold_tta_.n_scored == 3 * n_val
    # copies under an identity augmentation are the plain predictions
    loaded = load_run(run, use_calibration=False)
    loaded.card.training.augment = {
        k: 0.0 for k in ("rotation", "zoom", "shift", "brightness", "contrast")
    }
    cache = open_cache(data_dir)
    rows = cache.split("val")["index"].to_numpy()
    z = augmented_logits(loaded, loaded.card.training.augment, cache.images, rows, copies=2)
    np.testing.assert_allclose(z[0], loaded.predict_logits(cache.images, rows=rows), atol=1e-4)
    np.testing.assert_array_equal(z[0], z[1])
    with pytest.raises(UserError, match="--threshold-tta"):
        calibrate(run, data_dir, threshold_tta=-1)


def test_tta_is_how_every_command_scores(run_dir, data_dir, synthetic_source, tmp_path):
    """A run calibrated with test-time augmentation: calibrate fits on the averaged logits, and
    evaluate, predict and the service give each film the same averaged probability."""
    import shutil

    from pneumoscope.data.augment import AugmentConfig
    from pneumoscope.evaluation.calibration import calibrate
    from pneumoscope.model.tta import copy_stack
    from pneumoscope.serving.engine import Engine, Upload

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    c = calibrate(run, data_dir, tta=2)
    assert json.loads((run / "calibration.json").read_text())["tta"]["copies"] == 2
    loaded = load_run(run)
    assert loaded.tta.copies == 2 and "2 augmented copies of it" in loaded.threshold_policy
    # by hand: the mean of the film's logit and its two copies' logits
    cache = open_cache(data_dir)
    test = cache.split("test")
    imgs = cache.images[test["index"].to_numpy()]
    copies = copy_stack(imgs, 2, AugmentConfig.from_dict(loaded.card.training.augment), 0)
    z = (loaded.predict_logits(imgs) + loaded.predict_logits(copies).reshape(-1, 2).sum(1)) / 3
    expect = dict(
        zip(test["path"].map(lambda p: Path(p).name), loaded.proba_from_logits(z), strict=True)
    )
    # calibrate fitted on the averaged validation logits: its AUROC is theirs, by hand
    val = cache.split("val")
    vimgs = cache.images[val["index"].to_numpy()]
    vcopies = copy_stack(vimgs, 2, AugmentConfig.from_dict(loaded.card.training.augment), 0)
    vz = (loaded.predict_logits(vimgs) + loaded.predict_logits(vcopies).reshape(-1, 2).sum(1)) / 3
    assert c.validation_.after["auroc"] == pytest.approx(roc_auc_score(val["label"], vz), abs=1e-9)
    m = evaluate(run, data_dir, "test", out=tmp_path / "ev", n_boot=0)
    ev = pd.read_csv(tmp_path / "ev" / m["per_image"]["csv"])
    for path, prob in zip(ev["path"], ev["probability"], strict=True):
        assert prob == pytest.approx(expect[Path(path).name], abs=1e-6)
    files = sorted((synthetic_source / "test").rglob("*.*"))[:6]
    predict_to_csv(
        run, [str(f) for f in files], tmp_path / "p.csv", allow=("age",)
    )  # synthetic films are nobody's: the population check would refuse them
    pred = pd.read_csv(tmp_path / "p.csv")
    by_name = dict(zip(pred["path"].map(lambda p: Path(p).name), pred["probability"], strict=True))
    served = Engine.load(run, allow=("age",)).predict(
        [Upload(f.read_bytes(), f.name) for f in files]
    )
    for f, s in zip(files, served, strict=True):
        assert by_name[f.name] == pytest.approx(expect[f.name], abs=1e-5)
        assert s.prediction.probability == pytest.approx(by_name[f.name], abs=1e-5)
    # recalibrated with --tta 0, the run scores the plain film again
    calibrate(run, data_dir, tta=0)
    assert load_run(run).tta is None
    assert "tta" not in json.loads((run / "calibration.json").read_text())


def test_evaluate_writes_every_image_and_names_the_most_confident_errors(
    run_dir, data_dir, tmp_path
):
    m = evaluate(run_dir, data_dir, "test", out=tmp_path, n_boot=0)
    df = pd.read_csv(tmp_path / m["per_image"]["csv"])
    cache = open_cache(data_dir)
    test = cache.split("test")
    assert len(df) == m["n"] == len(test)
    assert set(df["path"]) == set(test["path"])
    assert (df["predicted"] == (df["probability"] >= m["threshold"])).all()
    counts = df["outcome"].value_counts().reindex(["TN", "FP", "FN", "TP"], fill_value=0)
    assert m["confusion_matrix"] == [[counts.TN, counts.FP], [counts.FN, counts.TP]]
    assert m["accuracy"] == pytest.approx((df["label"] == df["predicted"]).mean())
    # the named errors are the most confident ones, in order
    for key, outcome, high_first in (
        ("false_positives", "FP", True),
        ("false_negatives", "FN", False),
    ):
        named = [e["probability"] for e in m["per_image"][key]]
        ranked = df[df["outcome"] == outcome]["probability"].sort_values(ascending=not high_first)
        assert named == pytest.approx(ranked.head(len(named)).tolist())
        assert len(named) == min(8, len(ranked))
    page = (tmp_path / "report.html").read_text()
    assert "Most confident errors" in page and m["per_image"]["csv"] in page
    assert "No intervals: evaluated with --bootstrap 0." in page
    n_thumbs = len(m["per_image"]["false_positives"]) + len(m["per_image"]["false_negatives"])
    assert page.count("<div class='thumbs'>") == sum(
        bool(m["per_image"][k]) for k in ("false_positives", "false_negatives")
    )
    for e in m["per_image"]["false_positives"] + m["per_image"]["false_negatives"]:
        assert f"{Path(e['path']).name}: p = {e['probability']:.3f}" in page
    assert n_thumbs == 0 or "data:image/png;base64," in page


def test_per_image_outcomes_and_worst_errors_on_known_scores():
    from pneumoscope.evaluation.evaluate import per_image, worst_errors

    rows = pd.DataFrame({"index": [7, 3, 5, 1, 9, 4], "path": list("abcdef")})
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.9, 0.6, 0.1, 0.2, 0.05, 0.7])
    df = per_image(rows, y, p, threshold=0.5)
    assert df["outcome"].tolist() == ["FP", "FP", "TN", "FN", "FN", "TP"]
    w = worst_errors(df, n=1)
    assert [e["path"] for e in w["false_positives"]] == ["a"]
    assert [e["path"] for e in w["false_negatives"]] == ["e"]
    assert w["false_positives"][0]["index"] == 7


def test_evaluate_report_and_compare(run_dir, data_dir, tmp_path):
    from pneumoscope.evaluation.compare import compare

    m = evaluate(run_dir, data_dir, "test", n_boot=200)  # into the run, where compare reads
    for k in ("auroc", "auprc", "balanced_accuracy", "ppv", "npv", "brier", "ece"):
        assert k in m and k in m["ci"]
        lo, hi = m["ci"][k]
        assert lo <= m[k] <= hi or np.isnan(lo)
    assert m["bootstrap"]["resampling_unit"] == "group"  # patients joined with their copies
    assert set(m["operating_points"]) == {"youden", "f1", "cost", "sensitivity"}
    for png in ("reliability.png", "probability_histograms.png"):
        assert (run_dir / png).stat().st_size > 1000
    page = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page  # self-contained
    for text in ("not a medical device", "95% CI", "Limitations", "Operating points"):
        assert text.lower() in page.lower(), text
    rows = compare([run_dir], tmp_path / "cmp.md")
    assert rows[0]["run"] == run_dir.name
    md = (tmp_path / "cmp.md").read_text()
    assert md.startswith(f"|  | {run_dir.name} |") and f"{m['auroc']:.3f}" in md
    assert "| auroc |" in md
