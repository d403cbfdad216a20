#!/bin/bash
# EC2 Auto Scaling user-data for a baked modelfs + ComfyUI AMI (see README.md). Everything
# it starts is already installed and enabled in the AMI; user-data only says which bucket.
set -euo pipefail
install -d -m 0755 /etc/modelfs
cat >/etc/modelfs/comfyui.env <<'ENV'
MODELFS_SOURCE=s3://my-models-bucket/ComfyUI/models
MODELFS_MOUNTPOINT=/opt/ComfyUI/models
MODELFS_OPTIONS=--region us-west-2 --allow-other
MODELFS_OPTIONS_S3=--region us-west-2
MODELFS_WARM=--workflow /etc/modelfs/workflow.json
ENV
systemctl daemon-reload
systemctl start modelfs-instance-store.service
# Warm in the background of the boot; ComfyUI starts as soon as the mount is ready.
systemctl start --no-block modelfs-warm@comfyui.service
systemctl start modelfs@comfyui.service
systemctl start comfyui.service
