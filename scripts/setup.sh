#!/usr/bin/env bash
# Installs what modelfs needs to build and mount on Debian/Ubuntu (FUSE 3: fusermount3) and,
# with --with-tests, what the tests need: util-linux tools, systemd-analyze, shellcheck,
# e2fsprogs, and moto's S3 server from PyPI (the second S3 implementation the tests run
# against). Safe to run again.
set -euo pipefail

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
if [ "${1:-}" = "--with-tests" ]; then
  # The EC2 deployment tests: systemd-analyze, shellcheck, mkfs.ext4/blkid, losetup/mountpoint.
  command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
  command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
  command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
  command -v losetup >/dev/null 2>&1 || need_apt+=(mount)
  command -v mountpoint >/dev/null 2>&1 || need_apt+=(util-linux)
fi
if ((${#need_apt[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "${1:-}" = "--with-tests" ] && { ! command -v moto_server >/dev/null 2>&1 \
    || ! python3 -c "import kubernetes_validate, jsonschema, yaml" >/dev/null 2>&1; }; then
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]>=5,<6" "kubernetes-validate==1.37.0" "jsonschema>=4.18,<5" "PyYAML>=6,<7" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "moto[server]>=5,<6" "kubernetes-validate==1.37.0" "jsonschema>=4.18,<5" "PyYAML>=6,<7"
fi

if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (load the fuse module)" >&2; exit 1; }
