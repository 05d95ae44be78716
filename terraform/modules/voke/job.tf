# The job that runs voke; each scheduler job runs it with its own arguments.
resource "google_secret_manager_secret" "config" {
  project   = var.project
  secret_id = "voke-config-${var.environment}"
  labels    = { managed-by = "voke" }
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "config" {
  secret      = google_secret_manager_secret.config.id
  secret_data = var.voke_config
}

resource "google_cloud_run_v2_job" "voke" {
  project             = var.project
  name                = "voke-${local.id_suffix}"
  location            = var.region
  deletion_protection = false
  template {
    task_count = 1
    template {
      service_account = google_service_account.voke.email
      max_retries     = 0 # a rotation resumes itself on the next run; never run one twice at once
      timeout         = "3600s"
      # Direct VPC egress: a rotation's login test and the drills' canary connect to Cloud SQL's
      # private IP (voke.toml's db_host unset); Google APIs still go out the default way
      vpc_access {
        network_interfaces {
          network    = var.network
          subnetwork = var.subnetwork
        }
        egress = "PRIVATE_RANGES_ONLY"
      }
      containers {
        image = var.image
        args  = ["doctor", "--json"]
        env {
          name  = "VOKE_CONFIG"
          value = "/etc/voke/voke.toml"
        }
        env {
          name  = "VOKE_ENV"
          value = var.environment
        }
        env {
          name  = "VOKE_OUTPUT"
          value = "json"
        }
        env {
          # each audit event also as a JSON log record on stderr: this container's VOKE_HOME (audit
          # log, rotation history) ends with the run, Cloud Logging keeps the events
          name  = "VOKE_LOG_LEVEL"
          value = "info"
        }
        dynamic "env" {
          # rotation.notify_webhook is a credential (anyone holding it posts to the channel): read
          # from Secret Manager at each run, never in voke.toml's secret or the job's definition
          for_each = var.notify_webhook_secret == "" ? [] : [var.notify_webhook_secret]
          content {
            name = "VOKE_ROTATION__NOTIFY_WEBHOOK"
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }
        volume_mounts {
          name       = "config"
          mount_path = "/etc/voke"
        }
      }
      volumes {
        name = "config"
        secret {
          secret = google_secret_manager_secret.config.secret_id
          items {
            version = google_secret_manager_secret_version.config.version
            path    = "voke.toml"
          }
        }
      }
    }
  }
  # its account must be able to read the mounted voke.toml before a revision of the job is made
  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.voke_reads_its_config,
    google_secret_manager_secret_iam_member.voke_reads_its_webhook,
  ]
}
