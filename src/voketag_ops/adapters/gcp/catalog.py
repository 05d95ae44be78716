"""Names voke uses on Google Cloud, in one place and without importing google.

The Monitoring adapter writes under METRIC_PREFIX, the doctor checks REQUIRED_APIS and
PROJECT_PERMISSIONS, and the Terraform tests compare `terraform/` against these same constants.
"""

from __future__ import annotations

# voke's own metrics: one prefix, defined here only.
METRIC_PREFIX = "custom.googleapis.com/voke/"
ROTATION_RESULT = (
    METRIC_PREFIX + "rotation/result"
)  # INT64 gauge: 1 succeeded, 0 failed; labels secret, kind, status
ROTATION_AGE = METRIC_PREFIX + "rotation/age_days"  # DOUBLE gauge: age of `current`; label secret
DRILL_RTO = METRIC_PREFIX + "drill/rto_seconds"  # DOUBLE gauge; label scenario
DRILL_RPO = METRIC_PREFIX + "drill/rpo_seconds"  # DOUBLE gauge; label scenario
COVERAGE = METRIC_PREFIX + "coverage/percent"  # DOUBLE gauge; label service
BACKUP_AGE = METRIC_PREFIX + "dr/backup_age_seconds"  # DOUBLE gauge: newest SUCCESSFUL backup (`dr check`)
VOKE_METRICS = frozenset({ROTATION_RESULT, ROTATION_AGE, DRILL_RTO, DRILL_RPO, COVERAGE, BACKUP_AGE})
# The labels of each (exactly those: terraform/ declares each metric's descriptor with them, so
# an alert policy on a metric not yet written can be created, and a point with another label
# would be refused), and its value type.
METRIC_LABELS: dict[str, tuple[str, ...]] = {
    ROTATION_RESULT: ("secret", "kind", "status", "env"),
    ROTATION_AGE: ("secret", "env"),
    DRILL_RTO: ("scenario", "env"),
    DRILL_RPO: ("scenario", "env"),
    COVERAGE: ("service", "env"),
    BACKUP_AGE: ("instance",),
}
INT64_METRICS = frozenset({ROTATION_RESULT})  # the others are DOUBLE

# Cloud SQL metrics voke reads (resource cloudsql_database, database_id = "project:instance").
REPLICA_LAG = "cloudsql.googleapis.com/database/replication/replica_lag"  # seconds, on the replica
REPLICA_BYTE_LAG = (
    "cloudsql.googleapis.com/database/postgresql/replication/replica_byte_lag"  # on the primary
)
LOG_ARCHIVE_FAILURES = "cloudsql.googleapis.com/database/replication/log_archive_failure_count"  # DELTA
LOG_ARCHIVE_SUCCESSES = "cloudsql.googleapis.com/database/replication/log_archive_success_count"  # DELTA
DATABASE_UP = "cloudsql.googleapis.com/database/up"
CLOUDSQL_METRICS = frozenset(
    {REPLICA_LAG, REPLICA_BYTE_LAG, LOG_ARCHIVE_FAILURES, LOG_ARCHIVE_SUCCESSES, DATABASE_UP}
)

# APIs voke calls through GcpContext's clients, whose base URLs a cloud environment's `endpoints`
# may set (each by the short name its adapter asks GcpContext for; GcpContext.endpoint refuses
# any other).
CLIENT_APIS = (
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
    "run.googleapis.com",
    "monitoring.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "serviceusage.googleapis.com",
)
ENDPOINT_APIS = tuple(api.removesuffix(".googleapis.com") for api in CLIENT_APIS)
# APIs a cloud environment needs enabled: those, and the API Keys API, which Google Maps keys
# (rotation.api_keys, provider "maps") call through their own client (its URL in their options).
REQUIRED_APIS = (*CLIENT_APIS, "apikeys.googleapis.com")
# Also enabled by terraform/ for running voke on a schedule (not called by voke itself).
SCHEDULING_APIS = ("cloudscheduler.googleapis.com", "pubsub.googleapis.com")

# Every permission the adapters' calls need, in three sets by where and to whom terraform/ grants
# them. The unattended job runs only `doctor`, `rotate due --run`, `rotate cleanup` and `dr check`:
# its account holds the first two sets, never the third.
# - On the project, for voke's account (and the operators): what the scheduled commands call; the
#   role voke_scheduled grants exactly these, and `voke doctor` tests exactly these.
PROJECT_PERMISSIONS = (
    # Secret Manager: every secret's metadata, never a value (a rotation left unfinished is found
    # by listing the secrets and their versions); the managed secrets' versions: SECRET_PERMISSIONS
    "secretmanager.secrets.get",
    "secretmanager.secrets.list",
    "secretmanager.versions.list",
    # Cloud SQL Admin: users (rotation); instances, their operations and backups (dr check, doctor)
    "cloudsql.backupRuns.list",
    "cloudsql.instances.get",
    "cloudsql.users.list",
    "cloudsql.users.update",
    # Cloud Run: revisions pinned to versions, traffic; health checks of a revision's tag URL
    # (services that require authentication)
    "run.operations.get",
    "run.routes.invoke",
    "run.revisions.get",
    "run.revisions.list",
    "run.services.get",
    "run.services.update",
    # Cloud Monitoring
    "monitoring.timeSeries.create",
    "monitoring.timeSeries.list",
    # API Keys: a Google Maps key's rotation (keys.get, getKeyString, create and its operation) and
    # cleanup (keys.delete), as voke's own identity when the key has no admin_secret. API keys have
    # no IAM policy of their own: these are the project's, on every key of it
    "apikeys.keys.create",
    "apikeys.keys.delete",
    "apikeys.keys.get",
    "apikeys.keys.getKeyString",
    "serviceusage.operations.get",
    # doctor
    "resourcemanager.projects.get",
    "serviceusage.services.get",
)
# - On each secret voke rotates alone (the role voke_secrets, bound on each secret terraform/
#   creates): values (also `dr check`'s `connections`: the host a connection secret's `current`, and each
#   version the services serve, names),
#   versions' states, aliases and annotations (rotation state). Project-wide they would give the
#   job every secret of the project. testIamPermissions on the project cannot see them, so
#   `voke doctor` does not test them.
SECRET_PERMISSIONS = (
    "secretmanager.secrets.update",
    "secretmanager.versions.access",
    "secretmanager.versions.add",
    "secretmanager.versions.destroy",
    "secretmanager.versions.disable",
    "secretmanager.versions.enable",
)
# - On the project, for operators only (the role voke_operator, granted to terraform/'s
#   `operators`): what only a person runs: `dr restore|failover|failback` (clones, promotions, a
#   switchover, the topology labels), the drills' scratch instances (and the cloud drill's sweep
#   for leftover ones, which lists the project's instances), and making a secret (`secrets add`,
#   `rotate ... --init`, adopting a key; a Maps key is found by its value: keys.lookupKey).
#   Not `voke doctor`'s: the job's account lacks them.
OPERATOR_PERMISSIONS = (
    "secretmanager.secrets.create",
    "apikeys.keys.lookup",
    "cloudsql.instances.clone",
    "cloudsql.instances.create",
    "cloudsql.instances.delete",
    "cloudsql.instances.failover",  # instances.switchover (dr failback): none documented of its own
    "cloudsql.instances.list",  # the cloud drill's sweep for leftover scratch instances
    "cloudsql.instances.promoteReplica",
    "cloudsql.instances.update",
)

# Granted on single service accounts, never project-wide (project-wide, they would let voke mint
# keys for, or deploy as, any account in the project, its owners' included):
# - on the Cloud Run services' runtime accounts: redeploying a service (run.services.update)
#   needs actAs on the account it runs as;
RUNTIME_ACCOUNT_PERMISSIONS = ("iam.serviceAccounts.actAs",)
# - on the accounts whose keys `voke rotate sa-key` rotates.
ROTATED_ACCOUNT_PERMISSIONS = (
    "iam.serviceAccountKeys.create",
    "iam.serviceAccountKeys.delete",
    "iam.serviceAccountKeys.disable",
    "iam.serviceAccountKeys.enable",
    "iam.serviceAccountKeys.list",
)
# - on voke's own Cloud Run job, which Cloud Scheduler runs as voke's account with the command
#   line of each scheduled run (voke itself never calls it): project-wide, they would let that
#   account run any job of the project with arguments of its choosing, as that job's account.
JOB_PERMISSIONS = ("run.jobs.run", "run.jobs.runWithOverrides")
# Everything voke calls anywhere (an operator's whole set; the fakes grant it all).
PERMISSIONS = (
    PROJECT_PERMISSIONS
    + SECRET_PERMISSIONS
    + OPERATOR_PERMISSIONS
    + RUNTIME_ACCOUNT_PERMISSIONS
    + ROTATED_ACCOUNT_PERMISSIONS
)

PRIMITIVE_ROLES = frozenset({"roles/owner", "roles/editor", "roles/viewer"})
