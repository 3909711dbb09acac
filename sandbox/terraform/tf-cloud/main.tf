# Sandbox twin of infra/terraform/tf-cloud: the same variables and outputs, built only from null_resource so
# the real Terraform CLI can plan and apply it offline (local backend, `terraform init -plugin-dir` with the
# null provider). `triggers` hold what is force-new in the real workspace, so changes plan as replacements.

terraform {
  required_version = ">= 1.0"
  required_providers {
    null = {
      source  = "hashicorp/null"
      version = ">= 2.1"
    }
  }
  backend "local" {}
}

locals {
  prefix = "${var.name_prefix}-${var.region}"
  zones  = length(var.availability_zones) > 0 ? var.availability_zones : ["${var.region}-1", "${var.region}-2"]
}

resource "null_resource" "vpc" {
  triggers = {
    name = local.prefix
    cidr = var.vpc_cidr
  }
}

resource "null_resource" "subnet" {
  for_each = { for i, zone in local.zones : zone => i }

  triggers = {
    zone = each.key
    cidr = cidrsubnet(var.vpc_cidr, 4, each.value)
    vpc  = null_resource.vpc.id
  }
}

resource "null_resource" "cluster" {
  for_each = var.clusters

  triggers = {
    name               = "${local.prefix}-${each.key}"
    kubernetes_version = each.value.kubernetes_version
    pod_cidr           = each.value.pod_cidr
    vpc                = null_resource.vpc.id
  }

  # Sandbox only: simulated creation time (see variable apply_delay_seconds).
  provisioner "local-exec" {
    command    = "sleep ${var.apply_delay_seconds}"
    on_failure = continue
  }
}

# Node pools change in place in the real workspace (size, instance type): no replacement.
resource "null_resource" "node_pool" {
  for_each = var.clusters

  triggers = {
    cluster = null_resource.cluster[each.key].id
  }
}

resource "null_resource" "registry" {
  triggers = {
    name          = "${var.name_prefix}-${var.region}"
    instance_type = var.registry_instance_type
    namespaces    = join(",", sort(var.registry_namespaces))
  }
}

resource "null_resource" "artifact_store" {
  triggers = {
    bucket = var.artifact_bucket
  }
}
