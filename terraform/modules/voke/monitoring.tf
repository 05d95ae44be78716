# Alert policies: a failed rotation (voke's metric), the newest backup older than 24 h
# (voke's metric, written by `voke dr check`), replica lag over 5 min and WAL archive
# failures (Cloud SQL's metrics), and a scheduled run of voke that failed or did not happen.

# Every policy watches this environment alone: several environments may share a project (their
# names tell them apart), and a policy on the whole project would page staging's failures as
# prod's, take staging's points for prod's (an absence condition never fires while another
# environment still reports) and watch the drills' scratch instances. voke's metrics carry `env`
# (rotation) or the primary's bare `instance` name (`dr check`); Cloud SQL's, the `database_id`
# "project:instance". Both configured instances: after `voke dr failover` the replica is the
# primary (its backups, its archive) and the old primary, rebuilt, the replica (its lag); a
# drill's scratch instances are neither.
locals {
  instances      = compact([var.instance, var.replica])
  instance_names = join(", ", [for name in local.instances : "\"${name}\""])
  database_ids   = join(", ", [for name in local.instances : "\"${var.project}:${name}\""])
}

# voke's own metrics (catalog.METRIC_LABELS), declared here: an alert policy on a custom metric no
# point was written to yet is refused (404), and the first rotation may be weeks away. A point
# with a label its descriptor lacks is refused too: the labels are exactly those voke writes.
# The descriptors are the project's, not an environment's (every environment writes the same
# types): exactly one configuration per project declares them (manage_metric_descriptors), and
# none deletes them, which would delete every environment's points of them too.
locals {
  voke_metrics = {
    "rotation/result"       = { value_type = "INT64", labels = ["secret", "kind", "status", "env"], description = "1 when a rotation succeeded, 0 when it was rolled back or needs a person" }
    "rotation/age_days"     = { value_type = "DOUBLE", labels = ["secret", "env"], description = "age in days of the current version, written when a rotation succeeds" }
    "drill/rto_seconds"     = { value_type = "DOUBLE", labels = ["scenario", "env"], description = "RTO a drill achieved" }
    "drill/rpo_seconds"     = { value_type = "DOUBLE", labels = ["scenario", "env"], description = "RPO a drill achieved" }
    "coverage/percent"      = { value_type = "DOUBLE", labels = ["service", "env"], description = "a service's test coverage" }
    "dr/backup_age_seconds" = { value_type = "DOUBLE", labels = ["instance"], description = "age of the newest SUCCESSFUL backup, written by voke dr check" }
  }
}

resource "google_monitoring_metric_descriptor" "voke" {
  for_each     = { for type, metric in local.voke_metrics : type => metric if var.manage_metric_descriptors }
  project      = var.project
  type         = "custom.googleapis.com/voke/${each.key}"
  metric_kind  = "GAUGE"
  value_type   = each.value.value_type
  display_name = "voke ${each.key}"
  description  = each.value.description
  dynamic "labels" {
    for_each = each.value.labels
    content {
      key        = labels.value
      value_type = "STRING"
    }
  }
  lifecycle {
    # a destroy (of this environment, or a label change that replaces one) would take the other
    # environments' metric data with it: hand the descriptors over instead (terraform/README.md)
    prevent_destroy = true
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "rotation_failed" {
  depends_on            = [google_monitoring_metric_descriptor.voke]
  project               = var.project
  display_name          = "voke ${var.environment}: a credential rotation failed"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "rotation result is 0"
    condition_threshold {
      filter          = "metric.type = \"custom.googleapis.com/voke/rotation/result\" AND resource.type = \"global\" AND metric.labels.env = \"${var.environment}\""
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
  depends_on            = [google_monitoring_metric_descriptor.voke]
  project               = var.project
  display_name          = "voke ${var.environment}: newest backup older than 24 h"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "backup age over 86400 s"
    condition_threshold {
      filter          = "metric.type = \"custom.googleapis.com/voke/dr/backup_age_seconds\" AND resource.type = \"global\" AND metric.labels.instance = one_of(${local.instance_names})"
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
  # stopped (a failing job, a lost permission), which must not pass for a fresh backup. One
  # series across instances: after a failover the old primary's series ends, and judged per
  # series its absence would page an hour later while the checks run on.
  conditions {
    display_name = "no backup age reported for 1 h (the scheduled dr check is not running)"
    condition_absent {
      filter   = "metric.type = \"custom.googleapis.com/voke/dr/backup_age_seconds\" AND resource.type = \"global\" AND metric.labels.instance = one_of(${local.instance_names})"
      duration = "3600s"
      aggregations {
        alignment_period     = "900s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "replica_lag" {
  depends_on            = [google_project_service.apis]
  project               = var.project
  display_name          = "voke ${var.environment}: replication lag over 5 min"
  combiner              = "OR"
  notification_channels = var.notification_channels
  # The platform's alert (PRODUCT.md: replication lag over 5 min). `voke dr check` is stricter
  # (dr.max_lag_seconds, 60 s) and fails a run before this pages anyone.
  conditions {
    display_name = "replica_lag > 300 s for 1 min"
    condition_threshold {
      filter          = "metric.type = \"cloudsql.googleapis.com/database/replication/replica_lag\" AND resource.type = \"cloudsql_database\" AND resource.labels.database_id = one_of(${local.database_ids})"
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
  depends_on            = [google_project_service.apis]
  project               = var.project
  display_name          = "voke ${var.environment}: WAL archiving failures"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "log_archive_failure_count > 0"
    condition_threshold {
      filter          = "metric.type = \"cloudsql.googleapis.com/database/replication/log_archive_failure_count\" AND resource.type = \"cloudsql_database\" AND resource.labels.database_id = one_of(${local.database_ids})"
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

# The scheduled runs themselves: an execution that failed (a rotation refused or waiting for a
# person, exit 5 or 7; a backend down; a bad configuration: no rotation/result point is written
# for those) or no execution at all for 2 h (the job runs `dr check` every 15 minutes).
resource "google_monitoring_alert_policy" "job_runs" {
  project               = var.project
  display_name          = "voke ${var.environment}: a scheduled run of voke failed or did not run"
  combiner              = "OR"
  notification_channels = var.notification_channels
  conditions {
    display_name = "an execution of the voke job failed"
    condition_threshold {
      filter          = "metric.type = \"run.googleapis.com/job/completed_execution_count\" AND resource.type = \"cloud_run_job\" AND resource.labels.job_name = \"${google_cloud_run_v2_job.voke.name}\" AND metric.labels.result = \"failed\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
  conditions {
    display_name = "no execution of the voke job completed for 2 h"
    condition_absent {
      filter   = "metric.type = \"run.googleapis.com/job/completed_execution_count\" AND resource.type = \"cloud_run_job\" AND resource.labels.job_name = \"${google_cloud_run_v2_job.voke.name}\""
      duration = "7200s"
      aggregations {
        alignment_period     = "900s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}
