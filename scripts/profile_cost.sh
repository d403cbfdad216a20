#!/usr/bin/env bash
# Where each CPU's time went in the cold cost cells: one modelfs-only cost run of the bench at
# MIB MiB under a system-wide profile (`perf record -a`), then, for each measured window, the
# share of samples per CPU and thread, and the endpoint's top kernel symbols. The endpoint
# runs on CPU 0, the daemon and the reader on CPU 1: a window where the endpoint's threads
# take most of CPU 0 measured the endpoint (the cost table's "endpoint busy" column says the
# same without a profile). Needs root and perf (Debian's linux-perf).
#
#   sudo scripts/profile_cost.sh          # MIB=8192 OUT=target/profile TOP=8 (lines per list) FREQ=99 (Hz)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${MIB:-8192}
out=${OUT:-target/profile}
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }

perf record -F "${FREQ:-99}" -a -g -k CLOCK_REALTIME -o "$out/perf.data" >/dev/null 2>"$out/perf.err" &
perf_pid=$!
trap 'kill -INT "$perf_pid" 2>/dev/null || true' EXIT
AWS_EC2_METADATA_DISABLED=true MODELFS_BENCH_MARKS=1 MODELFS_BENCH_ONLY=cost \
    MODELFS_BENCH_COST_MIB="$mib" MODELFS_BENCH_SYSTEMS=modelfs \
    MODELFS_BENCH_JSON="$out/cost.json" cargo bench --bench mounts >"$out/bench.out" 2>"$out/bench.err"
kill -INT "$perf_pid"
wait "$perf_pid" || true
trap - EXIT

report() {
    perf report -i "$out/perf.data" --time "$1" --no-children -g none --stdio "${@:2}" 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -"${TOP:-8}" || true
}
workloads=$(python3 -c 'import json,sys; [print(c["workload"], round(c["seconds"], 2)) for c in json.load(open(sys.argv[1]))["cases"] if "seconds" in c]' "$out/cost.json")
# The unmeasured link-limit warm-up reports a window too: pair the workloads with the last ones.
paste <(echo "$workloads") <(grep 'measured window' "$out/bench.err" | awk '{print $3 "," $4}' |
    tail -n "$(echo "$workloads" | wc -l)") |
while read -r workload seconds window; do
    echo "== $workload: $seconds s"
    echo "-- samples by CPU and thread"
    report "$window" --sort cpu,comm
    for cpu in 0 1; do
        echo "-- CPU $cpu's top symbols"
        report "$window" --cpu "$cpu" --sort comm,sym
    done
done
