"""`pneumoscope evaluate`: metrics and plots of a run on one split of a prepared cache."""

from __future__ import annotations

from pathlib import Path

from . import plots
from .cache import open_cache
from .errors import UserError
from .io_utils import write_json_atomic
from .metrics import binary_metrics
from .runs import load_run


def evaluate(
    run: str | Path, data: str | Path, split: str = "test", out: str | Path | None = None
) -> dict:
    loaded = load_run(run)
    cache = open_cache(data)
    if cache.preprocess != loaded.preprocess:
        raise UserError(
            f"{data} was prepared with {cache.preprocess.to_dict()} but the run expects "
            f"{loaded.preprocess.to_dict()}; prepare the data again with the run's --img-size "
            "and --clahe settings"
        )
    rows = cache.split(split)
    if rows["label"].nunique() < 2:
        raise UserError(f"split '{split}' of {data} holds one class only: AUROC is undefined")
    idx = rows["index"].to_numpy()
    y = rows["label"].to_numpy()
    prob = loaded.predict_proba(cache.images, rows=idx)
    m = binary_metrics(y, prob, loaded.threshold)
    out_dir = Path(out).expanduser() if out else loaded.root
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(loaded.root),
        "data": str(Path(data).expanduser().resolve()),
        "split": split,
        "threshold_policy": loaded.card.get("threshold_policy", "0.5"),
        **m,
    }
    write_json_atomic(out_dir / "metrics.json", result)
    plots.confusion(
        m["confusion_matrix"],
        out_dir / "confusion_matrix.png",
        f"{split}: threshold {loaded.threshold:.3f}",
    )
    plots.roc(y, prob, m["auroc"], loaded.threshold, out_dir / "roc_curve.png")
    plots.pr(y, prob, out_dir / "pr_curve.png")
    return result
