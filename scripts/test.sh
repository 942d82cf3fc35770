#!/usr/bin/env bash
# Set up (if needed), lint, check the import layers, and run the test suite.
#   bash scripts/test.sh            everything (what CI runs): about 20 minutes on 2 cores
#   bash scripts/test.sh --quick    the edit-test loop: tests not marked slow (no training,
#                                   no servers, clusters, browsers or PACS), under 3 minutes
# Other arguments go to pytest (bash scripts/test.sh --quick tests/data -k dicom).
# The real-data tests read ../shared/data beside the repository and fail if it is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quick=0
args=()
for a in "$@"; do
  if [[ "$a" == "--quick" ]]; then quick=1; else args+=("$a"); fi
done
bash "$root/scripts/setup_env.sh"
# Debian programs the slow tests start for real: Chromium (the browser test, driven headless
# through Playwright, no browser download), dciodvfy from dicom3tools (validates the DICOM
# files pneumoscope writes), Orthanc with its DICOMweb plugin (the PACS round trip) and
# HAProxy with openssl (deploy/haproxy.cfg in front of two services, on a self-signed
# certificate), Podman, runc and debootstrap (deploy/Containerfile built on a base image made
# from Debian's packages, then run read-only; without their recommends, which bring a
# systemd user session). The quick tier needs dciodvfy only.
need=()
bare=()  # installed without recommends
command -v dciodvfy >/dev/null || need+=(dicom3tools)
if ((!quick)); then
  command -v chromium >/dev/null || need+=(chromium)
  command -v Orthanc >/dev/null || need+=(orthanc)
  [[ -n "$(ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* 2>/dev/null)" ]] || need+=(orthanc-dicomweb)
  [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
  command -v openssl >/dev/null || need+=(openssl)
  command -v podman >/dev/null || bare+=(podman)
  [[ -x /usr/sbin/runc ]] || command -v runc >/dev/null || bare+=(runc)
  [[ -x /usr/sbin/debootstrap ]] || bare+=(debootstrap)
fi
if ((${#need[@]} + ${#bare[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} ${bare[*]} for the tests (apt-get)" >&2
    apt-get update -qq
    export DEBIAN_FRONTEND=noninteractive
    if ((${#need[@]})); then apt-get install -y -qq "${need[@]}" >/dev/null; fi
    if ((${#bare[@]})); then
      apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
    fi
  else
    echo "error: the tests need Debian packages: sudo apt-get install ${need[*]} ${bare[*]}" >&2
    exit 2
  fi
fi
cd "$root"
.venv/bin/ruff check src tests bench experiments
.venv/bin/lint-imports
if ((quick)); then
  .venv/bin/python -m pytest -m "not slow" ${args[@]+"${args[@]}"}
else
  .venv/bin/python -m pytest ${args[@]+"${args[@]}"}
fi
