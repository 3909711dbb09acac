output "clusters" {
  description = "Clusters Ferry imports into Rancher: name -> {api_endpoint, role, kubernetes_version, servers}."
  value = {
    for name, c in var.clusters : name => {
      api_endpoint       = "https://${dns_a_record_set.api[name].name}.${var.dns_domain}:6443"
      role               = c.role
      kubernetes_version = c.kubernetes_version
      servers            = sort(dns_a_record_set.api[name].addresses)
    }
  }
}

output "network" {
  description = "The cluster port group and its CIDR."
  value = {
    name = vsphere_distributed_port_group.k8s.name
    cidr = var.network_cidr
  }
}

output "registry" {
  description = "Harbor-OnPrem projects created for the platform."
  value = {
    projects = sort([for p in harbor_project.registry : p.name])
  }
}

output "artifact_store" {
  description = "Harbor project that stores OCI artifacts."
  value = {
    project = harbor_project.artifacts.name
  }
}

output "registry_robot_secret" {
  description = "Secret of the CI robot account (sensitive: Ferry never copies it into workflow history)."
  value       = harbor_robot_account.ci.secret
  sensitive   = true
}
