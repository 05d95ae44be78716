# Alert policies: a failed rotation (voke's metric), the newest backup older than 24 h
# (voke's metric, written by `voke dr check`), replica lag over 60 s and WAL archive
# failures (Cloud SQL's metrics).
resource "google_monitoring_alert_policy" "rotation_failed" {
  project               = var.project
  display_name          = "voke ${var.environment}: a credential rotation failed"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "rotation result is 0"
    condition_threshold {
      filter          = "metric.type = \"custom.googleapis.com/voke/rotation/result\" AND resource.type = \"global\""
      comparison      = "COMPARISON_LT"
      threshold_value = 1
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MIN"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "backup_age" {
  project               = var.project
  display_name          = "voke ${var.environment}: newest backup older than 24 h"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "backup age over 86400 s"
    condition_threshold {
      filter          = "metric.type = \"custom.googleapis.com/voke/dr/backup_age_seconds\" AND resource.type = \"global\""
      comparison      = "COMPARISON_GT"
      threshold_value = 86400
      duration        = "0s"
      aggregations {
        alignment_period   = "900s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
  # The metric is written by the scheduled `voke dr check`: silence for an hour means the checks
  # stopped (a failing job, a lost permission), which must not pass for a fresh backup.
  conditions {
    display_name = "no backup age reported for 1 h (the scheduled dr check is not running)"
    condition_absent {
      filter   = "metric.type = \"custom.googleapis.com/voke/dr/backup_age_seconds\" AND resource.type = \"global\""
      duration = "3600s"
      aggregations {
        alignment_period   = "900s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "replica_lag" {
  project               = var.project
  display_name          = "voke ${var.environment}: replication lag over 5 min"
  combiner              = "OR"
  notification_channels = var.notification_channels
  # The platform's alert (PRODUCT.md: replication lag over 5 min). `voke dr check` is stricter
  # (dr.max_lag_seconds, 60 s) and fails a run before this pages anyone.
  conditions {
    display_name = "replica_lag > 300 s for 1 min"
    condition_threshold {
      filter          = "metric.type = \"cloudsql.googleapis.com/database/replication/replica_lag\" AND resource.type = \"cloudsql_database\""
      comparison      = "COMPARISON_GT"
      threshold_value = 300
      duration        = "60s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "log_archive_failures" {
  project               = var.project
  display_name          = "voke ${var.environment}: WAL archiving failures"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "log_archive_failure_count > 0"
    condition_threshold {
      filter          = "metric.type = \"cloudsql.googleapis.com/database/replication/log_archive_failure_count\" AND resource.labels.database_id = \"${var.project}:${var.instance}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
}
