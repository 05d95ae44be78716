# voke runs as its own service account holding one custom role with exactly the
# permissions its adapters call (catalog.PERMISSIONS); no primitive role anywhere.
resource "google_service_account" "voke" {
  project      = var.project
  account_id   = "voke-${var.environment}"
  display_name = "voke operations (${var.environment})"
}

resource "google_project_iam_custom_role" "voke_operator" {
  project     = var.project
  role_id     = "voke_operator_${var.environment}"
  title       = "voke operator (${var.environment})"
  description = "Only the permissions voke's Google Cloud adapters use"
  permissions = [
    "secretmanager.secrets.create",
    "secretmanager.secrets.get",
    "secretmanager.secrets.list",
    "secretmanager.secrets.update",
    "secretmanager.versions.access",
    "secretmanager.versions.add",
    "secretmanager.versions.destroy",
    "secretmanager.versions.disable",
    "secretmanager.versions.enable",
    "secretmanager.versions.get",
    "secretmanager.versions.list",
    "cloudsql.backupRuns.get",
    "cloudsql.backupRuns.list",
    "cloudsql.instances.clone",
    "cloudsql.instances.create",
    "cloudsql.instances.delete",
    "cloudsql.instances.failover",
    "cloudsql.instances.get",
    "cloudsql.instances.list",
    "cloudsql.instances.promoteReplica",
    "cloudsql.instances.update",
    "cloudsql.users.list",
    "cloudsql.users.update",
    "run.jobs.run",
    "run.jobs.runWithOverrides",
    "run.operations.get",
    "run.routes.invoke",
    "run.revisions.get",
    "run.revisions.list",
    "run.services.get",
    "run.services.list",
    "run.services.update",
    "iam.serviceAccounts.actAs",
    "monitoring.metricDescriptors.create",
    "monitoring.metricDescriptors.list",
    "monitoring.timeSeries.create",
    "monitoring.timeSeries.list",
    "iam.serviceAccountKeys.create",
    "iam.serviceAccountKeys.delete",
    "iam.serviceAccountKeys.disable",
    "iam.serviceAccountKeys.enable",
    "iam.serviceAccountKeys.get",
    "iam.serviceAccountKeys.list",
    "resourcemanager.projects.get",
    "serviceusage.services.get",
  ]
}

resource "google_project_iam_member" "voke_operator" {
  project = var.project
  role    = google_project_iam_custom_role.voke_operator.id
  member  = "serviceAccount:${google_service_account.voke.email}"
}
