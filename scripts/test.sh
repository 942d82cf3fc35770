#!/usr/bin/env bash
# Set up (if needed), lint, check the import layers, and run the whole test suite.
# Extra arguments go to pytest.
# The real-data tests read ../shared/data beside the repository and fail if it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
.venv/bin/ruff check src tests bench
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
