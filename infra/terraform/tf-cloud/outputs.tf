output "clusters" {
  description = "Clusters Ferry imports into Rancher: name -> {api_endpoint, kubeconfig_path, role, kubernetes_version, id}."
  value = {
    for name, c in var.clusters : name => {
      # pgw_endpoint: the intranet address (host:port) TKE gives the endpoint opened above.
      api_endpoint       = "https://${tencentcloud_kubernetes_cluster_endpoint.intranet[name].pgw_endpoint}"
      kubeconfig_path    = local_sensitive_file.kubeconfig[name].filename
      role               = c.role
      kubernetes_version = c.kubernetes_version
      id                 = tencentcloud_kubernetes_cluster.this[name].id
    }
  }
}

output "network" {
  description = "The VPC and its node subnets."
  value = {
    vpc_id  = tencentcloud_vpc.this.id
    cidr    = var.vpc_cidr
    subnets = { for zone, s in tencentcloud_subnet.nodes : zone => s.id }
  }
}

output "registry" {
  description = "TCR instance and its namespaces (the projects Harbor-OnPrem replicates into)."
  value = {
    url        = tencentcloud_tcr_instance.registry.public_domain
    namespaces = sort(var.registry_namespaces)
  }
}

output "artifact_store" {
  description = "COS bucket for build artifacts."
  value = {
    bucket = tencentcloud_cos_bucket.artifacts.bucket
    url    = tencentcloud_cos_bucket.artifacts.cos_bucket_url
  }
}

output "registry_robot_secret" {
  description = "Token the clusters pull images with (sensitive: Ferry never copies it into workflow history)."
  value       = tencentcloud_tcr_token.pull.token
  sensitive   = true
}
