"""`pneumoscope calibrate | evaluate | compare`: threshold, metrics and reports of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app, echo_table
from pneumoscope.core.errors import UserError


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope calibrate --run runs/r18 --data work/data128\n\n"
    "  pneumoscope calibrate --run runs/r18 --data work/data128 --policy sensitivity "
    "--target-sensitivity 0.95\n\n"
    "  pneumoscope calibrate --run runs/r18 --data work/data128 --policy cost --cost-fn 10",
)
def calibrate(
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    data: Path = typer.Option(..., help="Prepared data folder; its val split is used."),
    policy: str = typer.Option(
        "youden", help="Threshold policy: youden | f1 | cost | sensitivity."
    ),
    cost_fn: float = typer.Option(5.0, help="Cost of a missed pneumonia (policy cost)."),
    cost_fp: float = typer.Option(1.0, help="Cost of a false alarm (policy cost)."),
    target_sensitivity: float = typer.Option(
        0.95, help="Minimum sensitivity (policy sensitivity)."
    ),
    threshold_tta: int = typer.Option(
        None,
        help="Also score this many augmented copies of each validation image under the run's "
        "training augmentation (seeded) and choose the threshold on all of them, so it holds "
        "up when field of view, position or exposure vary. The temperature is still fitted on "
        "the plain images. Default: the run's training setting (threshold_tta), else 0.",
    ),
    tta: int = typer.Option(
        None,
        help="Test-time augmentation: score every film as the mean logit of the film and this "
        "many copies under the run's training augmentation (seeded); the temperature and the "
        "threshold are fitted on those scores, and predict, evaluate, explain and serve then "
        "score the same way (K + 1 forward passes a film; 0 = the plain film). Default: the "
        "run's training setting (tta), else 0.",
    ),
    views: int = typer.Option(None, hidden=True),  # before the rename: --threshold-tta
    test_views: int = typer.Option(None, hidden=True),  # before the rename: --tta
    ood: bool = typer.Option(
        True,
        "--ood/--no-ood",
        help="After calibrating, refit the out-of-distribution guard (RUN/ood.json, "
        "ood.safetensors) on DATA's training images, its threshold on validation, as "
        "training does; --no-ood leaves the guard as it is.",
    ),
    ood_method: str = typer.Option(
        "mahalanobis",
        help="The guard's score: mahalanobis (the default, as training fits it) or "
        "mahalanobis+residual (also flags films off the training features' main directions: "
        "about twice the adult films on the reference runs, more in-distribution flags; "
        "docs/commands.md).",
    ),
) -> None:
    """Fit temperature scaling on validation logits, then choose the threshold on the
    calibrated validation probabilities; writes RUN/calibration.json, which predict and
    evaluate read. Then, unless --no-ood, refits the OOD guard as a second step. Training
    already ends with the default (youden) calibration and the guard."""
    from pneumoscope.evaluation.calibration import calibrate as run_cal
    from pneumoscope.model.contract import RunFiles
    from pneumoscope.model.ood import METHODS, fit_ood_guard

    if ood_method not in METHODS:
        raise UserError(f"--ood-method must be one of {', '.join(METHODS)}, got '{ood_method}'")
    c = run_cal(
        run,
        data,
        policy,
        cost_fn,
        cost_fp,
        target_sensitivity,
        threshold_tta=views if threshold_tta is None else threshold_tta,
        tta=test_views if tta is None else tta,
    )
    if ood:
        fit_ood_guard(run, data, method=ood_method)
    _echo_calibration(c, policy, run / RunFiles.CALIBRATION)


# augmented copies this much worse than the films (validation AUROC): Youden's threshold on
# the pooled scores then sits where it trades sensitivity away (experiments/eval_size)
COPIES_GAP = 0.02


def _echo_calibration(c, policy: str, written: Path) -> None:
    """The before/after table, the threshold and any warning of a calibration."""
    v = c.validation_
    echo_table(
        f"validation (n={v.n}), temperature {c.temperature_:.3f}",
        ["", "NLL", "ECE", "Brier", "AUROC"],
        [
            [name, f"{d['nll']:.4f}", f"{d['ece']:.4f}", f"{d['brier']:.4f}", f"{d['auroc']:.4f}"]
            for name, d in (("before", v.before), ("after", v.after))
        ],
    )
    if c.tta_:
        typer.echo(f"every score: {c.tta_.note()} (seed {c.tta_.seed})")
    tv = c.threshold_tta_
    if tv:
        typer.echo(
            f"threshold chosen on {tv.n_scored} scores: the validation images plus "
            f"{tv.copies} augmented copies of each (copies AUROC {tv.copies_auroc:.4f})"
        )
    typer.echo(
        f"threshold {c.threshold_:.4f} ({policy}): validation sensitivity "
        f"{v.at_threshold['sensitivity']:.3f}, specificity "
        f"{v.at_threshold['specificity']:.3f}; written to {written}"
    )
    if c.temperature_warning_:
        typer.echo(f"warning: {c.temperature_warning_}", err=True)
    if tv and tv.copies_auroc < v.after["auroc"] - COPIES_GAP:
        typer.echo(
            f"warning: the augmented copies score much worse than the films (AUROC "
            f"{tv.copies_auroc:.3f} against {v.after['auroc']:.3f}), so a threshold chosen on "
            "both may trade away sensitivity; check the figures above, or calibrate with "
            "--threshold-tta 0",
            err=True,
        )


@app.command(
    epilog="Examples:\n\n  pneumoscope evaluate --run runs/r18 --data work/data128 --split test"
    "\n\n  pneumoscope evaluate --run runs/r18 --data work/data128 --split val --out eval_val"
    "\n\n  pneumoscope evaluate --run runs/r18 --data work/adults128 --split all --out eval_adults",
)
def evaluate(
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    data: Path = typer.Option(..., help="Prepared data folder (same --img-size and CLAHE)."),
    split: str = typer.Option(
        "test",
        help="train | val | test | all. all: every image of DATA, whatever its split, for a "
        "prepared folder the run never trained on (an external set, e.g. adult films "
        "prepared on their own); a warning says when DATA looks like the run's own "
        "training cache.",
    ),
    out: Path = typer.Option(
        None, help="Where to write metrics.json, plots and report.html (default: RUN)."
    ),
    bootstrap: int = typer.Option(1000, help="Bootstrap replicates for 95% intervals (0 = none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    backend: str = typer.Option(
        "torch", help="The model to evaluate: torch | torch-bf16 | onnx | onnx-int8 | openvino."
    ),
) -> None:
    """Metrics with 95% bootstrap intervals (resampling patients), per source and age group
    where known, operating points of every threshold policy, every image's probability and
    outcome (predictions_SPLIT.csv, predictions_all.csv with --split all), plots and
    report.html with the most confident errors."""
    from pneumoscope.evaluation.evaluate import evaluate as run_eval
    from pneumoscope.evaluation.metrics import METRIC_LABELS
    from pneumoscope.model.contract import RunFiles

    runner = None
    if backend != "torch":
        from pneumoscope.inference.predictor import Predictor

        runner = Predictor.from_run(run, backend).runner
    m = run_eval(run, data, split, out, n_boot=bootstrap, seed=seed, runner=runner)
    ci = m.get("ci", {})
    rows = [
        [label, f"{m[k]:.4f}", "" if k not in ci else f"{ci[k][0]:.4f} - {ci[k][1]:.4f}"]
        for k, label in METRIC_LABELS.items()
    ]
    what = "all images" if split == "all" else f"{split} split"
    echo_table(
        f"{what}, n={m['n']} ({m['n_normal']} NORMAL, {m['n_pneumonia']} "
        f"PNEUMONIA), threshold {m['threshold']:.3f}",
        ["metric", "value", "95% CI"],
        rows,
    )
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    typer.echo(
        f"confusion matrix: TN {tn}  FP {fp}  FN {fn}  TP {tp}; "
        f"written to {(out or run) / RunFiles.METRICS} and {RunFiles.REPORT}"
    )
    for warning in m["warnings"]:
        typer.echo(f"warning: {warning}", err=True)


@app.command(
    epilog="Example:\n\n  pneumoscope compare runs/seed_cnn runs/r18 --out compare.md",
)
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders, each evaluated already."),
    out: Path = typer.Option(Path("compare.md"), help="Markdown table to write."),
) -> None:
    """Runs' evaluation metrics side by side (value and 95% CI)."""
    from pneumoscope.evaluation.compare import compare as run_compare
    from pneumoscope.evaluation.compare import transpose

    header, body = transpose(run_compare(runs, out))
    echo_table("runs compared: value (95% CI)", header, body)
    typer.echo(f"written to {out}")
