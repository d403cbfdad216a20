#!/bin/bash
# Installs modelfs from its .deb into an image being baked and enables the boot units:
#   install.sh MODELFS.deb [NAME] [--warm]
# NAME (default comfyui) is the instance: modelfs@NAME mounts what /etc/modelfs/NAME.env and
# the user-data drop-in say. --warm also enables modelfs-warm@NAME. Run as root, by Packer's
# shell provisioner and by tests/ec2_boot.rs on a Debian rootfs, so both bake the same way.
set -euo pipefail
[ "$#" -ge 1 ] || { echo "usage: install.sh MODELFS.deb [NAME] [--warm]" >&2; exit 2; }
deb="$1" name="${2:-comfyui}" warm="${3:-}"
case "$deb" in /*|./*) ;; *) deb="./$deb" ;; esac
export DEBIAN_FRONTEND=noninteractive
# A path makes apt install the file and take only its missing dependencies from the archive.
apt-get install -y --no-install-recommends "$deb"
units=(modelfs-instance-store.service "modelfs@$name.service")
[ "$warm" = --warm ] && units+=("modelfs-warm@$name.service")
systemctl enable "${units[@]}"
echo "modelfs: installed $(dpkg-query -W -f '${Version}' modelfs); enabled ${units[*]}"
