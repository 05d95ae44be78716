# The root configuration: enables the APIs and instantiates the voke module once per environment.
module "voke" {
  source                = "./modules/voke"
  project               = var.project
  region                = var.region
  environment           = var.environment
  image                 = var.image
  voke_config           = var.voke_config
  notify_webhook_secret = var.notify_webhook_secret
  instance              = var.instance
  replica               = var.replica
  network               = var.network
  subnetwork            = var.subnetwork
  secrets               = var.secrets
  notification_channels = var.notification_channels

  manage_metric_descriptors = var.manage_metric_descriptors

  runtime_service_accounts = var.runtime_service_accounts
  runtime_secrets          = var.runtime_secrets
  rotated_service_accounts = var.rotated_service_accounts
  operators                = var.operators
}

output "service_account" {
  value       = module.voke.service_account
  description = "The identity voke runs as"
}

output "job" {
  value       = module.voke.job
  description = "The Cloud Run job that runs voke"
}
