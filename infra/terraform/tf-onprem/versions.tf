terraform {
  required_version = ">= 1.4" # terraform_data

  required_providers {
    vsphere = {
      source  = "vmware/vsphere"
      version = "~> 2.10"
    }
    harbor = {
      source  = "goharbor/harbor"
      version = "~> 3.10"
    }
    dns = {
      source  = "hashicorp/dns"
      version = "~> 3.4"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # State lives next to the team's other on-prem state; Terraform's lock (lockfile on the share, or the
  # backend's own) keeps Ferry and a person at a terminal from applying at once. Replace with your backend.
  backend "local" {
    path = "/srv/terraform-state/tf-onprem/terraform.tfstate"
  }
}

# Credentials come from the on-prem worker's environment, never from ferry.yaml:
#   VSPHERE_USER, VSPHERE_PASSWORD (and VSPHERE_SERVER when var.vsphere_server is null)
#   HARBOR_USERNAME, HARBOR_PASSWORD (and HARBOR_URL when var.harbor_url is null)
#   DNS_UPDATE_SERVER, DNS_UPDATE_KEYNAME, DNS_UPDATE_KEYALGORITHM, DNS_UPDATE_KEYSECRET (RFC 2136 updates)
provider "vsphere" {
  vsphere_server = var.vsphere_server
}

provider "harbor" {
  url = var.harbor_url
}

provider "dns" {}
