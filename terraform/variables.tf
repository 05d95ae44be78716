variable "project" {
  type        = string
  description = "Google Cloud project id (environments.NAME.project in voke.toml)"
}

variable "region" {
  type        = string
  default     = "us-central1"
  description = "Region of the Cloud Run job, the scheduler jobs and the primary Cloud SQL instance"
}

variable "environment" {
  type        = string
  default     = "prod"
  description = "Name of the voke environment ([environments.NAME]) the job acts on"
}

variable "image" {
  type        = string
  description = "Container image that runs voke (entrypoint `voke`), e.g. us-docker.pkg.dev/PROJECT/ops/voke:1.2.3"
}

variable "voke_config" {
  type        = string
  sensitive   = true # rotation.notify_webhook, were it put here, is a credential: kept out of plan output
  description = "Contents of voke.toml for the job (no secret values: those live in Secret Manager; the webhook URL in notify_webhook_secret)"
}

variable "notify_webhook_secret" {
  type        = string
  default     = ""
  description = "Secret Manager secret id (in `project`) whose latest version is rotation.notify_webhook's URL (a Slack-compatible incoming webhook): fed to the job as VOKE_ROTATION__NOTIFY_WEBHOOK, readable by voke's account alone. \"\" for no notifications (or none from here)"
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
  description = "VPC network the Cloud SQL instances have their private IPs on (name or projects/HOST/global/networks/NAME): the job's Direct VPC egress, for the login test and the drills' canary"
}

variable "subnetwork" {
  type        = string
  description = "Subnetwork of that network in `region` the job's tasks take their addresses from (name or projects/HOST/regions/REGION/subnetworks/NAME)"
}

variable "secrets" {
  type        = list(string)
  default     = ["db-app", "jwt-signing"]
  description = "Secret Manager secrets voke rotates (created here with rotation topics)"
}

variable "notification_channels" {
  type        = list(string)
  default     = []
  description = "Monitoring notification channel ids the alert policies notify"
}

variable "manage_metric_descriptors" {
  type        = bool
  default     = true
  description = "Whether this configuration declares voke's metric descriptors (custom.googleapis.com/voke/*), which all environments of the project share: true in exactly one configuration per project (the first applied), false in every other"
}

variable "operators" {
  type        = list(string)
  default     = []
  description = "IAM members (user:, group:, serviceAccount:) who run `voke dr restore|failover|failback` and the drills: what voke's account holds plus the operator role (clones, promotions, deleting scratch instances, making a secret)"
}

variable "runtime_service_accounts" {
  type        = list(string)
  default     = []
  description = "Emails of the accounts the Cloud Run services voke redeploys run as (voke gets actAs on these alone)"
}

variable "runtime_secrets" {
  type        = list(string)
  default     = ["db-app", "jwt-signing"]
  description = "Which of `secrets` the Cloud Run services read (pinned to a version): each of runtime_service_accounts gets roles/secretmanager.secretAccessor on these alone. Leave out an API key's admin_secret, which only voke reads"
}

variable "rotated_service_accounts" {
  type        = list(string)
  default     = []
  description = "Emails of the accounts whose keys `voke rotate sa-key` rotates (voke manages the keys of these alone)"
}
