output "service_account" {
  value       = google_service_account.voke.email
  description = "The identity voke runs as"
}

output "job" {
  value       = google_cloud_run_v2_job.voke.name
  description = "The Cloud Run job that runs voke"
}

output "scheduled_role" {
  value       = google_project_iam_custom_role.voke_scheduled.id
  description = "The project-wide role of voke's account (and the operators): what the scheduled commands call"
}

output "operator_role" {
  value       = google_project_iam_custom_role.voke_operator.id
  description = "The project-wide role of the operators alone: DR, drills, making a secret"
}
