# The secrets voke rotates: Secret Manager publishes rotation reminders to a topic;
# destruction of a version is delayed so a mistaken cleanup can be undone.
resource "google_pubsub_topic" "rotation" {
  # checkov:skip=CKV_GCP_83:the topic carries secret names and rotation times, never a secret value
  project    = var.project
  name       = "voke-${var.environment}-secret-rotation"
  depends_on = [google_project_service.apis]
}

# Secret Manager's service agent publishes the reminders. Google creates it on first use only,
# so on a new project a binding to its name alone could fail: have it made first.
resource "google_project_service_identity" "secretmanager" {
  provider   = google-beta
  project    = var.project
  service    = "secretmanager.googleapis.com"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "secretmanager_publishes" {
  project = var.project
  topic   = google_pubsub_topic.rotation.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_project_service_identity.secretmanager.email}"
}

resource "google_secret_manager_secret" "managed" {
  for_each            = toset(var.secrets)
  project             = var.project
  secret_id           = each.value
  labels              = { managed-by = "voke" }
  version_destroy_ttl = var.version_destroy_ttl
  replication {
    auto {}
  }
  topics {
    name = google_pubsub_topic.rotation.id
  }
  rotation {
    rotation_period    = "2592000s" # 30 days: a reminder; voke's schedule decides
    next_rotation_time = "2030-01-01T02:00:00Z"
  }
  lifecycle {
    # replication cannot change in place: a secret of the running platform imported here keeps its
    # own, never replaced (which would destroy every version the services read)
    ignore_changes = [rotation[0].next_rotation_time, version_aliases, annotations, replication]
  }
  depends_on = [google_pubsub_topic_iam_member.secretmanager_publishes]
}

# The Cloud Run services read these secrets pinned to a version: each runtime account gets
# secretAccessor on the managed secrets the services read (runtime_secrets) and on no other (an
# API key's admin_secret is voke's alone). Without it a rotation's new revision cannot read its
# version, fails its health check, and every rotation rolls back.
locals {
  runtime_reads = {
    for pair in setproduct(var.runtime_secrets, var.runtime_service_accounts) :
    "${pair[0]}:${pair[1]}" => { secret = pair[0], account = pair[1] }
  }
}

resource "google_secret_manager_secret_iam_member" "runtime_reads" {
  for_each  = local.runtime_reads
  project   = var.project
  secret_id = google_secret_manager_secret.managed[each.value.secret].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${each.value.account}"
}
