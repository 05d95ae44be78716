# Cloud Scheduler runs the job with overridden arguments (run.jobs.runWithOverrides):
# `voke rotate due --run --yes --json` once a day at 02:00 UTC, which rotates whatever voke's
# [rotation.schedule] (PRODUCT.md's: monthly, quarterly, yearly, all at 02:00 on the 1st) makes due
# and retries a missed one the next day; `voke rotate cleanup --yes --json` daily at 03:00 UTC, which
# disables superseded versions (and deletes superseded provider and service-account keys) after
# 24 h and destroys them after 30 days; and `voke dr check --json` every 15 minutes. One rotation
# job, not one per kind: on January 1st one per kind would all start at once and collide on the
# same secrets (all but one exit 5).
locals {
  run_uri = "https://run.googleapis.com/v2/projects/${var.project}/locations/${var.region}/jobs/${google_cloud_run_v2_job.voke.name}:run"
}

resource "google_cloud_scheduler_job" "rotate" {
  project   = var.project
  region    = var.region
  name      = "voke-${var.environment}-rotate-due"
  schedule  = var.rotation_check_schedule
  time_zone = "Etc/UTC"
  retry_config {
    retry_count = 0
  }
  http_target {
    http_method = "POST"
    uri         = local.run_uri
    body = base64encode(jsonencode({
      overrides = { containerOverrides = [{ args = ["rotate", "due", "--run", "--yes", "--json"] }] }
    }))
    headers = { "Content-Type" = "application/json" }
    oauth_token {
      service_account_email = google_service_account.voke.email
    }
  }
}

resource "google_cloud_scheduler_job" "cleanup" {
  project   = var.project
  region    = var.region
  name      = "voke-${var.environment}-rotate-cleanup"
  schedule  = var.cleanup_schedule
  time_zone = "Etc/UTC"
  http_target {
    http_method = "POST"
    uri         = local.run_uri
    body = base64encode(jsonencode({
      overrides = { containerOverrides = [{ args = ["rotate", "cleanup", "--yes", "--json"] }] }
    }))
    headers = { "Content-Type" = "application/json" }
    oauth_token {
      service_account_email = google_service_account.voke.email
    }
  }
}

resource "google_cloud_scheduler_job" "dr_check" {
  project   = var.project
  region    = var.region
  name      = "voke-${var.environment}-dr-check"
  schedule  = var.dr_check_schedule
  time_zone = "Etc/UTC"
  http_target {
    http_method = "POST"
    uri         = local.run_uri
    body = base64encode(jsonencode({
      overrides = { containerOverrides = [{ args = ["dr", "check", "--json"] }] }
    }))
    headers = { "Content-Type" = "application/json" }
    oauth_token {
      service_account_email = google_service_account.voke.email
    }
  }
}
