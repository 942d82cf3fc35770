#!/usr/bin/env bash
# The whole job: set up, get the data, prepare, train, evaluate, predict.
#   bash scripts/quickstart.sh                      # fetches the pediatric set (1.2 GB, once)
#   bash scripts/quickstart.sh IMAGE_FOLDER [WORK_FOLDER]
#   QUICK=1 bash scripts/quickstart.sh              # PneumoniaMNIST at 64 px: a few minutes
# The data: IMAGE_FOLDER, else $PNEUMOSCOPE_DATA, else a download (`pneumoscope data download
# pediatric`, or `pneumoniamnist` with QUICK=1) into ~/.cache/pneumoscope ($PNEUMOSCOPE_CACHE).
# IMAGE_FOLDER holds NORMAL/ and PNEUMONIA/, or train|test/ holding them (Kaggle layout).
# Environment overrides: IMG_SIZE, MODEL, EPOCHS, MAX_MINUTES, EVAL_SIZE (defaults: the fast-cpu preset's,
# src/pneumoscope/presets/train/fast-cpu.yaml, shipped in the package; with QUICK=1: 64 px,
# 6 epochs, 5 minutes at most). PNEUMOSCOPE_NO_SETUP=1 skips scripts/setup_env.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${1:-${PNEUMOSCOPE_DATA:-}}"
work="${2:-$root/work/quickstart}"
if [[ -n "$src" && ! -e "$src" ]]; then
  echo "error: image folder not found: $src (give the folder that holds NORMAL/ and PNEUMONIA/, or train/ and test/)" >&2
  exit 2
fi
if [[ "${QUICK:-0}" == 1 ]]; then
  IMG_SIZE="${IMG_SIZE:-64}" EPOCHS="${EPOCHS:-6}" MAX_MINUTES="${MAX_MINUTES:-5}"
fi
[[ "${PNEUMOSCOPE_NO_SETUP:-0}" == 1 ]] || bash "$root/scripts/setup_env.sh"
ps="$root/.venv/bin/pneumoscope"
py="$root/.venv/bin/python"
# No folder: download one (once; later runs find it in the cache). Offline, this stops here
# with one line saying what to download by hand and where to put it.
if [[ -z "$src" && "${QUICK:-0}" == 1 ]]; then
  src="$("$ps" data download pneumoniamnist --size "$IMG_SIZE")"
elif [[ -z "$src" ]]; then
  src="$("$ps" data download pediatric)"
fi
set -x
# The cache is prepared at the preset's own image size, read from the preset, so the two
# cannot drift apart when the recipe changes; on a CPU without bf16 units, at the size of
# the float32 recipe (training/precision.py, FLOAT32_FAST_CPU), which trains with it.
{ set +x; } 2>/dev/null
# EVAL_SIZE: score the trained run at that size (`calibrate --refit-size` on a second cache);
# the recipe's own when it has one and IMG_SIZE/EPOCHS are not overridden.
read -r preset_size preset_epochs preset_eval < <("$py" -c 'import sys; from pneumoscope.training.precision import machine_fast_cpu_recipe as r; x, note = r(); print(x["img_size"], x["epochs"], x["eval_size"] or 0); note and print("note:", note, file=sys.stderr)')
if [[ -z "${IMG_SIZE:-}" && -z "${EPOCHS:-}" ]]; then
  IMG_SIZE="$preset_size" EPOCHS="$preset_epochs" EVAL_SIZE="${EVAL_SIZE:-$preset_eval}"
fi
size="${IMG_SIZE:-$preset_size}" eval_size="${EVAL_SIZE:-0}"
[[ "$eval_size" == "$size" ]] && eval_size=0
set -x
"$ps" data prepare --source "$src" --out "$work/data" --img-size "$size"
# The fast-cpu preset (pneumoscope/presets/train/fast-cpu.yaml): ResNet-18 from scratch, at
# most 30 minutes on 2 CPU cores. MODEL / EPOCHS / MAX_MINUTES override it.
extra=()
[[ -n "${IMG_SIZE:-}" ]] && extra+=(--img-size "$IMG_SIZE")
[[ -n "${MODEL:-}" ]] && extra+=(--model "$MODEL")
[[ -n "${EPOCHS:-}" ]] && extra+=(--epochs "$EPOCHS")
[[ -n "${MAX_MINUTES:-}" ]] && extra+=(--max-minutes "$MAX_MINUTES")
"$ps" train --config fast-cpu --data "$work/data" --out "$work/run" --no-progress "${extra[@]}"
data="$work/data"
if [[ "$eval_size" != 0 ]]; then
  # The same films at the evaluation size; the run is refitted and recalibrated there.
  data="$work/data$eval_size"
  "$ps" data prepare --source "$src" --out "$data" --img-size "$eval_size"
  "$ps" calibrate --run "$work/run" --data "$data" --refit-size
fi
"$ps" evaluate --run "$work/run" --data "$data" --split test
# Predict on the source's test folder; a source without one (a MedMNIST file) gives the
# folder of its test images, as the manifest lists them.
target="$src"
for d in "$src"/test "$src"/*/test; do [[ -d "$d" ]] && target="$d" && break; done
if [[ "$target" == "$src" && ! -d "$src/NORMAL" && ! -d "$src/PNEUMONIA" ]]; then
  target="$("$py" -c 'import os, sys, pandas as pd; m = pd.read_csv(sys.argv[1]); print(os.path.commonpath(m.loc[m["split"] == "test", "path"].tolist()))' "$work/data/manifest.csv")"
fi
"$ps" predict --run "$work/run" "$target" --out "$work/predictions.csv" || \
  echo "some inputs could not be read: see the error rows in $work/predictions.csv" >&2
set +x
echo "done: run in $work/run (model.json, metrics.json, plots), predictions in $work/predictions.csv"
echo "report: $work/run/report.html (evaluation) and $work/data/data_report.md (data, licences)"
echo "web page: $ps serve --run $work/run   (then open http://127.0.0.1:8000)"
