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
}

variable "image" {
  type        = string
  description = "Container image running voke"
}

variable "voke_config" {
  type        = string
  description = "voke.toml for the job"
}

variable "instance" {
  type        = string
  description = "Cloud SQL primary instance name"
}

variable "secrets" {
  type        = list(string)
  description = "Secrets voke rotates"
}

variable "notification_channels" {
  type        = list(string)
  description = "Notification channel ids for the alert policies"
}

# The same cron expressions (UTC) as voke's config (RotationSchedule in config.py);
# a test keeps them equal.
variable "rotation_schedule" {
  type        = map(string)
  description = "Cron (UTC) per credential kind; each runs `voke rotate due --run --json`"
  default = {
    db_password = "0 2 1 * *"
    api_key     = "0 2 1 1,4,7,10 *"
    sa_key      = "0 2 1 1,4,7,10 *"
    jwt         = "0 2 1 1 *"
  }
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
