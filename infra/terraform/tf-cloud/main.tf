# Cloud platform on Tencent Cloud: a VPC with a node subnet per zone, managed TKE clusters with a node pool and
# an intranet API endpoint (the cloud worker sits in the VPC), TCR as the registry, COS as the artifact store.
# Rancher imports the clusters afterwards (Ferry's Provision workflow reads output "clusters").

data "tencentcloud_availability_zones_by_product" "cvm" {
  product = "cvm"
}

data "tencentcloud_user_info" "me" {}

locals {
  prefix = "${var.name_prefix}-${var.region}"
  zones  = length(var.availability_zones) > 0 ? var.availability_zones : slice(data.tencentcloud_availability_zones_by_product.cvm.zones[*].name, 0, 2)
}

# --- network ---

resource "tencentcloud_vpc" "this" {
  name       = local.prefix
  cidr_block = var.vpc_cidr
}

resource "tencentcloud_subnet" "nodes" {
  for_each = { for i, zone in local.zones : zone => i }

  name              = "${local.prefix}-nodes-${each.key}"
  vpc_id            = tencentcloud_vpc.this.id
  availability_zone = each.key
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, each.value)
}

resource "tencentcloud_security_group" "nodes" {
  name        = "${local.prefix}-nodes"
  description = "TKE nodes: everything from inside the VPC, all egress"
}

resource "tencentcloud_security_group_rule_set" "nodes" {
  security_group_id = tencentcloud_security_group.nodes.id

  ingress {
    action      = "ACCEPT"
    cidr_block  = var.vpc_cidr
    protocol    = "ALL"
    description = "node, pod and API traffic inside the VPC"
  }

  egress {
    action      = "ACCEPT"
    cidr_block  = "0.0.0.0/0"
    protocol    = "ALL"
    description = "image pulls, Rancher agent"
  }
}

# --- clusters ---

resource "tencentcloud_kubernetes_cluster" "this" {
  for_each = var.clusters

  cluster_name            = "${local.prefix}-${each.key}"
  cluster_desc            = "${each.value.role} (managed by Terraform, tf-cloud)"
  cluster_version         = each.value.kubernetes_version
  cluster_deploy_type     = "MANAGED_CLUSTER"
  vpc_id                  = tencentcloud_vpc.this.id
  cluster_cidr            = each.value.pod_cidr
  cluster_max_pod_num     = 64
  cluster_max_service_num = 1024
  container_runtime       = "containerd"

  tags = {
    role       = each.value.role
    managed-by = "ferry"
  }
}

resource "tencentcloud_kubernetes_node_pool" "workers" {
  for_each = var.clusters

  name                 = "${each.key}-workers"
  cluster_id           = tencentcloud_kubernetes_cluster.this[each.key].id
  vpc_id               = tencentcloud_vpc.this.id
  subnet_ids           = [for s in tencentcloud_subnet.nodes : s.id]
  min_size             = each.value.node_count
  max_size             = each.value.node_count * 2
  desired_capacity     = each.value.node_count
  enable_auto_scale    = true
  termination_policies = ["OLDEST_INSTANCE"]

  auto_scaling_config {
    instance_type              = each.value.instance_type
    system_disk_type           = "CLOUD_SSD"
    system_disk_size           = 100
    orderly_security_group_ids = [tencentcloud_security_group.nodes.id]
  }
}

# The API server on an intranet address of the first node subnet: only reachable from the VPC.
resource "tencentcloud_kubernetes_cluster_endpoint" "intranet" {
  for_each = var.clusters

  cluster_id                 = tencentcloud_kubernetes_cluster.this[each.key].id
  cluster_intranet           = true
  cluster_intranet_subnet_id = tencentcloud_subnet.nodes[local.zones[0]].id

  # TKE only opens an endpoint on a cluster that has nodes.
  depends_on = [tencentcloud_kubernetes_node_pool.workers]
}

# The kubeconfig Ferry's Rancher step uses to apply the import manifest; it stays on the cloud worker.
resource "local_sensitive_file" "kubeconfig" {
  for_each = var.clusters

  filename        = "${var.kubeconfig_dir}/${each.key}.yaml"
  content         = tencentcloud_kubernetes_cluster.this[each.key].kube_config_intranet
  file_permission = "0600"

  depends_on = [tencentcloud_kubernetes_cluster_endpoint.intranet]
}

# --- registry (TCR) and artifact store (COS) ---

resource "tencentcloud_tcr_instance" "registry" {
  name          = "${var.name_prefix}-${var.region}"
  instance_type = var.registry_instance_type
  delete_bucket = false

  tags = {
    managed-by = "ferry"
  }
}

resource "tencentcloud_tcr_namespace" "ns" {
  for_each = toset(var.registry_namespaces)

  instance_id  = tencentcloud_tcr_instance.registry.id
  name         = each.key
  is_public    = false
  is_auto_scan = true
}

# Long-lived token the clusters pull with (sensitive output; put it in an image pull secret).
resource "tencentcloud_tcr_token" "pull" {
  instance_id = tencentcloud_tcr_instance.registry.id
  description = "cluster image pulls (managed by Terraform, tf-cloud)"
}

resource "tencentcloud_cos_bucket" "artifacts" {
  bucket            = "${var.artifact_bucket}-${data.tencentcloud_user_info.me.app_id}"
  acl               = "private"
  versioning_enable = true
}
