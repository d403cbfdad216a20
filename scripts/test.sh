#!/usr/bin/env bash
# The one command that sets up and runs every test: formatting, lints, unit tests and the
# end-to-end tests through real FUSE mounts against real S3 servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --with-tests

# The build (target/) and the objects the tests seed (TMPDIR) peak near 9 GiB from a clean
# checkout: say so before a full disk fails the tests one by one.
for dir in . "${TMPDIR:-/tmp}"; do
    free_gib=$(df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1048576) }')
    if (( free_gib < 12 )); then
        echo "warning: $(realpath "$dir") has ${free_gib} GiB free; the suite needs about 9 GiB" >&2
    fi
done
# pyenv shims and pip's user bin dir, where moto_server may land.
export PATH="$PATH:$HOME/.local/bin"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
cargo bench --workspace --no-run
