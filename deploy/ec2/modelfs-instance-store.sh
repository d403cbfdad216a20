#!/usr/bin/env bash
# Prepares local disk for the modelfs cache on an EC2 instance, at every boot
# (modelfs-instance-store.service). Idempotent.
#
#   the instance type has no instance store -> a directory on the root volume, smaller limit
#   one device                              -> ext4 on it, mounted at $MODELFS_CACHE_MOUNT
#   several devices                         -> RAID0 (mdadm) across them, ext4, mounted
#
# How many devices to expect comes from the hardware: one NVMe controller with PCI id
# 1d0f:cd01 per instance-store volume (EBS is 1d0f:8061). The script waits up to
# $MODELFS_DEVICE_TIMEOUT seconds for that many block devices and fails if they do not all
# appear: a late device must never turn into a silent cache on the root volume.
#
# Instance store is blank after a stop/start and intact after a reboot: an existing array or
# filesystem is reused, never reformatted. Writes MODELFS_CACHE_DIR and MODELFS_CACHE_SIZE to
# $MODELFS_CACHE_ENV (per boot, in /run) for modelfs@.service and modelfs-warm@.service.
#
# Settings (environment; the unit reads /etc/modelfs/instance-store.env):
#   MODELFS_DEVICES="dev1 dev2"      use exactly these devices (waits for each to exist)
#   MODELFS_DEVICE_GLOB=PATTERN      where devices appear (default: EC2's by-id names)
#   MODELFS_INSTANCE_STORE_DEVICES=N how many to wait for (default: counted on the PCI bus)
#   MODELFS_DEVICE_TIMEOUT=S         how long to wait (default 120)
#   MODELFS_CACHE_MOUNT, MODELFS_FALLBACK_DIR, MODELFS_CACHE_ENV, MODELFS_MD_DEVICE,
#   MODELFS_FALLBACK_CACHE_SIZE, MODELFS_CACHE_SIZE
set -euo pipefail

mount_point="${MODELFS_CACHE_MOUNT:-/mnt/modelfs-cache}"
fallback_dir="${MODELFS_FALLBACK_DIR:-/var/cache/modelfs}"
env_file="${MODELFS_CACHE_ENV:-/run/modelfs/cache.env}"
md_device="${MODELFS_MD_DEVICE:-/dev/md/modelfs-cache}"
fallback_size="${MODELFS_FALLBACK_CACHE_SIZE:-20GiB}"
cache_size="${MODELFS_CACHE_SIZE:-free:10%}"
device_glob="${MODELFS_DEVICE_GLOB:-/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*}"
timeout="${MODELFS_DEVICE_TIMEOUT:-120}"
label="modelfs-cache"

log() { echo "modelfs-instance-store: $*" >&2; }

# Instance-store NVMe controllers on the PCI bus: they are enumerated by the kernel before
# userspace starts, while their block devices and udev's by-id links may come much later.
count_pci_instance_store() {
  local dev n=0
  for dev in /sys/bus/pci/devices/*; do
    [ -r "$dev/device" ] || continue
    if [ "$(cat "$dev/vendor")" = 0x1d0f ] && [ "$(cat "$dev/device")" = 0xcd01 ]; then
      n=$((n + 1))
    fi
  done
  echo "$n"
}

# The devices present now (resolved, one per line). EC2 names instance-store NVMe devices
# "Amazon EC2 NVMe Instance Storage" (EBS volumes are "Amazon Elastic Block Store").
present_devices() {
  local path
  if [ -n "${MODELFS_DEVICES:-}" ]; then
    for path in $MODELFS_DEVICES; do
      [ -b "$(readlink -f "$path")" ] && readlink -f "$path"
    done
    return 0
  fi
  # The glob is the setting itself: unquoted on purpose.
  # shellcheck disable=SC2086
  for path in $device_glob; do
    [ -e "$path" ] || continue
    case "$path" in *-part*|*_[0-9]) continue ;; esac
    [ -b "$(readlink -f "$path")" ] && readlink -f "$path"
  done | sort -u
}

write_env() {
  local dir="$1" size="$2"
  mkdir -p "$(dirname "$env_file")"
  printf 'MODELFS_CACHE_DIR=%s\nMODELFS_CACHE_SIZE=%s\n' "$dir" "$size" >"$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
  log "cache at $dir (limit $size), settings in $env_file"
}

is_mounted() { mountpoint -q "$1"; }

if [ -n "${MODELFS_DEVICES:-}" ]; then
  read -r -a listed <<<"$MODELFS_DEVICES"
  expected="${#listed[@]}"
else
  expected="${MODELFS_INSTANCE_STORE_DEVICES:-$(count_pci_instance_store)}"
fi

if is_mounted "$mount_point"; then
  install -d -m 0700 "$mount_point/cache"
  write_env "$mount_point/cache" "$cache_size"
  exit 0
fi

devices=()
if [ "$expected" -gt 0 ]; then
  waited=0
  while :; do
    mapfile -t devices < <(present_devices)
    [ "${#devices[@]}" -ge "$expected" ] && break
    if [ "$waited" -ge "$timeout" ]; then
      log "ERROR: expected $expected instance-store device(s), found ${#devices[@]} after ${timeout}s (${devices[*]:-none}); refusing to put the cache on the root volume"
      exit 1
    fi
    if [ $((waited % 10)) -eq 0 ]; then
      log "waiting for $expected instance-store device(s), ${#devices[@]} present"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "found ${#devices[@]} instance-store device(s) after ${waited}s: ${devices[*]}"
fi

case "${#devices[@]}" in
  0)
    log "WARNING: this instance has no instance store: the cache goes to $fallback_dir on the root volume (limit $fallback_size)"
    install -d -m 0700 "$fallback_dir"
    write_env "$fallback_dir" "$fallback_size"
    exit 0
    ;;
  1)
    device="${devices[0]}"
    ;;
  *)
    device="$md_device"
    if [ ! -e "$device" ]; then
      # After a reboot the array exists on the disks: assemble it; on blank disks, create it.
      if ! mdadm --assemble "$device" "${devices[@]}" >/dev/null 2>&1; then
        log "creating RAID0 $device over ${devices[*]}"
        mdadm --create "$device" --level=0 --raid-devices="${#devices[@]}" --run \
          --homehost=any "${devices[@]}"
      fi
    fi
    ;;
esac

if [ -z "$(blkid -o value -s TYPE "$device" 2>/dev/null || true)" ]; then
  log "formatting $device (ext4)"
  mkfs.ext4 -q -F -L "$label" -E nodiscard,lazy_itable_init=1 "$device"
fi
install -d "$mount_point"
mount -o noatime "$device" "$mount_point"
install -d -m 0700 "$mount_point/cache"
write_env "$mount_point/cache" "$cache_size"
