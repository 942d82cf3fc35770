#!/usr/bin/env bash
# The whole job on an image folder: set up, prepare, train, evaluate, predict.
#   bash scripts/quickstart.sh IMAGE_FOLDER [WORK_FOLDER]
# IMAGE_FOLDER holds NORMAL/ and PNEUMONIA/, or train|test/ holding them (Kaggle layout).
# Environment overrides: IMG_SIZE, MODEL, EPOCHS, MAX_MINUTES (defaults: the fast-cpu preset's,
# src/pneumoscope/presets/train/fast-cpu.yaml, shipped in the package).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/quickstart.sh IMAGE_FOLDER [WORK_FOLDER]" >&2
  exit 2
fi
src="$1"
work="${2:-$root/work/quickstart}"
if [[ ! -d "$src" ]]; then
  echo "error: image folder not found: $src (give the folder that holds NORMAL/ and PNEUMONIA/, or train/ and test/)" >&2
  exit 2
fi
bash "$root/scripts/setup_env.sh"
ps="$root/.venv/bin/pneumoscope"
set -x
# The cache is prepared at the preset's own image size, read from the preset, so the two
# cannot drift apart when the recipe changes.
preset_size="$("$root/.venv/bin/python" -c 'from pneumoscope.core.settings import read_preset; print(read_preset("train", "fast-cpu")["img_size"])')"
"$ps" data prepare --source "$src" --out "$work/data" --img-size "${IMG_SIZE:-$preset_size}"
# The fast-cpu preset (pneumoscope/presets/train/fast-cpu.yaml): ResNet-18 from scratch, at
# most 30 minutes on 2 CPU cores. MODEL / EPOCHS / MAX_MINUTES override it.
extra=()
[[ -n "${IMG_SIZE:-}" ]] && extra+=(--img-size "$IMG_SIZE")
[[ -n "${MODEL:-}" ]] && extra+=(--model "$MODEL")
[[ -n "${EPOCHS:-}" ]] && extra+=(--epochs "$EPOCHS")
[[ -n "${MAX_MINUTES:-}" ]] && extra+=(--max-minutes "$MAX_MINUTES")
"$ps" train --config fast-cpu --data "$work/data" --out "$work/run" --no-progress "${extra[@]}"
"$ps" evaluate --run "$work/run" --data "$work/data" --split test
target="$src"
for d in "$src"/test "$src"/*/test; do [[ -d "$d" ]] && target="$d" && break; done
"$ps" predict --run "$work/run" "$target" --out "$work/predictions.csv" || \
  echo "some inputs could not be read: see the error rows in $work/predictions.csv" >&2
set +x
echo "done: run in $work/run (model.json, metrics.json, plots), predictions in $work/predictions.csv"
