# Bakes an Ubuntu AMI for EC2 Auto Scaling with modelfs installed from its .deb and its boot
# units enabled; user-data then only names the bucket (deploy/ec2/README.md). Build the .deb
# first, then from the repository root:
#   cargo deb -p modelfs
#   packer init deploy/ec2/packer
#   packer build -var deb=target/debian/modelfs_0.1.0-1_amd64.deb deploy/ec2/packer
# Add ComfyUI's own provisioning (and its unit, WantedBy=modelfs@comfyui.service) after ours.

variable "region" {
  type    = string
  default = "us-west-2"
}

variable "deb" {
  type        = string
  description = "Path of the modelfs .deb (cargo deb -p modelfs)."
}

variable "instance_name" {
  type        = string
  default     = "comfyui"
  description = "modelfs@NAME: settings in /etc/modelfs/NAME.env and NAME.env.d/."
}

variable "warm" {
  type        = bool
  default     = false
  description = "Also enable modelfs-warm@NAME (user-data must then set MODELFS_WARM)."
}

# Ubuntu 24.04 from Canonical. For a GPU image pick a base with the NVIDIA driver, e.g. an
# AWS Deep Learning Base AMI (owner "amazon"), through these two variables.
variable "source_ami_name" {
  type    = string
  default = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
}

variable "source_ami_owner" {
  type    = string
  default = "099720109477"
}

# Baking needs no GPU: the driver comes with the base AMI.
variable "instance_type" {
  type    = string
  default = "m6i.large"
}

variable "ami_name_prefix" {
  type    = string
  default = "comfyui-modelfs"
}

locals {
  stamp = regex_replace(timestamp(), "[- TZ:]", "")
}

source "amazon-ebs" "comfyui" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = "ubuntu"
  ami_name      = "${var.ami_name_prefix}-${local.stamp}"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 100
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  tags = {
    Name    = "${var.ami_name_prefix}-${local.stamp}"
    modelfs = basename(var.deb)
  }
}

build {
  sources = ["source.amazon-ebs.comfyui"]

  # The build instance's own cloud-init must be done before apt runs.
  provisioner "shell" {
    inline = ["cloud-init status --wait", "sudo apt-get update -qq"]
  }

  provisioner "file" {
    source      = var.deb
    destination = "/tmp/modelfs.deb"
  }

  provisioner "file" {
    source      = "${path.root}/install.sh"
    destination = "/tmp/modelfs-install.sh"
  }

  # The same script tests/ec2_boot.rs bakes its test image with. cloud-init clean: instances
  # launched from the AMI run their own user-data as a first boot.
  provisioner "shell" {
    inline = [
      "sudo bash /tmp/modelfs-install.sh /tmp/modelfs.deb ${var.instance_name} ${var.warm ? "--warm" : ""}",
      "rm -f /tmp/modelfs.deb /tmp/modelfs-install.sh",
      "sudo cloud-init clean --logs",
    ]
  }
}
