variable "datacenter" {
  description = "vSphere datacenter that hosts the clusters; also part of every resource name. Required."
  type        = string
}

variable "vsphere_server" {
  description = "vCenter host name; null takes VSPHERE_SERVER from the worker's environment."
  type        = string
  default     = null
}

variable "harbor_url" {
  description = "Harbor-OnPrem URL for the harbor provider; null takes HARBOR_URL from the worker's environment."
  type        = string
  default     = null
}

variable "name_prefix" {
  description = "Prefix of resource names (port group, VMs, Harbor projects)."
  type        = string
  default     = "ferry"
}

variable "vsphere_cluster" {
  description = "vSphere compute cluster whose resource pool runs the VMs."
  type        = string
  default     = "compute-01"
}

variable "datastore" {
  description = "Datastore for the VM disks."
  type        = string
  default     = "vsan-01"
}

variable "distributed_switch" {
  description = "Distributed virtual switch that carries the cluster VLAN."
  type        = string
  default     = "dvs-01"
}

variable "vm_template" {
  description = "VM template with cloud-init (Ubuntu 22.04) that nodes are cloned from; changing it replaces nodes."
  type        = string
  default     = "ubuntu-2204-cloudinit"
}

variable "vlan_id" {
  description = "VLAN of the cluster port group."
  type        = number
  default     = 240
}

variable "network_cidr" {
  description = "CIDR of the cluster VLAN (DHCP-served); documented here for firewall rules and outputs."
  type        = string
  default     = "10.40.0.0/16"
}

variable "dns_domain" {
  description = "DNS zone in which each cluster's API name (<cluster>.<dns_domain>) is registered."
  type        = string
  default     = "k8s.onprem.internal"
}

variable "clusters" {
  description = "Clusters to build, by name: role (ci, testbed, ...), RKE2 version, control-plane and worker VM counts, and VM size. Changing the version or a count replaces the cluster's nodes."
  type = map(object({
    role               = string
    kubernetes_version = string
    control_plane      = number
    workers            = number
    cpus               = number
    memory_mb          = number
  }))
  default = {
    "onprem-ci" = {
      role               = "ci"
      kubernetes_version = "v1.30.4+rke2r1"
      control_plane      = 3
      workers            = 4
      cpus               = 8
      memory_mb          = 32768
    }
    "onprem-testbed" = {
      role               = "testbed"
      kubernetes_version = "v1.30.4+rke2r1"
      control_plane      = 1
      workers            = 2
      cpus               = 4
      memory_mb          = 16384
    }
  }
}

variable "registry_projects" {
  description = "Harbor projects to create on Harbor-OnPrem (images are pushed there by CI)."
  type        = list(string)
  default     = ["ferry", "platform"]
}

variable "registry_quota_gb" {
  description = "Storage quota of each Harbor project, in GB."
  type        = number
  default     = 500
}

variable "artifact_store_quota_gb" {
  description = "Storage quota of the Harbor project that stores OCI artifacts (Helm charts, SBOMs), in GB."
  type        = number
  default     = 200
}
