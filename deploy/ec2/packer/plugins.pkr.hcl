# Packer 1.7+ installs the Amazon plugin with `packer init deploy/ec2/packer`. Kept apart from
# modelfs.pkr.hcl so that file also validates with older Packer releases that bundle it.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
