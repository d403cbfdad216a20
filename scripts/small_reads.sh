#!/usr/bin/env bash
# What a read's size costs on a cached-mode open (no passthrough: reads reach the daemon, past
# the mount's page cache): a MIB MiB object on moto (loopback), read once to fill the cache,
# then read with dd at each block size, and with the tools that buffer for themselves. Needs
# root (FUSE), curl and moto_server (scripts/setup.sh --with-tests installs it).
#
#   sudo scripts/small_reads.sh          # MIB=64 PORT=50123
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${MIB:-64}
port=${PORT:-50123}
endpoint="http://127.0.0.1:$port"
work=$(mktemp -d)
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
cargo build --release --quiet
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
cleanup() {
    ./target/release/modelfs unmount "$work/mnt" 2>/dev/null || true
    kill "$moto" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do
    curl -s "$endpoint" >/dev/null && break
    sleep 0.2
done
head -c $((mib << 20)) /dev/urandom >"$work/object"
curl -sf -X PUT "$endpoint/models" >/dev/null
curl -sf -T "$work/object" "$endpoint/models/m/object" >/dev/null
mkdir -p "$work/mnt" "$work/cache"
./target/release/modelfs mount s3://models/m "$work/mnt" --endpoint-url "$endpoint" \
    --force-path-style --cache-dir "$work/cache" --no-passthrough
file="$work/mnt/object"
cmp "$file" "$work/object"
timed() {
    local seconds
    seconds=$( { TIMEFORMAT=%R; time "${@:2}" >/dev/null; } 2>&1 )
    awk -v what="$1" -v s="$seconds" -v mib="$mib" \
        'BEGIN { printf "%-28s %6.2f s  %7.0f MB/s\n", what, s, mib * 1.048576 / s }'
}
for bs in 4k 64k 1M; do
    timed "dd bs=$bs" dd if="$file" of=/dev/null bs="$bs" status=none
done
timed "python f.read(4096)" python3 -c \
    "f = open('$file', 'rb')
while f.read(4096): pass"
timed "sha256sum" sha256sum "$file"
timed "cat" cat "$file"
