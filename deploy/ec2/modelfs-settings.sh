#!/usr/bin/env bash
# Builds the settings of one modelfs instance (`modelfs-settings mount|warm NAME`), run by
# modelfs@NAME and modelfs-warm@NAME before they start, so both see the same values and a
# restart picks up edits.
#
# Layers, later wins key by key:
#   /etc/modelfs/NAME.env            baked into the AMI (optional)
#   /etc/modelfs/NAME.env.d/*.env    drop-ins in name order; user-data writes one
# Every key a later layer overrides is logged with both origins, so a baked value never wins
# silently. The result goes to /run/modelfs/NAME.env (root only), which the units read.
#
# Files hold KEY=VALUE lines (systemd EnvironmentFile syntax, one line per key), comments and
# blank lines. Directories can be moved for tests: MODELFS_ETC (/etc/modelfs), MODELFS_RUN
# (/run/modelfs).
set -euo pipefail

usage() { echo "usage: modelfs-settings mount|warm NAME" >&2; exit 2; }
[ "$#" -eq 2 ] || usage
mode="$1" name="$2"
case "$mode" in mount|warm) ;; *) usage ;; esac
case "$name" in ''|*/*|.*) echo "modelfs-settings: bad instance name '$name'" >&2; exit 2 ;; esac

etc="${MODELFS_ETC:-/etc/modelfs}"
run="${MODELFS_RUN:-/run/modelfs}"
out="$run/$name.env"

log() { echo "modelfs-settings[$name]: $*" >&2; }
# Values are logged for modelfs's own keys only: anything else (credentials) stays out of logs.
shown() { case "$1" in MODELFS_*) echo "$1=$2" ;; *) echo "$1" ;; esac; }

declare -A value origin
order=()
layers=()
[ -f "$etc/$name.env" ] && layers+=("$etc/$name.env")
for f in "$etc/$name.env.d"/*.env; do
  [ -f "$f" ] && layers+=("$f")
done

for file in "${layers[@]}"; do
  lineno=0
  while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    case "$line" in ''|'#'*|';'*) continue ;; esac
    if [[ ! "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || [[ "$line" == *\\ ]]; then
      log "ERROR: $file:$lineno is not a one-line KEY=VALUE: $line"
      exit 1
    fi
    key="${BASH_REMATCH[1]}" val="${BASH_REMATCH[2]}"
    if [ -n "${origin[$key]+set}" ]; then
      if [ "${value[$key]}" != "$val" ]; then
        log "$(shown "$key" "$val") from $file overrides $(shown "$key" "${value[$key]}") from ${origin[$key]}"
      fi
    else
      order+=("$key")
    fi
    value[$key]="$val"
    origin[$key]="$file"
  done <"$file"
done

if [ "${#layers[@]}" -eq 0 ]; then
  log "ERROR: no settings: write $etc/$name.env or a drop-in in $etc/$name.env.d/ (user-data does)"
  exit 1
fi
log "settings from ${layers[*]}"

required=(MODELFS_SOURCE)
if [ "$mode" = mount ]; then required+=(MODELFS_MOUNTPOINT); else required+=(MODELFS_WARM); fi
for key in "${required[@]}"; do
  if [ -z "${value[$key]:-}" ]; then
    log "ERROR: $key is not set in ${layers[*]}"
    exit 1
  fi
done
log "MODELFS_SOURCE=${value[MODELFS_SOURCE]} (from ${origin[MODELFS_SOURCE]})"

install -d -m 0755 "$run"
tmp="$(mktemp "$out.XXXXXX")"
for key in "${order[@]}"; do
  printf '%s=%s\n' "$key" "${value[$key]}"
done >"$tmp"
mv "$tmp" "$out"
