# Cloud Scheduler runs the job with overridden arguments: the rotation schedule of
# PRODUCT.md (`voke rotate due --run --json`) and `voke dr check --json` every 15 minutes.
locals {
  run_uri = "https://run.googleapis.com/v2/projects/${var.project}/locations/${var.region}/jobs/${google_cloud_run_v2_job.voke.name}:run"
}

resource "google_cloud_scheduler_job" "rotate" {
  for_each  = var.rotation_schedule
  project   = var.project
  region    = var.region
  name      = "voke-${var.environment}-rotate-${replace(each.key, "_", "-")}"
  schedule  = each.value
  time_zone = "Etc/UTC"
  retry_config {
    retry_count = 0
  }
  http_target {
    http_method = "POST"
    uri         = local.run_uri
    body = base64encode(jsonencode({
      overrides = { containerOverrides = [{ args = ["rotate", "due", "--run", "--json"] }] }
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
