#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 and venv from Debian's packages alone,
# for machines that can reach the Debian mirror but no container registry (this project's
# CI): debootstrap into a folder, trimmed, then `podman import`. deploy/Containerfile
# builds on it with --build-arg BASE=NAME. Any other base with python3 >= 3.10 and venv
# works too (docs/deploy.md, "The container image").
#   bash scripts/build_base_image.sh localhost/pneumoscope-base:bookworm
# Does nothing when NAME already exists (FORCE=1 builds it again). Needs root, debootstrap
# and podman; DEBIAN_MIRROR overrides http://deb.debian.org/debian.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # debootstrap, for a root whose PATH lacks them
name="${1:?usage: build_base_image.sh IMAGE_NAME}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"
for tool in podman debootstrap; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool is missing: sudo apt-get install podman debootstrap runc" >&2
    exit 2
  fi
done
if [[ -z "${FORCE:-}" ]] && podman image exists "$name"; then
  echo "base image $name exists" >&2
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "error: debootstrap needs root (run this script as root or with sudo)" >&2
  exit 2
fi
dir="$(mktemp -d "${TMPDIR:-/var/tmp}/pneumoscope-base.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
echo "debootstrap $suite from $mirror (a minute or two)" >&2
# minbase: essential packages and apt only. python3-venv brings ensurepip's wheels (pip,
# setuptools); ca-certificates lets pip and apt in a later stage reach HTTPS mirrors.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$dir" "$mirror" >"$dir.log" 2>&1 || {
  tail -20 "$dir.log" >&2
  rm -f "$dir.log"
  exit 1
}
rm -f "$dir.log"
# What no service needs: downloaded .debs, package lists (apt-get update fetches them
# again), documentation, manuals, translations.
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
  "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
  "$dir"/usr/share/locale/* "$dir"/var/log/*.log "$dir"/var/cache/debconf/*-old
echo "deb $mirror $suite main" >"$dir/etc/apt/sources.list"
tar --numeric-owner -C "$dir" -c . | podman import --quiet \
  --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV=LANG=C.UTF-8' \
  --change 'CMD=["/bin/bash"]' \
  --message "debootstrap --variant=minbase $suite (python3, python3-venv)" \
  - "$name" >/dev/null
echo "base image $name built" >&2
