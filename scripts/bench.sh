#!/usr/bin/env bash
# Runs the benchmark suite (issues 5, 22, 24) and writes docs/benchmarks.md and the Benchmarks
# section of README.md. Needs root (FUSE mounts, drop_caches) and time: about 50 min on 2 cores
# at the default sizes (the bench prints its estimate at the start; the report gives the
# measured time). Free disk in the workdir: ~14 GiB for the store and local copies, plus the
# 8 GiB model's cache while its cells run (those cells are skipped, with a line in the report
# saying so, when the room is not there).
#
#   sudo scripts/bench.sh
#
# The endpoint runs on the first half of the CPUs, the daemons and the readers on the other
# (on 2 cores: CPU 0 and CPU 1), set with sched_setaffinity by the bench itself.
#
# Environment (all optional):
#   MODELFS_BENCH_MODEL_MIB=2048        model of the workload tables
#   MODELFS_BENCH_COST_MIB=2048,8192    sizes for the "how cost grows" section ("" to skip);
#                                       cells the tables measured at the same size are not rerun
#   MODELFS_BENCH_FLEET_MIB=512         model 16 mounts cold-load at once (fleet section)
#   MODELFS_BENCH_DEADLINE_S=60         a run still going after this is cut (reported as "> N s")
#   MODELFS_BENCH_REPEAT=3              runs per workload cell; the report shows the median
#   MODELFS_BENCH_LATENCY_MS=20 MODELFS_BENCH_PER_RESPONSE_MIBPS=90 MODELFS_BENCH_AGGREGATE_MIBPS=0
#   MODELFS_BENCH_WORKDIR=/tmp/modelfs-bench  (the seeded store is kept and reused)
#   MOUNT_S3=/path/to/binary            use this mountpoint-s3 wrapper instead of building one
#   MODELFS_BENCH_ONLY=mmap_load,cost   run a subset (the report then only has those); the
#                                       caches smaller than the models: small_cache,alternate;
#                                       request economics: fleet
#   MODELFS_BENCH_SYSTEMS=modelfs,"link limit"  only these systems (quick checks while tuning)
#   MODELFS_BENCH_LOG=debug              modelfs log level (logs in the workdir)
#   MODELFS_BENCH_HOLD_S=60              keep each modelfs mount that long after measuring it
#   MODELFS_BENCH_MARKS=1                print each measured run's start and end (Unix time) to stderr
#
# Beside it: scripts/sample_memory.sh samples memory, disk and reclaim each second while a run
# goes; scripts/page_cost.sh measures what this machine charges for fresh memory.
set -euo pipefail
cd "$(dirname "$0")/.."
export AWS_EC2_METADATA_DISABLED=true

echo "== building modelfs (release)"
cargo build --release --bin modelfs

if [[ -z "${MOUNT_S3:-}" ]]; then
  echo "== building the mountpoint-s3 wrapper (benches/mountpoint: mountpoint-s3-fs 0.10.0)"
  if ! command -v cmake >/dev/null || ! command -v clang >/dev/null || ! pkg-config --exists fuse3 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq cmake clang libclang-dev libfuse3-dev pkg-config || true
  fi
  if ! (cd benches/mountpoint && cargo build --release); then
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! mountpoint-s3 could NOT be built: its rows will be reported as NOT MEASURED  !!!" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  fi
fi

mkdir -p target/bench
echo "== running the suite (results: target/bench/results.json)"
started=$SECONDS
MODELFS_BENCH_JSON="$PWD/target/bench/results.json" cargo bench --bench mounts
echo "== the suite took $(( (SECONDS - started) / 60 )) min"

echo "== writing docs/benchmarks.md and README.md's Benchmarks section"
python3 scripts/bench_report.py target/bench/results.json docs/benchmarks.md README.md
echo "done: docs/benchmarks.md"
