terraform {
  required_version = ">= 1.3"

  required_providers {
    tencentcloud = {
      source  = "tencentcloudstack/tencentcloud"
      version = "~> 1.81"
    }
    local = {
      source  = "hashicorp/local"
      version = "~> 2.5"
    }
  }

  # Remote state in COS with its own lock; the bucket is made once by hand (it cannot hold its own state).
  backend "cos" {
    bucket = "ferry-terraform-state-1250000000"
    prefix = "tf-cloud"
  }
}

# Credentials come from the cloud worker's environment, never from ferry.yaml:
#   TENCENTCLOUD_SECRET_ID, TENCENTCLOUD_SECRET_KEY (the backend reads the same).
provider "tencentcloud" {
  region = var.region
}
