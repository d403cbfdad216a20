#!/usr/bin/env bash
# The one command that shows modelfs working from a fresh clone: installs FUSE, builds, and
# runs `modelfs demo` (a local S3 endpoint with generated models, mounted and loaded).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --bin modelfs
exec ./target/release/modelfs demo "$@"
