#!/usr/bin/env bash
# The whole job: set up, get the data, prepare, train, evaluate, predict.
#   bash scripts/quickstart.sh                      # fetches the pediatric set (1.2 GB, once)
#   bash scripts/quickstart.sh IMAGE_FOLDER [WORK_FOLDER]
#   QUICK=1 bash scripts/quickstart.sh              # PneumoniaMNIST at 64 px: a few minutes
# The data: IMAGE_FOLDER, else $PNEUMOSCOPE_DATA, else a download (`pneumoscope data download
# pediatric`, or `pneumoniamnist` with QUICK=1) into ~/.cache/pneumoscope ($PNEUMOSCOPE_CACHE).
# IMAGE_FOLDER holds NORMAL/ and PNEUMONIA/, or train|test/ holding them (Kaggle layout).
# Environment overrides: IMG_SIZE, MODEL, EPOCHS, MAX_MINUTES (defaults: the fast-cpu preset's,
# src/pneumoscope/presets/train/fast-cpu.yaml, shipped in the package, or on a CPU without
# bf16 units fast-cpu-fp32.yaml's; with QUICK=1: 64 px, 6 epochs, 5 minutes at most).
# PNEUMOSCOPE_NO_SETUP=1 skips scripts/setup_env.sh.
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
# The preset: fast-cpu, or fast-cpu-fp32 on a CPU without bf16 units (it says so); with
# IMG_SIZE or EPOCHS given, fast-cpu with them. The cache is prepared at the preset's own
# image size, read from the preset file, so the two cannot drift apart.
preset=fast-cpu
if [[ -z "${IMG_SIZE:-}" && -z "${EPOCHS:-}" ]]; then
  preset="$("$py" -m pneumoscope.training.precision)"
fi
preset_size="$(sed -n 's/^img_size: *\([0-9][0-9]*\).*/\1/p' "$root/src/pneumoscope/presets/train/$preset.yaml")"
size="${IMG_SIZE:-$preset_size}"
set -x
"$ps" data prepare --source "$src" --out "$work/data" --img-size "$size"
# The preset (pneumoscope/presets/train/PRESET.yaml): ResNet-18 from scratch, at most 30
# minutes on 2 CPU cores. IMG_SIZE / MODEL / EPOCHS / MAX_MINUTES override it.
extra=()
[[ -n "${IMG_SIZE:-}" ]] && extra+=(--img-size "$IMG_SIZE")
[[ -n "${MODEL:-}" ]] && extra+=(--model "$MODEL")
[[ -n "${EPOCHS:-}" ]] && extra+=(--epochs "$EPOCHS")
[[ -n "${MAX_MINUTES:-}" ]] && extra+=(--max-minutes "$MAX_MINUTES")
"$ps" train --config "$preset" --data "$work/data" --out "$work/run" --no-progress "${extra[@]}"
"$ps" evaluate --run "$work/run" --data "$work/data" --split test
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
