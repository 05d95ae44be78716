variable "project" {
  type        = string
  description = "Google Cloud project id"
}

variable "region" {
  type        = string
  description = "Region of the job and the scheduler jobs"
}

variable "environment" {
  type        = string
  description = "voke environment name ([environments.NAME])"
  validation {
    # voke's own rule (a lowercase letter, then lowercase letters, digits, - or _), at most 25
    # characters (the service account id "voke-NAME" may have 30), and not ending in - or _,
    # which a service account or Cloud Run job id may not
    condition     = can(regex("^[a-z]([a-z0-9_-]{0,23}[a-z0-9])?$", var.environment))
    error_message = "environment: a lowercase letter, then lowercase letters, digits, - or _, ending in a letter or digit; at most 25 characters."
  }
}

locals {
  # Custom role ids take no "-", service account and Cloud Run job ids no "_".
  role_suffix = replace(var.environment, "-", "_")
  id_suffix   = replace(var.environment, "_", "-")
}

variable "image" {
  type        = string
  description = "Container image running voke"
}

variable "voke_config" {
  type        = string
  sensitive   = true # may hold rotation.notify_webhook, which voke masks as a secret
  description = "voke.toml for the job"
}

variable "notify_webhook_secret" {
  type        = string
  default     = ""
  description = "Secret Manager secret id (in `project`) holding rotation.notify_webhook's URL, fed to the job as VOKE_ROTATION__NOTIFY_WEBHOOK (\"\" for none)"
}

variable "instance" {
  type        = string
  description = "Cloud SQL primary instance name"
}

variable "replica" {
  type        = string
  description = "Cloud SQL cross-region replica voke fails over to (\"\" for none): the primary after a failover"
  default     = ""
}

variable "network" {
  type        = string
  description = "VPC network of the Cloud SQL instances' private IPs, which the job reaches by Direct VPC egress"
}

variable "subnetwork" {
  type        = string
  description = "Subnetwork of that network in the job's region the job's tasks take their addresses from"
}

variable "secrets" {
  type        = list(string)
  description = "Secrets voke rotates"
}

variable "manage_metric_descriptors" {
  type        = bool
  description = "Whether this configuration declares voke's metric descriptors, which are the project's: true in exactly one configuration per project"
}

variable "notification_channels" {
  type        = list(string)
  description = "Notification channel ids for the alert policies"
}

variable "operators" {
  type        = list(string)
  description = "IAM members (user:, group:, serviceAccount:) who run voke's DR commands and drills: they hold what voke's account holds plus the operator role"
  default     = []
}

variable "runtime_service_accounts" {
  type        = list(string)
  description = "Emails of the accounts the Cloud Run services voke redeploys run as (voke gets actAs on these alone)"
  default     = []
}

variable "runtime_secrets" {
  type        = list(string)
  description = "Which of `secrets` the Cloud Run services read: each of runtime_service_accounts may read these (roles/secretmanager.secretAccessor), and no other"
}

variable "rotated_service_accounts" {
  type        = list(string)
  description = "Emails of the accounts whose keys `voke rotate sa-key` rotates (voke manages the keys of these alone)"
  default     = []
}

# When the rotation job asks voke what is due: daily at 02:00 UTC, the hour of every default
# in voke's [rotation.schedule] (a test keeps them aligned); the schedule itself lives in voke.toml.
variable "rotation_check_schedule" {
  type        = string
  description = "Cron (UTC) of `voke rotate due --run --yes --json`"
  default     = "0 2 * * *"
}

variable "cleanup_schedule" {
  type        = string
  description = "Cron (UTC) of `voke rotate cleanup --yes --json` (retention: disable after 24 h, destroy after 30 days)"
  default     = "0 3 * * *"
}

variable "dr_check_schedule" {
  type        = string
  description = "Cron (UTC) of `voke dr check --json`"
  default     = "*/15 * * * *"
}

variable "version_destroy_ttl" {
  type        = string
  description = "Delayed destruction of secret versions (voke's destroy becomes reversible this long)"
  default     = "86400s"
}
