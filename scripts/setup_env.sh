#!/usr/bin/env bash
# Create .venv and install pneumoscope with its dev tools; a second call is a no-op
# until pyproject.toml changes. Uses PyPI's torch (with CUDA libraries, which also run
# on CPU): the CPU-only torch builds do not match PyPI's torchvision, which timm needs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PNEUMOSCOPE_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.pneumoscope-installed"
if [[ -f "$stamp" && "$stamp" -nt "$root/pyproject.toml" ]]; then
  exit 0
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: pneumoscope needs Python >= 3.10 ($py is $("$py" -V 2>&1)); set PYTHON=python3.11" >&2
  exit 2
fi
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
echo "installing pneumoscope into $venv (first time: a few minutes, torch is large)" >&2
"$venv/bin/python" -m pip install --disable-pip-version-check -qq -e "$root[train,serve,dev,ray]"
touch "$stamp"
