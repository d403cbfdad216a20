#!/usr/bin/env bash
# The one command that sets up and runs every test: formatting, lints, unit tests and the
# end-to-end tests through real FUSE mounts against real S3 servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --with-tests
# pyenv shims and pip's user bin dir, where moto_server may land.
export PATH="$PATH:$HOME/.local/bin"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
cargo bench --workspace --no-run
