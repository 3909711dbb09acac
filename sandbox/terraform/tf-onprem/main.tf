# Sandbox twin of infra/terraform/tf-onprem: the same variables and outputs, built only from null_resource so
# the real Terraform CLI can plan and apply it offline (local backend, `terraform init -plugin-dir` with the
# null provider). Each resource's `triggers` carry the inputs that would force a new VM/port group/project in
# the real workspace, so changing them produces a replace plan just as the real one would.

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
  prefix = "${var.name_prefix}-${var.datacenter}"
}

# The cluster network (a vSphere distributed port group on a VLAN in the real workspace).
resource "null_resource" "network" {
  triggers = {
    name    = "${local.prefix}-k8s"
    vlan_id = var.vlan_id
    cidr    = var.network_cidr
  }
}

# One Kubernetes (RKE2) cluster per entry of var.clusters: control-plane and worker VMs in the real workspace.
resource "null_resource" "cluster" {
  for_each = var.clusters

  triggers = {
    name               = each.key
    role               = each.value.role
    kubernetes_version = each.value.kubernetes_version
    control_plane      = each.value.control_plane
    workers            = each.value.workers
    template           = var.vm_template
    network            = null_resource.network.id
  }

  # Sandbox only: simulated bootstrap time, so tests can stop a worker while an apply runs. A failed or
  # interrupted wait does not taint the cluster: the real workspace has no such step.
  provisioner "local-exec" {
    command    = "sleep ${var.apply_delay_seconds}"
    on_failure = continue
  }
}

# Harbor projects that hold the platform's images and OCI artifacts (charts, SBOMs, signatures).
resource "null_resource" "registry" {
  for_each = toset(var.registry_projects)

  triggers = {
    project = each.key
    quota   = var.registry_quota_gb
  }
}

resource "null_resource" "artifact_store" {
  triggers = {
    project = "${var.name_prefix}-artifacts"
    quota   = var.artifact_store_quota_gb
  }
}
