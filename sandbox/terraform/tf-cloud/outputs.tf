output "clusters" {
  description = "Clusters Ferry imports into Rancher: name -> {api_endpoint, kubeconfig_path, role, kubernetes_version, id}."
  value = {
    for name, c in var.clusters : name => {
      api_endpoint       = var.api_endpoint_base != "" ? "${var.api_endpoint_base}/clusters/${name}" : "https://${name}.${var.region}.tke.sandbox.internal:443"
      kubeconfig_path    = ""
      role               = c.role
      kubernetes_version = c.kubernetes_version
      id                 = null_resource.cluster[name].id
    }
  }
}

output "network" {
  description = "The VPC and its node subnets."
  value = {
    vpc_id  = null_resource.vpc.id
    cidr    = var.vpc_cidr
    subnets = { for zone, s in null_resource.subnet : zone => s.id }
  }
}

output "registry" {
  description = "TCR instance and its namespaces (the projects Harbor-OnPrem replicates into)."
  value = {
    url        = "${var.name_prefix}-${var.region}.tencentcloudcr.com"
    namespaces = sort(var.registry_namespaces)
  }
}

output "artifact_store" {
  description = "COS bucket for build artifacts."
  value = {
    bucket = var.artifact_bucket
    url    = "https://${var.artifact_bucket}.cos.${var.region}.myqcloud.com"
  }
}

output "registry_robot_secret" {
  description = "Token the clusters pull images with (sensitive: Ferry never copies it into workflow history)."
  value       = sha256(null_resource.registry.id)
  sensitive   = true
}
