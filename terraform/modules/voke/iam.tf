# voke runs as its own service account with exactly the permissions its adapters call
# (catalog.py); no primitive role anywhere. Project-wide only what is about the project
# (catalog.PROJECT_PERMISSIONS); acting as a service account and managing its keys are granted
# on the named accounts alone: project-wide they would let voke deploy as, or mint keys for,
# any account in the project (its owners' too).
resource "google_service_account" "voke" {
  project      = var.project
  account_id   = "voke-${local.id_suffix}"
  display_name = "voke operations (${var.environment})"
}

resource "google_project_iam_custom_role" "voke_operator" {
  project     = var.project
  role_id     = "voke_operator_${local.role_suffix}"
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
    "secretmanager.versions.list",
    "cloudsql.backupRuns.list",
    "cloudsql.instances.clone",
    "cloudsql.instances.create",
    "cloudsql.instances.delete",
    "cloudsql.instances.failover", # instances.switchover (dr failback): no documented permission of its own
    "cloudsql.instances.get",
    "cloudsql.instances.list",
    "cloudsql.instances.promoteReplica",
    "cloudsql.instances.update",
    "cloudsql.users.list",
    "cloudsql.users.update",
    "run.operations.get",
    "run.routes.invoke",
    "run.revisions.get",
    "run.revisions.list",
    "run.services.get",
    "run.services.update",
    "monitoring.timeSeries.create",
    "monitoring.timeSeries.list",
    "resourcemanager.projects.get",
    "serviceusage.services.get",
  ]
}

resource "google_project_iam_member" "voke_operator" {
  project = var.project
  role    = google_project_iam_custom_role.voke_operator.id
  member  = "serviceAccount:${google_service_account.voke.email}"
}

# catalog.RUNTIME_ACCOUNT_PERMISSIONS, on each Cloud Run service's runtime account: redeploying a
# service (run.services.update, a rotation's pinned revision) needs actAs on the account it runs as.
resource "google_project_iam_custom_role" "voke_deployer" {
  project     = var.project
  role_id     = "voke_deployer_${local.role_suffix}"
  title       = "voke deployer (${var.environment})"
  description = "Redeploy Cloud Run services running as this account"
  permissions = ["iam.serviceAccounts.actAs"]
}

# catalog.ROTATED_ACCOUNT_PERMISSIONS, on each account whose keys `voke rotate sa-key` rotates.
resource "google_project_iam_custom_role" "voke_key_rotator" {
  project     = var.project
  role_id     = "voke_key_rotator_${local.role_suffix}"
  title       = "voke key rotator (${var.environment})"
  description = "Rotate this service account's user-managed keys"
  permissions = [
    "iam.serviceAccountKeys.create",
    "iam.serviceAccountKeys.delete",
    "iam.serviceAccountKeys.disable",
    "iam.serviceAccountKeys.enable",
    "iam.serviceAccountKeys.list",
  ]
}

# Each of those two roles, granted to voke on each account named for it (and nowhere else).
locals {
  account_grants = merge(
    { for a in var.runtime_service_accounts : "voke_deployer:${a}" => { account = a, role = google_project_iam_custom_role.voke_deployer.id } },
    { for a in var.rotated_service_accounts : "voke_key_rotator:${a}" => { account = a, role = google_project_iam_custom_role.voke_key_rotator.id } },
  )
}

resource "google_service_account_iam_member" "voke" {
  for_each           = local.account_grants
  service_account_id = "projects/${var.project}/serviceAccounts/${each.value.account}"
  role               = each.value.role
  member             = "serviceAccount:${google_service_account.voke.email}"
}

# catalog.JOB_PERMISSIONS, on voke's own job only: Cloud Scheduler runs it as voke's account with
# each scheduled command line. Project-wide, this would let the account run any job of the
# project with arguments of its choosing, as that job's own account.
resource "google_project_iam_custom_role" "voke_job_runner" {
  project     = var.project
  role_id     = "voke_job_runner_${local.role_suffix}"
  title       = "voke job runner (${var.environment})"
  description = "Run the voke job with the arguments of a scheduled run"
  permissions = ["run.jobs.run", "run.jobs.runWithOverrides"]
}

resource "google_cloud_run_v2_job_iam_member" "voke_runs_its_job" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_job.voke.name
  role     = google_project_iam_custom_role.voke_job_runner.id
  member   = "serviceAccount:${google_service_account.voke.email}"
}
