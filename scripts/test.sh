#!/usr/bin/env bash
# Set up (if needed), lint, check the import layers, and run the whole test suite.
# Extra arguments go to pytest.
# The real-data tests read ../shared/data beside the repository and fail if it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
# Debian programs the tests start for real: Chromium (the browser test, driven headless
# through Playwright, no browser download), dciodvfy from dicom3tools (validates the DICOM
# files pneumoscope writes) and Orthanc with its DICOMweb plugin (the PACS round trip).
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v Orthanc >/dev/null || need+=(orthanc)
[[ -n "$(ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* 2>/dev/null)" ]] || need+=(orthanc-dicomweb)
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} for the tests (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "error: the tests need Debian packages: sudo apt-get install ${need[*]}" >&2
    exit 2
  fi
fi
cd "$root"
.venv/bin/ruff check src tests bench
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
