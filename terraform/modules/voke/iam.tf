# voke runs as its own service account with exactly the permissions its adapters call
# (catalog.py); no primitive role anywhere. The unattended job runs only `doctor`, `rotate due
# --run`, `rotate cleanup` and `dr check`: its account holds what those call
# (catalog.PROJECT_PERMISSIONS, project-wide; catalog.SECRET_PERMISSIONS, on each managed secret
# alone), never what only a person runs (dr restore, failover, failback, the drills, making a
# secret: catalog.OPERATOR_PERMISSIONS), which `operators` hold besides everything the account
# holds. Acting as a service account and managing its keys are granted on the named accounts
# alone: project-wide they would let voke deploy as, or mint keys for, any account in the
# project (its owners' too).
resource "google_service_account" "voke" {
  project      = var.project
  account_id   = "voke-${local.id_suffix}"
  display_name = "voke operations (${var.environment})"
  depends_on   = [google_project_service.apis]
}

# Whoever holds what voke's account holds (the operators too), each by a key known before apply:
# the account's email is not.
locals {
  voke_member = "serviceAccount:${google_service_account.voke.email}"
  holders     = merge({ voke = local.voke_member }, { for m in var.operators : m => m })
}

resource "google_project_iam_custom_role" "voke_scheduled" {
  project     = var.project
  role_id     = "voke_scheduled_${local.role_suffix}"
  title       = "voke scheduled runs (${var.environment})"
  description = "The project permissions of voke's scheduled commands: doctor, rotate due --run, rotate cleanup, dr check"
  permissions = [
    "secretmanager.secrets.get",
    "secretmanager.secrets.list",
    "secretmanager.versions.list",
    "cloudsql.backupRuns.list",
    "cloudsql.instances.get",
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
    # a Google Maps key's rotation and cleanup (API Keys API; no per-key IAM exists)
    "apikeys.keys.create",
    "apikeys.keys.delete",
    "apikeys.keys.get",
    "apikeys.keys.getKeyString",
    "serviceusage.operations.get",
    "resourcemanager.projects.get",
    "serviceusage.services.get",
  ]
  depends_on = [google_project_service.apis]
}

# catalog.SECRET_PERMISSIONS, on each secret voke rotates alone (secrets.tf): its values, versions,
# aliases and annotations; project-wide they would give the job every secret of the project.
resource "google_project_iam_custom_role" "voke_secrets" {
  project     = var.project
  role_id     = "voke_secrets_${local.role_suffix}"
  title       = "voke secrets (${var.environment})"
  description = "Read, add, disable and destroy the versions of a secret voke rotates"
  permissions = [
    "secretmanager.secrets.update",
    "secretmanager.versions.access",
    "secretmanager.versions.add",
    "secretmanager.versions.destroy",
    "secretmanager.versions.disable",
    "secretmanager.versions.enable",
  ]
  depends_on = [google_project_service.apis]
}

# catalog.OPERATOR_PERMISSIONS, for the people in `operators` alone.
resource "google_project_iam_custom_role" "voke_operator" {
  project     = var.project
  role_id     = "voke_operator_${local.role_suffix}"
  title       = "voke operator (${var.environment})"
  description = "What only a person runs with voke: dr restore, failover, failback, the drills, making a secret"
  permissions = [
    "secretmanager.secrets.create",
    "apikeys.keys.lookup", # adopting a Maps key: found by its value
    "cloudsql.instances.clone",
    "cloudsql.instances.create",
    "cloudsql.instances.delete",
    "cloudsql.instances.failover", # instances.switchover (dr failback): no documented permission of its own
    "cloudsql.instances.list",     # the cloud drill's sweep for leftover scratch instances
    "cloudsql.instances.promoteReplica",
    "cloudsql.instances.update",
  ]
  depends_on = [google_project_service.apis]
}

# The only project-wide grants: voke_scheduled to the account and the operators, voke_operator to
# the operators.
locals {
  project_grants = merge(
    { for k, m in local.holders : "voke_scheduled:${k}" => { member = m, role = google_project_iam_custom_role.voke_scheduled.id } },
    { for m in var.operators : "voke_operator:${m}" => { member = m, role = google_project_iam_custom_role.voke_operator.id } },
  )
  secret_grants = {
    for pair in setproduct(var.secrets, keys(local.holders)) : "${pair[0]}:${pair[1]}" => { secret = pair[0], member = local.holders[pair[1]] }
  }
}

resource "google_project_iam_member" "voke" {
  for_each = local.project_grants
  project  = var.project
  role     = each.value.role
  member   = each.value.member
}

resource "google_secret_manager_secret_iam_member" "voke" {
  for_each  = local.secret_grants
  project   = var.project
  secret_id = google_secret_manager_secret.managed[each.value.secret].secret_id
  role      = google_project_iam_custom_role.voke_secrets.id
  member    = each.value.member
}

# The job reads its voke.toml (job.tf) as a mounted secret: that secret alone.
resource "google_secret_manager_secret_iam_member" "voke_reads_its_config" {
  project   = var.project
  secret_id = google_secret_manager_secret.config.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.voke_member
}

# ... and the secret holding rotation.notify_webhook (job.tf's VOKE_ROTATION__NOTIFY_WEBHOOK), when one is named.
resource "google_secret_manager_secret_iam_member" "voke_reads_its_webhook" {
  count     = var.notify_webhook_secret == "" ? 0 : 1
  project   = var.project
  secret_id = var.notify_webhook_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = local.voke_member
}

# catalog.RUNTIME_ACCOUNT_PERMISSIONS, on each Cloud Run service's runtime account: redeploying a
# service (run.services.update, a rotation's pinned revision) needs actAs on the account it runs as.
resource "google_project_iam_custom_role" "voke_deployer" {
  project     = var.project
  role_id     = "voke_deployer_${local.role_suffix}"
  title       = "voke deployer (${var.environment})"
  description = "Redeploy Cloud Run services running as this account"
  permissions = ["iam.serviceAccounts.actAs"]
  depends_on  = [google_project_service.apis]
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
  depends_on = [google_project_service.apis]
}

# Each of those two roles, granted to voke's account and the operators (a failover redeploys the
# services too) on each account named for it, and nowhere else. (The account's keys are those it
# had before operators existed: a binding under a new key could be removed by the old one's destroy.)
locals {
  account_roles = {
    voke_deployer    = { role = google_project_iam_custom_role.voke_deployer.id, accounts = var.runtime_service_accounts }
    voke_key_rotator = { role = google_project_iam_custom_role.voke_key_rotator.id, accounts = var.rotated_service_accounts }
  }
  account_grants = merge([
    for name, grant in local.account_roles : {
      for pair in setproduct(grant.accounts, keys(local.holders)) :
      (pair[1] == "voke" ? "${name}:${pair[0]}" : "${name}:${pair[0]}:${pair[1]}") => { account = pair[0], role = grant.role, member = local.holders[pair[1]] }
    }
  ]...)
}

resource "google_service_account_iam_member" "voke" {
  for_each           = local.account_grants
  service_account_id = "projects/${var.project}/serviceAccounts/${each.value.account}"
  role               = each.value.role
  member             = each.value.member
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
  depends_on  = [google_project_service.apis]
}

resource "google_cloud_run_v2_job_iam_member" "voke_runs_its_job" {
  project  = var.project
  location = var.region
  name     = google_cloud_run_v2_job.voke.name
  role     = google_project_iam_custom_role.voke_job_runner.id
  member   = local.voke_member
}
