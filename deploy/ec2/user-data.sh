#!/bin/bash
# EC2 Auto Scaling user-data for a baked modelfs + ComfyUI AMI (see README.md). The AMI's units
# start after cloud-init has run this script, so it only says which bucket and what to warm.
# Do not start modelfs units from here: they wait for this script to finish (a blocking
# `systemctl start` would wait for itself).
set -euo pipefail
install -d -m 0755 /etc/modelfs/comfyui.env.d
# Overrides /etc/modelfs/comfyui.env (baked defaults) key by key; the mount logs each override.
cat >/etc/modelfs/comfyui.env.d/user-data.env <<'ENV'
MODELFS_SOURCE=s3://my-models-bucket/ComfyUI/models
MODELFS_MOUNTPOINT=/opt/ComfyUI/models
MODELFS_OPTIONS=--region us-west-2 --allow-other
MODELFS_OPTIONS_S3=--region us-west-2
MODELFS_WARM=--workflow /etc/modelfs/workflow.json
ENV
