"""Export a trained population check to ONNX and check it gives torch's probabilities.

Writes ``--work``/runs/NAME/popnet.onnx (input ``x``: N x 1 x S x S float, normalised as
``model.to_input``; output ``logit``: N) and compares ONNX Runtime's probabilities with
torch's on the official pediatric test films and the adult films (cached squares), and
whether any film changes side of the run's threshold (``results_NAME.json``).

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/population_check/export.py --name main
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import build, to_input  # noqa: E402
from train import Films, score  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--name", default="main")
    ap.add_argument("--work", type=Path, default=Path("/work/pop_work"))
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = args.work / "runs" / args.name
    model = build("popnet")
    model.load_state_dict(load_file(str(run / "popnet.safetensors")))
    model.eval()
    path = run / "popnet.onnx"
    torch.onnx.export(
        model,
        torch.zeros(1, 1, args.size, args.size),
        str(path),
        input_names=["x"],
        output_names=["logit"],
        dynamic_axes={"x": {0: "n"}, "logit": {0: "n"}},
        dynamo=False,
    )
    f = Films(args.work, args.size)
    idx = np.where(f.df["set"].isin(["ped_test", "adult"]))[0]
    p_torch = score(model, f.pre, idx)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = to_input(torch.from_numpy(np.ascontiguousarray(f.pre[idx]))).numpy()
    p_onnx = 1 / (1 + np.exp(-sess.run(None, {"x": x})[0]))
    t = json.loads((HERE / f"results_{args.name}.json").read_text())["threshold"]
    diff = float(np.abs(p_onnx - p_torch).max())
    changed = int(((p_onnx > t) != (p_torch > t)).sum())
    print(
        f"{path} ({path.stat().st_size / 1e6:.2f} MB); "
        f"safetensors {(run / 'popnet.safetensors').stat().st_size / 1e6:.2f} MB; "
        f"max |p_onnx - p_torch| over {len(idx)} films = {diff:.2e}; "
        f"films changing side of t = {changed}"
    )


if __name__ == "__main__":
    main()
