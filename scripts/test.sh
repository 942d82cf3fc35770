#!/usr/bin/env bash
# Set up (if needed), lint, check the import layers, and run the whole test suite.
# Extra arguments go to pytest.
# The real-data tests read ../shared/data beside the repository and fail if it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
# The browser test drives Debian's Chromium headless through Playwright (no browser download).
if ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing chromium for the browser test (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "error: the browser test needs Chromium at /usr/bin/chromium: sudo apt-get install chromium" >&2
    exit 2
  fi
fi
cd "$root"
.venv/bin/ruff check src tests bench
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
