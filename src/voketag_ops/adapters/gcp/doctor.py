"""What `voke doctor --env NAME` checks on Google Cloud: credentials, the project, every
API voke calls, and the project permissions of the scheduled commands, which the job's account
and every operator hold (catalog.PROJECT_PERMISSIONS, testIamPermissions on the project). Not
the operators' DR and drill permissions (doctor is the job's default run, and its account has
none of them) nor the per-secret and per-account grants, which the project cannot be asked
about. Each check is (name, ok, detail, hint); a failing one never stops the rest. (The Cloud
SQL primary is checked by the workflow, which knows the topology voke recorded.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voketag_ops.adapters.gcp import catalog
from voketag_ops.adapters.gcp._common import UNAVAILABLE, GcpContext, classify, message_of
from voketag_ops.errors import VokeError

if TYPE_CHECKING:
    from voketag_ops.config import GcpEnvironment

CheckRow = tuple[str, bool, str, str | None]
ROLE_HINT = "grant the custom role from terraform/ (voke_scheduled) to the identity voke runs as"


def cloud_checks(env: GcpEnvironment, name: str) -> list[CheckRow]:
    ctx = GcpContext.from_environment(env)  # the retry policy of every command: a 503 is asked again
    rows: list[CheckRow] = []
    if env.credentials == "anonymous":
        rows.append(
            (
                "credentials",
                True,
                f"anonymous (fakes or an emulator: environments.{name}.credentials)",
                None,
            )
        )
    else:
        try:
            creds = ctx.credentials()
            who = getattr(creds, "service_account_email", None) or type(creds).__name__
            rows.append(("credentials", True, f"Application Default Credentials found ({who})", None))
        except VokeError as exc:
            rows.append(("credentials", False, exc.message, exc.hint))
            return rows
    project = f"projects/{env.project}"
    try:
        from google.cloud import resourcemanager_v3

        projects = ctx.rest_client(resourcemanager_v3.ProjectsClient, "cloudresourcemanager")
        got = ctx.call(projects.get_project, name=project)
        state = getattr(got.state, "name", str(got.state))
        rows.append(
            (
                "project",
                state == "ACTIVE",
                f"{env.project} is {state}",
                None if state == "ACTIVE" else "the project is not active",
            )
        )
    except Exception as exc:
        rows.append(
            (
                "project",
                False,
                f"{env.project}: {message_of(exc)}",
                _hint(exc, f"check environments.{name}.project and that the identity can see it"),
            )
        )
        return rows
    try:
        from google.cloud import service_usage_v1

        usage = ctx.rest_client(service_usage_v1.ServiceUsageClient, "serviceusage")
        resp = ctx.call(
            usage.batch_get_services,
            request={
                "parent": project,
                "names": [f"{project}/services/{api}" for api in catalog.REQUIRED_APIS],
            },
        )
        enabled = {
            s.name.rsplit("/", 1)[1] for s in resp.services if getattr(s.state, "name", "") == "ENABLED"
        }
        for api in catalog.REQUIRED_APIS:
            ok = api in enabled
            rows.append(
                (
                    f"api {api}",
                    ok,
                    "enabled" if ok else "disabled",
                    None if ok else f"gcloud services enable {api} --project {env.project}",
                )
            )
    except Exception as exc:
        rows.append(
            (
                "apis",
                False,
                message_of(exc),
                _hint(exc, "grant serviceusage.services.get, or enable the APIs by hand"),
            )
        )
    try:
        from google.cloud import resourcemanager_v3

        projects = ctx.rest_client(resourcemanager_v3.ProjectsClient, "cloudresourcemanager")
        resp = ctx.call(
            projects.test_iam_permissions,
            request={"resource": project, "permissions": list(catalog.PROJECT_PERMISSIONS)},
        )
        missing = sorted(set(catalog.PROJECT_PERMISSIONS) - set(resp.permissions))
        rows.append(
            (
                "permissions",
                not missing,
                f"all {len(catalog.PROJECT_PERMISSIONS)} project permissions held"
                if not missing
                else f"missing {len(missing)}: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}",
                None if not missing else ROLE_HINT,
            )
        )
    except Exception as exc:
        rows.append(("permissions", False, message_of(exc), _hint(exc, ROLE_HINT)))
    return rows


def _hint(exc: BaseException, otherwise: str) -> str:
    """OTHERWISE, unless the API was unavailable or throttling (still, after the retries):
    then neither the configuration nor a role is the cause."""
    if classify(exc) != UNAVAILABLE:
        return otherwise
    code = getattr(exc, "code", None)  # api_core: the HTTP status, over gRPC too
    what = f"HTTP {int(code)}" if isinstance(code, int) else type(exc).__name__
    return f"API unavailable ({what}), retry"
