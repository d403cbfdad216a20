#!/usr/bin/env bash
# Prepares local disk for the modelfs cache on an EC2 instance, at boot (user-data or
# modelfs-instance-store.service). Idempotent: run it on every boot.
#
#   no instance-store NVMe  -> a directory on the root volume, smaller cache limit
#   one device              -> ext4 on it, mounted at $MODELFS_CACHE_MOUNT
#   several devices         -> RAID0 (mdadm) across them, ext4, mounted
#
# Instance store is blank after a stop/start and intact after a reboot: an existing array or
# filesystem is reused, never reformatted. Writes MODELFS_CACHE_DIR and MODELFS_CACHE_SIZE to
# $MODELFS_CACHE_ENV for modelfs@.service.
#
# Overrides (used by the tests, handy elsewhere): MODELFS_DEVICES="dev1 dev2" instead of
# auto-detection; MODELFS_CACHE_MOUNT, MODELFS_FALLBACK_DIR, MODELFS_CACHE_ENV, MODELFS_MD_DEVICE,
# MODELFS_FALLBACK_CACHE_SIZE, MODELFS_CACHE_SIZE.
set -euo pipefail

mount_point="${MODELFS_CACHE_MOUNT:-/mnt/modelfs-cache}"
fallback_dir="${MODELFS_FALLBACK_DIR:-/var/cache/modelfs}"
env_file="${MODELFS_CACHE_ENV:-/etc/modelfs/cache.env}"
md_device="${MODELFS_MD_DEVICE:-/dev/md/modelfs-cache}"
fallback_size="${MODELFS_FALLBACK_CACHE_SIZE:-20GiB}"
cache_size="${MODELFS_CACHE_SIZE:-free:10%}"
label="modelfs-cache"

log() { echo "modelfs-instance-store: $*" >&2; }

# EC2 names instance-store NVMe devices "Amazon EC2 NVMe Instance Storage" (EBS volumes are
# "Amazon Elastic Block Store" and are never touched).
find_devices() {
  if [ -n "${MODELFS_DEVICES:-}" ]; then
    tr -s ' ' '\n' <<<"$MODELFS_DEVICES" | sed '/^$/d'
    return
  fi
  local link
  for link in /dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*; do
    [ -e "$link" ] || continue
    case "$link" in *-part*|*_[0-9]) continue ;; esac
    readlink -f "$link"
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

mapfile -t devices < <(find_devices)

if is_mounted "$mount_point"; then
  install -d -m 0700 "$mount_point/cache"
  write_env "$mount_point/cache" "$cache_size"
  exit 0
fi

case "${#devices[@]}" in
  0)
    log "no instance-store device: using $fallback_dir on the root volume"
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
