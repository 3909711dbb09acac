output "clusters" {
  description = "Clusters Ferry imports into Rancher: name -> {api_endpoint, role, kubernetes_version, id}."
  value = {
    for name, c in var.clusters : name => {
      api_endpoint       = var.api_endpoint_base != "" ? "${var.api_endpoint_base}/clusters/${name}" : "https://${name}.${var.dns_domain}:6443"
      role               = c.role
      kubernetes_version = c.kubernetes_version
      id                 = null_resource.cluster[name].id
    }
  }
}

output "network" {
  description = "The cluster port group and its CIDR."
  value = {
    name = null_resource.network.triggers.name
    cidr = var.network_cidr
  }
}

output "registry" {
  description = "Harbor-OnPrem projects created for the platform."
  value = {
    projects = sort(var.registry_projects)
  }
}

output "artifact_store" {
  description = "Harbor project that stores OCI artifacts."
  value = {
    project = null_resource.artifact_store.triggers.project
  }
}

output "registry_robot_secret" {
  description = "Secret of the CI robot account (sensitive: Ferry never copies it into workflow history)."
  value       = sha256(join(",", [for p in null_resource.registry : p.id]))
  sensitive   = true
}
