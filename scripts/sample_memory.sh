#!/usr/bin/env bash
# Samples memory, disk and reclaim once a second until stopped, one line per second: free and
# page-cache MiB, dirty and writeback MiB, disk reads and writes in MB/s, and the pages
# reclaimed by kswapd and directly in MiB/s. Run it beside a benchmark to see where a large
# cell's time goes (the endpoint reading from disk, writeback, reclaim):
#
#   scripts/sample_memory.sh vda > /tmp/samples.txt &   # the disk under the workdir
#   MODELFS_BENCH_ONLY=cost MODELFS_BENCH_COST_MIB=8192 cargo bench --bench mounts
#   kill %1
set -euo pipefail
disk=${1:-vda}

meminfo() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' /proc/meminfo; }
sectors() { awk -v d="$disk" '$3 == d { print $6, $10 }' /proc/diskstats; }
reclaimed() { awk '$1 == "pgsteal_kswapd" { k = $2 } $1 == "pgsteal_direct" { d = $2 } END { print k + 0, d + 0 }' /proc/vmstat; }

printf '%-10s %8s %8s %7s %7s %8s %8s %9s %9s\n' time free_mib cache_mib dirty wb rd_mb/s wr_mb/s kswapd/s direct/s
read -r rd0 wr0 < <(sectors)
read -r ks0 dr0 < <(reclaimed)
while sleep 1; do
    read -r rd wr < <(sectors)
    read -r ks dr < <(reclaimed)
    printf '%-10s %8d %8d %7d %7d %8d %8d %9d %9d\n' "$(date +%T)" \
        "$(meminfo MemFree)" "$(meminfo Cached)" "$(meminfo Dirty)" "$(meminfo Writeback)" \
        $(((rd - rd0) * 512 / 1000000)) $(((wr - wr0) * 512 / 1000000)) \
        $(((ks - ks0) * 4 / 1024)) $(((dr - dr0) * 4 / 1024))
    rd0=$rd wr0=$wr ks0=$ks dr0=$dr
done
