"""terraform/ checked offline (no provider download): parsed with python-hcl2, then held to
voke's own constants: every variable used is declared, no primitive role, the custom
role grants exactly the permissions the adapters use, every cron is valid and equals
voke's configured schedule, every alert metric is a real Cloud SQL metric or one voke
writes, every API voke calls is enabled, and every managed secret has a rotation topic."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

hcl2 = pytest.importorskip("hcl2")

from voketag_ops.adapters.gcp import catalog  # noqa: E402
from voketag_ops.config import RotationSchedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "terraform"
MODULE = ROOT / "modules" / "voke"
VAR_REF = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
METRIC = re.compile(r'metric\.type\s*=\s*"([^"]+)"')
JOB_EXECUTIONS = "run.googleapis.com/job/completed_execution_count"  # Cloud Run's, of voke's job


def load(directory: Path) -> dict[str, list[Any]]:
    """Every top-level block of the .tf files in DIRECTORY, merged by block type."""
    opts = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        for key, blocks in hcl2.loads(path.read_text(), serialization_options=opts).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def resources(doc: dict[str, list[Any]], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block in doc.get("resource", []):
        out.update(block.get(kind, {}))
    return out


def variables(doc: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: body for block in doc.get("variable", []) for name, body in block.items()}


def walk(node: Any) -> list[tuple[str, Any]]:
    """(key, value) of every attribute, at any depth."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((key, value))
            out += walk(value)
    elif isinstance(node, list):
        for item in node:
            out += walk(item)
    return out


def strings(node: Any) -> list[str]:
    return [v for _k, v in walk(node) if isinstance(v, str)] + ([node] if isinstance(node, str) else [])


@pytest.fixture(scope="module")
def root() -> dict[str, list[Any]]:
    return load(ROOT)


@pytest.fixture(scope="module")
def module() -> dict[str, list[Any]]:
    return load(MODULE)


@pytest.mark.parametrize("directory", [ROOT, MODULE], ids=["root", "module"])
def test_every_variable_used_is_declared(directory):
    doc = load(directory)
    declared = set(variables(doc))
    used = {m for text in strings(doc) for m in VAR_REF.findall(text)}
    assert used - declared == set()
    assert all(body.get("description") for body in variables(doc).values())


def test_the_module_call_passes_exactly_the_module_variables(root, module):
    call = root["module"][0]["voke"]
    declared = variables(module)
    passed = set(call) - {"source"}
    assert passed <= set(declared)
    required = {name for name, body in declared.items() if "default" not in body}
    assert required <= passed


@pytest.mark.parametrize("directory", [ROOT, MODULE], ids=["root", "module"])
def test_no_primitive_role(directory):
    roles = [v for k, v in walk(load(directory)) if k == "role" and isinstance(v, str)]
    assert not set(roles) & catalog.PRIMITIVE_ROLES
    text = " ".join(p.read_text() for p in directory.glob("*.tf"))
    for role in catalog.PRIMITIVE_ROLES:
        assert f'"{role}"' not in text


def test_the_custom_roles_grant_exactly_what_voke_uses_where_it_uses_it(module):
    roles = resources(module, "google_project_iam_custom_role")
    assert sorted(roles["voke_scheduled"]["permissions"]) == sorted(catalog.PROJECT_PERMISSIONS)
    assert sorted(roles["voke_secrets"]["permissions"]) == sorted(catalog.SECRET_PERMISSIONS)
    assert sorted(roles["voke_operator"]["permissions"]) == sorted(catalog.OPERATOR_PERMISSIONS)
    assert sorted(roles["voke_deployer"]["permissions"]) == sorted(catalog.RUNTIME_ACCOUNT_PERMISSIONS)
    assert sorted(roles["voke_key_rotator"]["permissions"]) == sorted(catalog.ROTATED_ACCOUNT_PERMISSIONS)
    assert sorted(roles["voke_job_runner"]["permissions"]) == sorted(catalog.JOB_PERMISSIONS)
    (on_job,) = resources(module, "google_cloud_run_v2_job_iam_member").values()  # on voke's job alone
    assert on_job["name"] == "${google_cloud_run_v2_job.voke.name}"
    assert "google_project_iam_custom_role.voke_job_runner" in on_job["role"]
    assert on_job["member"] == "${local.voke_member}"
    project_wide = resources(module, "google_project_iam_member")
    assert set(project_wide) == {"voke"} and project_wide["voke"]["for_each"] == "${local.project_grants}"
    for name in ("voke_scheduled", "voke_secrets", "voke_operator"):
        assert not any(p.startswith("iam.") for p in roles[name]["permissions"])
    (binding,) = resources(module, "google_service_account_iam_member").values()  # per account only
    assert (
        "local.account_grants" in binding["for_each"]
        and "each.value.account" in binding["service_account_id"]
    )
    grants = json.dumps(module["locals"])
    for name, accounts in (
        ("voke_deployer", "runtime_service_accounts"),
        ("voke_key_rotator", "rotated_service_accounts"),
    ):
        assert f"var.{accounts}" in grants and f"google_project_iam_custom_role.{name}.id" in grants


def _locals(module: dict[str, list[Any]]) -> dict[str, Any]:
    return {k: v for block in module["locals"] for k, v in block.items()}


def test_the_job_account_holds_what_the_scheduled_commands_call_and_no_more(module):
    """The unattended job runs doctor, rotate due --run, rotate cleanup and dr check: a stolen
    token of its account must not delete, clone or promote a Cloud SQL instance (only the DR
    commands and the drills, run by a person, do), nor read every secret of the project."""
    dr_only = {
        "cloudsql.instances.delete",
        "cloudsql.instances.create",
        "cloudsql.instances.clone",
        "cloudsql.instances.promoteReplica",
        "cloudsql.instances.failover",
        "cloudsql.instances.update",
        "cloudsql.instances.list",  # the cloud drill's sweep for leftover scratch instances
        "secretmanager.secrets.create",  # secrets add, rotate --init, adopting a key
    }
    assert dr_only <= set(catalog.OPERATOR_PERMISSIONS)
    assert not dr_only & set(catalog.PROJECT_PERMISSIONS) and not dr_only & set(catalog.SECRET_PERMISSIONS)
    per_secret = {"secretmanager.secrets.update"} | {
        f"secretmanager.versions.{v}" for v in ("access", "add", "destroy", "disable", "enable")
    }
    assert set(catalog.SECRET_PERMISSIONS) == per_secret and not per_secret & set(catalog.PROJECT_PERMISSIONS)
    sets = (catalog.PROJECT_PERMISSIONS, catalog.SECRET_PERMISSIONS, catalog.OPERATOR_PERMISSIONS)
    assert sum(len(x) for x in sets) == len(set().union(*sets))  # disjoint
    assert set(catalog.PERMISSIONS) >= set().union(*sets)  # what the fakes grant
    scoped = _locals(module)
    # holders: voke's account (by a key known before apply) and each operator
    assert scoped["voke_member"] == "serviceAccount:${google_service_account.voke.email}"
    assert scoped["holders"] == "${merge({voke = local.voke_member}, {for m in var.operators : m => m})}"
    project = scoped["project_grants"]  # voke_scheduled to the holders, voke_operator to operators only
    assert (
        "for k, m in local.holders" in project
        and "google_project_iam_custom_role.voke_scheduled.id" in project
    )
    assert (
        "for m in var.operators" in project and "google_project_iam_custom_role.voke_operator.id" in project
    )
    assert project.count("voke_operator") == 2  # its key and its role, in the operators' part alone
    assert project.index("var.operators") < project.index("google_project_iam_custom_role.voke_operator.id")
    # the secrets' role on each managed secret alone, for each holder
    on_secret = resources(module, "google_secret_manager_secret_iam_member")
    assert set(on_secret) == {"voke", "voke_reads_its_config", "runtime_reads", "voke_reads_its_webhook"}
    assert on_secret["voke"]["for_each"] == "${local.secret_grants}"
    assert (
        on_secret["voke"]["secret_id"]
        == "${google_secret_manager_secret.managed[each.value.secret].secret_id}"
    )
    assert on_secret["voke"]["role"] == "${google_project_iam_custom_role.voke_secrets.id}"
    assert "setproduct(var.secrets, keys(local.holders))" in scoped["secret_grants"]
    # the job mounts its voke.toml: its account reads that secret alone, before the job is made
    config = on_secret["voke_reads_its_config"]
    assert config["secret_id"] == "${google_secret_manager_secret.config.secret_id}"
    assert (
        config["role"] == "roles/secretmanager.secretAccessor" and config["member"] == "${local.voke_member}"
    )
    job = resources(module, "google_cloud_run_v2_job")["voke"]
    assert "${google_secret_manager_secret_iam_member.voke_reads_its_config}" in job["depends_on"]
    # operators: IAM members, none by default
    operators = variables(module)["operators"]
    assert operators["type"] == "${list(string)}" and operators["default"] == []


def test_crons_are_valid_and_equal_to_voke_schedule(module):
    from cronsim import CronSim

    declared = variables(module)
    daily = declared["rotation_check_schedule"]["default"]
    assert daily == "0 2 * * *"
    jobs = resources(module, "google_cloud_scheduler_job")
    assert "for_each" not in jobs["rotate"]  # one job: one per kind would collide on January 1st
    assert declared["dr_check_schedule"]["default"] == "*/15 * * * *"
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for cron in [daily, declared["dr_check_schedule"]["default"]]:
        next(CronSim(cron, start))  # raises on an invalid expression
    for cron in RotationSchedule().model_dump().values():  # every voke default falls on the daily run
        due = next(CronSim(cron, start))
        assert (due.hour, due.minute) == (2, 0) and next(CronSim(daily, due - timedelta(minutes=1))) == due
    assert all(job["time_zone"] == "Etc/UTC" for job in jobs.values())
    args = '\\"rotate\\", \\"due\\", \\"--run\\", \\"--yes\\", \\"--json\\"'  # --yes: no terminal in a job
    assert args in json.dumps(jobs["rotate"]["http_target"])
    assert '\\"dr\\", \\"check\\", \\"--json\\"' in json.dumps(jobs["dr_check"]["http_target"])
    # PRODUCT.md's retention (disable after 24 h, destroy after 30 days) needs cleanup to run too
    assert '\\"rotate\\", \\"cleanup\\", \\"--yes\\", \\"--json\\"' in json.dumps(
        jobs["cleanup"]["http_target"]
    )
    next(CronSim(declared["cleanup_schedule"]["default"], start))


def test_alert_metrics_are_real_cloud_sql_metrics_or_voke_own(module):
    policies = resources(module, "google_monitoring_alert_policy")
    assert set(policies) == {
        "rotation_failed",
        "backup_age",
        "replica_lag",
        "log_archive_failures",
        "job_runs",
    }
    used = {m for policy in policies.values() for text in strings(policy) for m in METRIC.findall(text)}
    assert used <= catalog.CLOUDSQL_METRICS | catalog.VOKE_METRICS | {JOB_EXECUTIONS}
    assert {
        catalog.ROTATION_RESULT,
        catalog.BACKUP_AGE,
        catalog.REPLICA_LAG,
        catalog.LOG_ARCHIVE_FAILURES,
    } <= used
    assert all(
        m.startswith(catalog.METRIC_PREFIX) for m in used - catalog.CLOUDSQL_METRICS - {JOB_EXECUTIONS}
    )
    lag = policies["replica_lag"]["conditions"][0]["condition_threshold"][0]
    assert lag["threshold_value"] == 5 * 60 and lag["comparison"] == "COMPARISON_GT"  # PRODUCT.md: over 5 min
    age = policies["backup_age"]["conditions"][0]["condition_threshold"][0]
    assert age["threshold_value"] == 24 * 3600
    silent = policies["backup_age"]["conditions"][1]["condition_absent"][0]  # the checks stopped
    assert catalog.BACKUP_AGE in silent["filter"] and silent["duration"] == "3600s"
    # one series across instances: the old primary's ending after a failover is no silence
    assert silent["aggregations"][0]["cross_series_reducer"] == "REDUCE_MAX"
    # WAL archiving is watched on both configured instances: the replica is the primary after a failover
    archive = policies["log_archive_failures"]["conditions"][0]["condition_threshold"][0]["filter"]
    assert "one_of(${local.database_ids})" in archive
    failed, absent = policies["job_runs"]["conditions"]  # a scheduled run failed, or none ran
    assert 'metric.labels.result = "failed"' in failed["condition_threshold"][0]["filter"]
    assert "${google_cloud_run_v2_job.voke.name}" in absent["condition_absent"][0]["filter"]
    for name in ("rotation_failed", "backup_age"):  # alerts on voke's metrics wait for their descriptors
        assert "${google_monitoring_metric_descriptor.voke}" in policies[name]["depends_on"]


def test_every_alert_policy_watches_its_own_environment_alone(module):
    """Several environments may share a project: a filter on the metric alone would page staging's
    failures as prod's, let staging's points satisfy prod's absence condition (a stopped prod
    check would never page) and watch the drills' scratch replicas."""
    scope = {
        "rotation_failed": 'metric.labels.env = "${var.environment}"',
        "backup_age": "metric.labels.instance = one_of(${local.instance_names})",
        "replica_lag": "resource.labels.database_id = one_of(${local.database_ids})",
        "log_archive_failures": "resource.labels.database_id = one_of(${local.database_ids})",
        "job_runs": 'resource.labels.job_name = "${google_cloud_run_v2_job.voke.name}"',
    }
    policies = resources(module, "google_monitoring_alert_policy")
    assert set(policies) == set(scope)
    for name, policy in policies.items():
        filters = [v for k, v in walk(policy["conditions"]) if k == "filter"]
        assert filters and all(scope[name] in f for f in filters), name
        for f in filters:  # a label of voke's own metric is one voke writes
            (metric,) = METRIC.findall(f)
            if metric in catalog.VOKE_METRICS:
                assert set(re.findall(r"metric\.labels\.(\w+)", f)) <= set(catalog.METRIC_LABELS[metric])
    # both from the configured instances: bare names (voke's `instance` label, the primary
    # `dr check` judged) and Cloud SQL's "project:instance"
    scoped = {k: v for block in module["locals"] for k, v in block.items()}
    assert scoped["instances"] == "${compact([var.instance, var.replica])}"
    assert (
        "for name in local.instances" in scoped["instance_names"]
        and r"\"${name}\"" in scoped["instance_names"]
    )
    assert "for name in local.instances" in scoped["database_ids"]
    assert r"\"${var.project}:${name}\"" in scoped["database_ids"]


def test_voke_metrics_are_declared_with_the_labels_and_types_voke_writes(module):
    descriptor = resources(module, "google_monitoring_metric_descriptor")["voke"]
    assert descriptor["type"] == "custom.googleapis.com/voke/${each.key}"
    assert descriptor["metric_kind"] == "GAUGE"
    assert descriptor["for_each"].startswith("${{for type, metric in local.voke_metrics : type => metric ")
    declared = next(block["voke_metrics"] for block in module["locals"] if "voke_metrics" in block)
    assert {catalog.METRIC_PREFIX + name for name in declared} == catalog.VOKE_METRICS
    for name, body in declared.items():
        metric = catalog.METRIC_PREFIX + name
        assert tuple(body["labels"]) == catalog.METRIC_LABELS[metric], name
        assert body["value_type"] == ("INT64" if metric in catalog.INT64_METRICS else "DOUBLE"), name


def test_one_configuration_per_project_owns_the_metric_descriptors(root, module):
    """The descriptors are the project's (every environment writes the same types): declared by
    every environment, destroying one environment would delete them, and the points the others
    wrote with them."""
    descriptor = resources(module, "google_monitoring_metric_descriptor")["voke"]
    assert descriptor["for_each"] == (
        "${{for type, metric in local.voke_metrics : type => metric if var.manage_metric_descriptors}}"
    )
    assert descriptor["lifecycle"][0]["prevent_destroy"] is True  # nor by a replacement
    owner = variables(module)["manage_metric_descriptors"]
    assert owner["type"] == "bool" and "default" not in owner  # every caller decides
    assert root["module"][0]["voke"]["manage_metric_descriptors"] == "${var.manage_metric_descriptors}"
    assert variables(root)["manage_metric_descriptors"]["default"] is True  # one environment per project
    readme = (ROOT / "README.md").read_text()
    assert "manage_metric_descriptors = false" in readme and "terraform state rm" in readme


def test_every_api_voke_calls_is_enabled(module):
    apis = next(block["apis"] for block in module["locals"] if "apis" in block)
    assert set(apis) == set(catalog.REQUIRED_APIS) | set(catalog.SCHEDULING_APIS)


REFERENCE = re.compile(r"\b((?:google_[a-z0-9_]+|local)\.[A-Za-z0-9_-]+)")


def test_every_resource_is_made_after_the_apis_are_enabled(module):
    """On a project whose APIs are not enabled yet (iam, monitoring...), a resource made before
    google_project_service.apis failed the first apply: each depends on it, by its own
    depends_on or through what it references (a local, another resource)."""
    made = {
        f"{kind}.{name}": body
        for block in module["resource"]
        for kind, named in block.items()
        for name, body in named.items()
    }
    defined = {**made, **{f"local.{k}": v for k, v in _locals(module).items()}}
    refs = {
        node: {r for r in REFERENCE.findall(json.dumps(body)) if r in defined}
        for node, body in defined.items()
    }
    apis = "google_project_service.apis"

    def reaches(node: str, seen: set[str]) -> bool:
        seen.add(node)
        return apis in refs[node] or any(reaches(r, seen) for r in refs[node] - seen)

    assert apis in made
    missing = [node for node in made if node != apis and not reaches(node, set())]
    assert missing == [], missing


def test_every_google_api_voke_calls_as_itself_is_required(module):
    """Each Google API an adapter or an API-key kind calls with voke's own identity is enabled
    here and checked by `voke doctor` (REQUIRED_APIS); the API Keys API (Maps keys) was neither,
    nor were its permissions in the scheduled role, so every scheduled Maps rotation got a 403."""
    from urllib.parse import urlparse

    from voketag_ops.workflows.api_keys import KINDS

    source = Path(catalog.__file__).resolve().parents[2]
    clients = re.compile(r'(?:rest|grpc)_client\([^()]*?"([a-z]+)"\s*\)', re.S)
    called = {f"{api}.googleapis.com" for p in source.rglob("*.py") for api in clients.findall(p.read_text())}
    hosts = {urlparse(kind.default_endpoint).hostname or "" for kind in KINDS.values()}
    called |= {h for h in hosts if h.endswith(".googleapis.com")}
    assert {"sqladmin.googleapis.com", "monitoring.googleapis.com", "apikeys.googleapis.com"} <= called
    assert called <= set(catalog.REQUIRED_APIS)
    # a Maps key's rotation and cleanup as the job's account; adopting one is a person's
    maps = {"apikeys.keys.get", "apikeys.keys.getKeyString", "apikeys.keys.create", "apikeys.keys.delete"}
    assert maps | {"serviceusage.operations.get"} <= set(catalog.PROJECT_PERMISSIONS)
    assert "apikeys.keys.lookup" in catalog.OPERATOR_PERMISSIONS
    roles = resources(module, "google_project_iam_custom_role")
    assert maps <= set(roles["voke_scheduled"]["permissions"])


def test_managed_secrets_have_rotation_topics_and_delayed_destroy(module):
    secret = resources(module, "google_secret_manager_secret")["managed"]
    assert secret["topics"] and secret["rotation"]
    assert secret["version_destroy_ttl"] == "${var.version_destroy_ttl}"
    assert "version_aliases" in json.dumps(secret["lifecycle"])  # voke owns aliases and annotations


def test_the_job_runs_voke_as_its_own_service_account(module):
    job = resources(module, "google_cloud_run_v2_job")["voke"]
    text = json.dumps(job)
    assert "${google_service_account.voke.email}" in text and "${var.image}" in text
    assert '"max_retries": 0' in text


def test_the_job_reaches_cloud_sql_private_ips_by_direct_vpc_egress(root, module):
    """A rotation's login test and the drills' canary connect to the instance's private IP
    (db_host unset): without a VPC path the job changes a password it then cannot test."""
    task = resources(module, "google_cloud_run_v2_job")["voke"]["template"][0]["template"][0]
    (vpc,) = task["vpc_access"]
    assert "connector" not in vpc and vpc["egress"] == "PRIVATE_RANGES_ONLY"  # Google APIs as before
    (interface,) = vpc["network_interfaces"]
    assert interface == {"network": "${var.network}", "subnetwork": "${var.subnetwork}"}
    declared = variables(module)
    assert not {"network", "subnetwork"} & {n for n, b in declared.items() if "default" in b}  # required
    call = root["module"][0]["voke"]
    assert call["network"] == "${var.network}" and call["subnetwork"] == "${var.subnetwork}"
    readme = (ROOT / "README.md").read_text()
    assert "Direct VPC egress" in readme and 'network     = "' in readme  # the deploy example sets them


def test_cloud_sql_instances_declared_here_leave_voke_labels_alone(root, module):
    """voke records the topology in the instances' userLabels: a Terraform that manages them
    must ignore the labels, or `terraform apply` erases the record of a failover."""
    for doc in (root, module):
        for name, body in resources(doc, "google_sql_database_instance").items():
            assert any("user_labels" in s for s in strings(body.get("lifecycle"))), name
    readme = (ROOT / "README.md").read_text()
    assert "ignore_changes = [settings[0].user_labels]" in readme


def test_names_built_from_the_environment_are_valid_for_each_kind_of_id(module):
    # Custom role ids take no "-", service account and Cloud Run job ids no "_"; voke's names take both.
    validation = variables(module)["environment"]["validation"][0]
    pattern = re.search(r'regex\("(.+?)",', validation["condition"])
    assert (
        pattern and re.fullmatch(pattern.group(1), "prod-eu_2") and not re.fullmatch(pattern.group(1), "Prod")
    )
    roles = resources(module, "google_project_iam_custom_role")
    assert all(r["role_id"].endswith("${local.role_suffix}") for r in roles.values())
    account = resources(module, "google_service_account")["voke"]
    job = resources(module, "google_cloud_run_v2_job")["voke"]
    assert account["account_id"] == job["name"] == "voke-${local.id_suffix}"


def test_secret_managers_agent_is_made_before_it_is_granted_the_topic(module):
    agent = resources(module, "google_project_service_identity")["secretmanager"]
    assert agent["service"] == "secretmanager.googleapis.com" and agent["provider"] == "google-beta"
    grant = resources(module, "google_pubsub_topic_iam_member")["secretmanager_publishes"]
    assert grant["member"] == "serviceAccount:${google_project_service_identity.secretmanager.email}"


def test_the_services_read_the_secrets_they_are_pinned_to_and_existing_ones_are_imported(root, module):
    """A rotation pins each service's new revision to the new version: its runtime account must
    read the managed secret (on a new project nothing else grants it, and every rotation rolls
    back); a running platform's secrets already exist, so apply would fail without an import,
    and an imported secret must never be replaced for its replication."""
    reads = resources(module, "google_secret_manager_secret_iam_member")["runtime_reads"]
    assert reads["for_each"] == "${local.runtime_reads}"
    assert reads["secret_id"] == "${google_secret_manager_secret.managed[each.value.secret].secret_id}"
    assert reads["role"] == "roles/secretmanager.secretAccessor"
    assert reads["member"] == "serviceAccount:${each.value.account}"
    pairs = _locals(module)["runtime_reads"]
    assert "setproduct(var.runtime_secrets, var.runtime_service_accounts)" in pairs
    assert "default" not in variables(module)["runtime_secrets"]  # every caller decides
    assert root["module"][0]["voke"]["runtime_secrets"] == "${var.runtime_secrets}"
    default = variables(root)["runtime_secrets"]["default"]
    assert set(default) <= set(variables(root)["secrets"]["default"])
    secret = resources(module, "google_secret_manager_secret")["managed"]
    assert "replication" in secret["lifecycle"][0]["ignore_changes"]
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy") : readme.index("## Who holds what")]
    for name in variables(root)["secrets"]["default"]:
        address = f"'module.voke.google_secret_manager_secret.managed[\"{name}\"]'"
        assert f"terraform import -var-file=prod.tfvars {address}" in deploy, name
        assert f"projects/voketag-prod/secrets/{name}" in deploy, name


def test_the_notify_webhook_comes_from_secret_manager_and_voke_config_is_sensitive(root, module, tmp_path):
    """rotation.notify_webhook is a credential voke masks (`voke config show` prints ***): kept in
    voke_config it showed in every plan; the job reads it from a secret of its own instead."""
    from voketag_ops.config import load_config

    for doc in (root, module):
        assert variables(doc)["voke_config"]["sensitive"] is True
        assert variables(doc)["notify_webhook_secret"]["default"] == ""
    assert root["module"][0]["voke"]["notify_webhook_secret"] == "${var.notify_webhook_secret}"
    (container,) = resources(module, "google_cloud_run_v2_job")["voke"]["template"][0]["template"][0][
        "containers"
    ]
    (feed,) = container["dynamic"][0]["env"]["content"]
    assert container["dynamic"][0]["env"]["for_each"] == (
        '${var.notify_webhook_secret == "" ? [] : [var.notify_webhook_secret]}'
    )
    assert feed["value_source"][0]["secret_key_ref"][0] == {"secret": "${env.value}", "version": "latest"}
    assert "value" not in feed
    # the name is the one voke reads rotation.notify_webhook from
    url = "https://hooks.slack.com/services/T000/B000/XXXX"
    loaded = load_config(environ={feed["name"]: url, "VOKE_HOME": str(tmp_path)}, cwd=tmp_path)
    assert loaded.settings.rotation.notify_webhook == url
    grant = resources(module, "google_secret_manager_secret_iam_member")["voke_reads_its_webhook"]
    assert grant["count"] == '${var.notify_webhook_secret == "" ? 0 : 1}'
    assert grant["secret_id"] == "${var.notify_webhook_secret}"
    assert grant["role"] == "roles/secretmanager.secretAccessor" and grant["member"] == "${local.voke_member}"
    job = resources(module, "google_cloud_run_v2_job")["voke"]
    assert "${google_secret_manager_secret_iam_member.voke_reads_its_webhook}" in job["depends_on"]
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy") : readme.index("## Who holds what")]
    assert "notify_webhook_secret = " in deploy and "out of `voke_config`" in deploy
