#!/usr/bin/env bash
# What this machine charges for memory it has not touched for a while, in seconds per GiB:
# writes GIB GiB into a file in /dev/shm (page allocations, as a cold load's page cache makes)
# after the page cache is dropped and memory sat free IDLE_S seconds, then at once again
# (pages just freed), then after IDLE_S seconds once more. On a VM whose host takes back
# memory the guest leaves free, the first and last cost far more than the second; where
# memory stays backed the three should match. Needs root (drop_caches) and GIB GiB free in
# /dev/shm.
#
#   sudo scripts/page_cost.sh            # GIB=6 IDLE_S=20
set -euo pipefail
gib=${GIB:-6}
idle=${IDLE_S:-20}
file=/dev/shm/modelfs-page-cost
trap 'rm -f "$file"' EXIT

write() {
    local started ended
    started=$(date +%s.%N)
    dd if=/dev/zero of="$file" bs=1M count=$((gib * 1024)) status=none
    ended=$(date +%s.%N)
    rm -f "$file"
    awk -v a="$started" -v b="$ended" -v g="$gib" -v what="$1" \
        'BEGIN { printf "%-28s %6.2f s for %d GiB: %.2f s per GiB\n", what, b - a, g, (b - a) / g }'
}

sync
echo 3 > /proc/sys/vm/drop_caches
sleep "$idle"
write "after ${idle} s free:"
write "just freed:"
sleep "$idle"
write "after ${idle} s free again:"
