variable "region" {
  description = "Tencent Cloud region of the clusters, registry and artifact bucket, e.g. ap-shanghai. Required."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of resource names (VPC, clusters, registry)."
  type        = string
  default     = "ferry"
}

variable "availability_zones" {
  description = "Zones for the node subnets; empty takes the first two CVM zones of the region."
  type        = list(string)
  default     = []
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; node subnets are carved from it (/20 each)."
  type        = string
  default     = "10.60.0.0/16"
}

variable "clusters" {
  description = "Managed TKE clusters by name: role, Kubernetes version, node count and CVM type, pod CIDR (outside the VPC). A new version or pod CIDR replaces the cluster."
  type = map(object({
    role               = string
    kubernetes_version = string
    node_count         = number
    instance_type      = string
    pod_cidr           = string
  }))
  default = {
    "cloud-staging" = {
      role               = "staging"
      kubernetes_version = "1.30.0"
      node_count         = 3
      instance_type      = "SA5.2XLARGE16"
      pod_cidr           = "172.20.0.0/16"
    }
    "cloud-production" = {
      role               = "production"
      kubernetes_version = "1.30.0"
      node_count         = 6
      instance_type      = "SA5.4XLARGE32"
      pod_cidr           = "172.21.0.0/16"
    }
  }
}

variable "registry_instance_type" {
  description = "TCR (Harbor-Cloud's registry) edition: basic, standard or premium."
  type        = string
  default     = "standard"
}

variable "registry_namespaces" {
  description = "TCR namespaces (Harbor projects) that replication fills."
  type        = list(string)
  default     = ["ferry", "platform"]
}

variable "artifact_bucket" {
  description = "COS bucket name (without the -APPID suffix) for build artifacts, SBOMs and reports."
  type        = string
  default     = "ferry-artifacts"
}

variable "kubeconfig_dir" {
  description = "Folder on the cloud worker where each cluster's intranet kubeconfig is written (mode 0600)."
  type        = string
  default     = "/var/lib/ferry/kubeconfigs"
}
