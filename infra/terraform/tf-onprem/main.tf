# On-prem platform: a VLAN for the clusters, RKE2 clusters on vSphere VMs (cloud-init installs RKE2), a DNS
# name per cluster API, and the Harbor projects that hold images and OCI artifacts. Rancher imports the
# clusters afterwards (Ferry's Provision workflow reads output "clusters").

data "vsphere_datacenter" "dc" {
  name = var.datacenter
}

data "vsphere_compute_cluster" "compute" {
  name          = var.vsphere_cluster
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_datastore" "disks" {
  name          = var.datastore
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_distributed_virtual_switch" "dvs" {
  name          = var.distributed_switch
  datacenter_id = data.vsphere_datacenter.dc.id
}

data "vsphere_virtual_machine" "template" {
  name          = var.vm_template
  datacenter_id = data.vsphere_datacenter.dc.id
}

locals {
  prefix = "${var.name_prefix}-${var.datacenter}"

  # One entry per VM: "<cluster>-cp-<n>" (RKE2 servers) and "<cluster>-wk-<n>" (agents).
  nodes = merge([
    for name, c in var.clusters : merge(
      {
        for i in range(c.control_plane) : "${name}-cp-${i}" => {
          cluster = name, server = true, first = i == 0, cpus = c.cpus, memory_mb = c.memory_mb
        }
      },
      {
        for i in range(c.workers) : "${name}-wk-${i}" => {
          cluster = name, server = false, first = false, cpus = c.cpus, memory_mb = c.memory_mb
        }
      },
    )
  ]...)
}

# --- network ---

resource "vsphere_distributed_port_group" "k8s" {
  name                            = "${local.prefix}-k8s"
  distributed_virtual_switch_uuid = data.vsphere_distributed_virtual_switch.dvs.id
  vlan_id                         = var.vlan_id
}

# --- clusters ---

resource "random_password" "rke2_token" {
  for_each = var.clusters

  length  = 48
  special = false
}

resource "vsphere_virtual_machine" "node" {
  for_each = local.nodes

  name             = "${local.prefix}-${each.key}"
  resource_pool_id = data.vsphere_compute_cluster.compute.resource_pool_id
  datastore_id     = data.vsphere_datastore.disks.id
  num_cpus         = each.value.cpus
  memory           = each.value.memory_mb
  guest_id         = data.vsphere_virtual_machine.template.guest_id
  firmware         = data.vsphere_virtual_machine.template.firmware

  network_interface {
    network_id   = vsphere_distributed_port_group.k8s.id
    adapter_type = data.vsphere_virtual_machine.template.network_interface_types[0]
  }

  disk {
    label            = "disk0"
    size             = max(100, data.vsphere_virtual_machine.template.disks[0].size)
    thin_provisioned = data.vsphere_virtual_machine.template.disks[0].thin_provisioned
  }

  clone {
    template_uuid = data.vsphere_virtual_machine.template.id
  }

  extra_config = {
    "guestinfo.metadata"          = base64encode(yamlencode({ "local-hostname" = "${local.prefix}-${each.key}" }))
    "guestinfo.metadata.encoding" = "base64"
    "guestinfo.userdata" = base64encode(templatefile("${path.module}/templates/rke2-node.yaml.tftpl", {
      kubernetes_version = var.clusters[each.value.cluster].kubernetes_version
      server             = each.value.server
      join_address       = each.value.first ? "" : "https://${each.value.cluster}.${var.dns_domain}:9345"
      tls_san            = "${each.value.cluster}.${var.dns_domain}"
      token              = random_password.rke2_token[each.value.cluster].result
    }))
    "guestinfo.userdata.encoding" = "base64"
  }

  wait_for_guest_net_timeout = 10

  lifecycle {
    # cloud-init runs once, at first boot: a new RKE2 version needs new VMs (a replace plan, which Ferry
    # holds at its approval gate). A new template replaces them anyway (clone is force-new).
    replace_triggered_by = [terraform_data.node_spec[each.key]]
  }
}

# What a node was built from; a change replaces the node (see lifecycle above).
resource "terraform_data" "node_spec" {
  for_each = local.nodes

  input = {
    kubernetes_version = var.clusters[each.value.cluster].kubernetes_version
    server             = each.value.server
  }
}

# The API name of each cluster: an A record per RKE2 server (round robin).
resource "dns_a_record_set" "api" {
  for_each = var.clusters

  zone = "${var.dns_domain}."
  name = each.key
  addresses = [
    for key, node in local.nodes : vsphere_virtual_machine.node[key].default_ip_address
    if node.cluster == each.key && node.server
  ]
  ttl = 60
}

# --- registry and artifact store (Harbor-OnPrem) ---

resource "harbor_project" "registry" {
  for_each = toset(var.registry_projects)

  name                   = each.key
  public                 = false
  vulnerability_scanning = true
  storage_quota          = var.registry_quota_gb
}

resource "harbor_project" "artifacts" {
  name                   = "${var.name_prefix}-artifacts"
  public                 = false
  vulnerability_scanning = false
  storage_quota          = var.artifact_store_quota_gb
}

# The robot account CI pushes with (its secret is a sensitive output; store it in the CI secret store).
resource "harbor_robot_account" "ci" {
  name        = "${var.name_prefix}-ci"
  description = "CI pushes images and artifacts (managed by Terraform, tf-onprem)"
  level       = "system"

  dynamic "permissions" {
    for_each = concat(var.registry_projects, [harbor_project.artifacts.name])
    content {
      kind      = "project"
      namespace = permissions.value
      access {
        action   = "push"
        resource = "repository"
      }
      access {
        action   = "pull"
        resource = "repository"
      }
    }
  }

  depends_on = [harbor_project.registry]
}
