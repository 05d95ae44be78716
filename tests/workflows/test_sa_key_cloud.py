"""`voke rotate sa-key` against the IAM fake (real google-cloud-iam client over gRPC) and a
token endpoint that verifies the JWT each key signs: a key is created beside the old one,
stored, verified; cleanup disables the old key, re-checks the new one, deletes the old;
IAM's 10-key limit is respected; a key that does not authenticate is rolled back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.iam_admin_v1")

from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml

ACCOUNT = "voke-ci@voke-test.iam.gserviceaccount.com"


@pytest.fixture
def cloud(tmp_path: Path, make_environ: Any) -> Iterator[tuple[FakeGcp, dict[str, str]]]:
    with FakeGcp() as fake:
        fake.iam.add_account(ACCOUNT)
        env = fake.environment(services=["admin-service"])
        lines = [
            environment_toml("t", env),
            "[rotation]",
            "db_users = {}",
            "test_interval = 0.05",
            "health_timeout = 2",
            "[rotation.sa_keys.ci]",
            f'service_account = "{ACCOUNT}"',
            'secret = "sa-ci"',
            'services = ["admin-service"]',
        ]
        (tmp_path / "voke.toml").write_text("\n".join(lines) + "\n")
        yield fake, make_environ(tmp_path / "home", VOKE_CONFIG=str(tmp_path / "voke.toml"), VOKE_ENV="t")


def _init(fake: FakeGcp, voke: Any, environ: dict[str, str]) -> None:
    planned = voke("rotate", "sa-key", "ci", "--init", "--dry-run", "--json", environ=environ)
    assert planned.exit_code == 0 and planned.json["result"]["dry_run"] is True, planned.stdout
    assert "sa-ci" not in fake.secretmanager.secrets  # a dry run creates nothing
    result = voke("rotate", "sa-key", "ci", "--init", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.json["result"]["version"] == 1
    fake.run.add_service("admin-service", "sa-ci", 1, env_var="GOOGLE_APPLICATION_CREDENTIALS_JSON")


def test_rotation_creates_beside_verifies_and_cleanup_retires_the_old_key(cloud, voke, tmp_path):
    fake, environ = cloud
    _init(fake, voke, environ)
    assert len(fake.iam.user_keys(ACCOUNT)) == 1
    status = voke("rotate", "status", environ=environ)
    row = next(line for line in status.stdout.splitlines() if "sa-ci" in line)
    assert [cell.strip() for cell in row.split("│")[1:4]] == ["sa-ci", "1", "-"], row  # no previous version
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = result.json["result"]
    assert report["status"] == "succeeded" and report["new_version"] == 2
    assert "keyless" in result.stderr  # the warning recommending keyless auth
    keys = fake.iam.user_keys(ACCOUNT)
    assert len(keys) == 2 and not any(k["disabled"] for k in keys)  # the old key still works
    assert fake.run.pinned("admin-service") == [("sa-ci", "2")]
    private = json.loads(fake.secretmanager.payload("sa-ci", 2))["private_key"]
    assert private not in result.stdout + result.stderr

    from voketag_ops.config import load_config
    from voketag_ops.workflows.cloud import cloud_engine

    engine = cloud_engine(load_config(environ=environ, cwd=tmp_path).settings)
    later = datetime.now(timezone.utc) + timedelta(days=2)
    engine.now = lambda: later
    plan = engine.cleanup(dry_run=True)
    assert [a.action for a in plan["actions"] if a.version == 1] == ["retire"]
    assert len(fake.iam.user_keys(ACCOUNT)) == 2  # a dry run changes nothing
    engine.cleanup(dry_run=False)
    keys = fake.iam.user_keys(ACCOUNT)
    new_id = json.loads(fake.secretmanager.payload("sa-ci", 2))["private_key_id"]
    assert [k["name"].rsplit("/", 1)[1] for k in keys] == [new_id]


def test_a_rotation_before_init_is_refused_naming_init(cloud, voke):
    fake, environ = cloud
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 5, result.stdout + result.stderr  # a precondition, not a backend refusal
    error = result.json["error"]
    assert "http" not in error["message"] and "sa-ci" in error["message"]
    assert error["hint"] == "voke --env t rotate sa-key ci --init --yes"  # its env named, to paste
    assert fake.iam.user_keys(ACCOUNT) == [] and "sa-ci" not in fake.secretmanager.secrets


SETUP = {
    "sa-ci": "voke --env t rotate sa-key ci --init --yes",
    "jwt-signing": "voke --env t rotate jwt --init --yes",
}


def test_status_and_due_say_what_sets_up_each_missing_secret(cloud, voke):
    _fake, environ = cloud
    status = voke("rotate", "status", environ=environ)
    assert status.exit_code == 0, status.stdout + status.stderr
    init = "(voke --env t rotate sa-key ci --init --yes)"  # not an API key's --adopt; its env named
    assert f"not set up sa-ci: the secret does not exist {init}" in status.stdout, status.stdout
    assert "not set up jwt-signing: the secret does not exist (voke --env t rotate jwt --init --yes)" in (
        status.stdout
    )
    assert "--adopt" not in status.stdout
    due = voke("rotate", "due", environ=environ)
    assert f"not set up: secret sa-ci does not exist {init}" in due.stdout, due.stdout
    assert "--adopt" not in due.stdout
    for args in (("status",), ("due",)):  # --json names them too, beside `missing` (review)
        doc = voke("rotate", *args, "--json", environ=environ).json["result"]
        assert doc["setup"] == {name: SETUP[name] for name in doc["missing"]}
        assert {"sa-ci", "jwt-signing"} <= set(doc["missing"])


def test_init_says_in_one_line_what_it_created_never_the_key(cloud, voke):
    fake, environ = cloud
    planned = voke("rotate", "sa-key", "ci", "--init", "--dry-run", environ=environ)
    assert (
        planned.stdout
        == f"dry run: would create a key of {ACCOUNT}, verify it, store it as version 1 of sa-ci (current)\n"
    )
    result = voke("rotate", "sa-key", "ci", "--init", "--yes", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    key_id = json.loads(fake.secretmanager.payload("sa-ci", 1))["private_key_id"]
    assert result.stdout == f"created: sa-ci version 1 is current (key {key_id[:12]} of {ACCOUNT})\n"
    assert 'private_key"' not in result.stdout + result.stderr


def test_the_ten_key_limit_is_respected(cloud, voke):
    fake, environ = cloud
    _init(fake, voke, environ)
    fake.iam.add_account(ACCOUNT, keys=9)
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 5, result.stdout
    assert "10" in result.json["error"]["message"]
    assert len(fake.iam.user_keys(ACCOUNT)) == 10
    assert len(fake.secretmanager.secrets["sa-ci"].versions) == 1


def test_init_at_the_ten_key_limit_changes_nothing(cloud, voke):
    fake, environ = cloud
    fake.iam.add_account(ACCOUNT, keys=10)
    result = voke("rotate", "sa-key", "ci", "--init", "--yes", "--json", environ=environ)
    assert result.exit_code == 5, result.stdout
    assert "sa-ci" not in fake.secretmanager.secrets  # not even the empty secret


def test_a_key_that_does_not_authenticate_is_rolled_back_and_deleted(cloud, voke):
    fake, environ = cloud
    _init(fake, voke, environ)
    fake.iam.refuse_new_keys = True
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 6, result.stdout + result.stderr
    # the retry is a new rotation: resuming the rolled-back one is refused
    assert (
        result.json["error"]["hint"] == "safe to retry: voke --env t rotate sa-key ci --yes"
    )  # its env named
    assert len(fake.iam.user_keys(ACCOUNT)) == 1  # the new key was deleted, the old one kept
    assert fake.secretmanager.secrets["sa-ci"].aliases["current"] == 1


def _key_ids(fake: FakeGcp) -> set[str]:
    return {k["name"].rsplit("/", 1)[1] for k in fake.iam.user_keys(ACCOUNT)}


def test_a_rollback_deletes_its_own_key_never_another_consumers(cloud, voke, monkeypatch):
    # Found by review: the rollback deleted every key made since the rotation began that no
    # version held, so a key another consumer of the account made meanwhile went with voke's.
    from voketag_ops.workflows.sa_keys import SaKey

    fake, environ = cloud
    _init(fake, voke, environ)
    made: list[str] = []
    create = SaKey.create

    def create_beside_another(self: SaKey, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        key_file = create(self, rotation_id, current)
        made.append(key_file["private_key_id"])
        made.append(fake.iam._create(ACCOUNT)["private_key_id"])  # another consumer, meanwhile
        return key_file

    monkeypatch.setattr(SaKey, "create", create_beside_another)
    before = _key_ids(fake)
    fake.iam.refuse_new_keys = True
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 6, result.stdout + result.stderr
    ours, theirs = made
    assert ours not in _key_ids(fake) and _key_ids(fake) == before | {theirs}  # the other's kept
    assert theirs not in result.stderr  # voke's own key was known: nothing unsure to name


def _lose_answers(fake: FakeGcp) -> tuple[list[str], Callable[[str], dict[str, Any]]]:
    """From here on IAM's create makes a key, another consumer makes one meanwhile, and the
    answer is lost: the ids of the keys made (filled in as they are), and the real create."""
    from voketag_ops.testing.gcp_fakes import GrpcAbort

    create = fake.iam._create
    made: list[str] = []

    def lost(email: str) -> dict[str, Any]:
        made.append(create(email)["private_key_id"])
        made.append(create(email)["private_key_id"])  # another consumer, meanwhile
        raise GrpcAbort("DEADLINE_EXCEEDED", "Deadline exceeded.")

    fake.iam._create = lost  # type: ignore[method-assign]
    return made, create


def test_a_key_whose_answer_was_lost_is_named_for_a_person_not_deleted(cloud, voke):
    # IAM keys carry no labels: a key made by a create whose answer was lost cannot be told from
    # one another consumer made meanwhile, so the rollback deletes neither and names both.
    fake, environ = cloud
    _init(fake, voke, environ)
    before = _key_ids(fake)
    made, _ = _lose_answers(fake)
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 6, result.stdout + result.stderr  # the step failed; rolled back
    assert _key_ids(fake) == before | set(made)  # none deleted
    warning = " ".join(result.stderr.split())
    assert all(key_id in warning for key_id in made), result.stderr
    assert "gcloud iam service-accounts keys delete KEY_ID" in warning and "10 keys" in warning
    assert fake.secretmanager.secrets["sa-ci"].aliases["current"] == 1


def test_a_key_whose_answer_was_lost_is_named_in_the_json_result_and_the_audit_event(cloud, voke):
    # Found by review: such keys were named only in a stderr warning, so a CI job or cron
    # wrapper reading --json or the audit log never learnt of keys using up IAM's 10.
    from voketag_ops.testing.gcp_fakes import GrpcAbort

    fake, environ = cloud
    _init(fake, voke, environ)
    create = fake.iam._create
    made: list[dict[str, Any]] = []

    def lost(email: str) -> dict[str, Any]:
        made.append(create(email))
        made.append(create(email))  # another consumer, meanwhile
        raise GrpcAbort("DEADLINE_EXCEEDED", "Deadline exceeded.")

    fake.iam._create = lost  # type: ignore[method-assign]
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 6, result.stdout + result.stderr
    expected = [
        {
            "key_id": key_id,
            "account": ACCOUNT,
            "command": f"gcloud iam service-accounts keys delete {key_id} --iam-account {ACCOUNT}",
        }
        for key_id in sorted(k["private_key_id"] for k in made)
    ]
    assert result.json["result"]["unclaimed_keys"] == expected
    assert "lost the answer" in result.stderr  # the warning for a person stays
    shown = voke("audit", "show", "--limit", "1000", "--json", environ=environ)
    [finish] = [e for e in shown.json["result"]["entries"] if e["event_type"] == "rotation.finish"]
    assert finish["result"] == "rolled_back" and finish["details"]["unclaimed_keys"] == expected
    history = voke("rotate", "history", "--json", environ=environ).json["result"]["rotations"]
    assert history[0]["unclaimed_keys"] == expected
    stored = json.loads(fake.secretmanager.payload("sa-ci", 1))
    private = [k["private_key"] for k in [*made, stored]]
    for text in (result.stdout, result.stderr, shown.stdout):
        assert not any(p in text or p.splitlines()[1] in text for p in private)
        assert '"private_key"' not in text and "BEGIN PRIVATE KEY" not in text
    # A rotation that lost no answer names none (the key is there, empty, for a script).
    fake.iam._create = create  # type: ignore[method-assign]
    again = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert again.exit_code == 0 and again.json["result"]["unclaimed_keys"] == [], again.stdout + again.stderr


def test_the_terminal_report_lists_the_keys_a_lost_answer_left_unclaimed(cloud, voke):
    # Found by review: --json named them in `unclaimed_keys`, but the terminal report on stdout
    # did not; only a stderr warning did, which a wrapper keeping stdout alone never saw.
    fake, environ = cloud
    _init(fake, voke, environ)
    made, create = _lose_answers(fake)
    result = voke("rotate", "sa-key", "ci", "--yes", environ=environ)
    assert result.exit_code == 6, result.stdout + result.stderr
    shown = " ".join(result.stdout.split())
    for key_id in made:
        assert f"unclaimed key {key_id} of {ACCOUNT}" in shown, result.stdout
        assert f"gcloud iam service-accounts keys delete {key_id} --iam-account {ACCOUNT}" in shown
    assert "lost the answer" in result.stderr  # the documented warning stays
    fake.iam._create = create  # type: ignore[method-assign]
    again = voke("rotate", "sa-key", "ci", "--yes", environ=environ)
    assert again.exit_code == 0 and "unclaimed" not in again.stdout, again.stdout + again.stderr


def test_a_resume_names_the_keys_a_create_cut_short_may_have_made_and_finishes(cloud, voke, monkeypatch):
    # The rerun's create finds them before it asks IAM again: the rotation succeeds, and its
    # result and rotation.finish event name them, not only the warning.
    from voketag_ops.testing.gcp_fakes import GrpcAbort
    from voketag_ops.workflows.sa_keys import SaKey

    fake, environ = cloud
    _init(fake, voke, environ)
    create, sa_create = fake.iam._create, SaKey.create
    made: list[str] = []

    def lost(email: str) -> dict[str, Any]:
        made.append(create(email)["private_key_id"])
        raise GrpcAbort("DEADLINE_EXCEEDED", "Deadline exceeded.")

    def cut(self: SaKey, rotation_id: str, current: dict[str, Any]) -> dict[str, Any]:
        try:
            return sa_create(self, rotation_id, current)
        except Exception:
            raise KeyboardInterrupt from None  # Ctrl-C while the answer was awaited

    fake.iam._create = lost  # type: ignore[method-assign]
    monkeypatch.setattr(SaKey, "create", cut)
    stopped = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert stopped.exit_code == 130, stopped.stdout + stopped.stderr
    fake.iam._create = create  # type: ignore[method-assign]
    monkeypatch.setattr(SaKey, "create", sa_create)
    result = voke("rotate", "resume", "--yes", "--json", environ=environ)
    assert result.exit_code == 0, result.stdout + result.stderr
    [key_id] = made
    command = f"gcloud iam service-accounts keys delete {key_id} --iam-account {ACCOUNT}"
    named = [{"key_id": key_id, "account": ACCOUNT, "command": command}]
    assert result.json["result"]["status"] == "succeeded" and result.json["result"]["unclaimed_keys"] == named
    assert key_id in _key_ids(fake)  # kept: it cannot be told from another consumer's
    shown = voke("audit", "show", "--limit", "1000", "--json", environ=environ)
    [finish] = [e for e in shown.json["result"]["entries"] if e["event_type"] == "rotation.finish"]
    assert finish["result"] == "succeeded" and finish["details"]["unclaimed_keys"] == named
    private = json.loads(fake.secretmanager.payload("sa-ci", 2))["private_key"]
    assert all(private.splitlines()[1] not in text for text in (result.stdout, result.stderr, shown.stdout))


def test_a_key_made_but_never_stored_is_deleted_by_the_rollback(cloud, voke):
    # Secret Manager refuses the new version after IAM made the key: the key is this rotation's
    # (its id recorded before the store was asked), so the rollback deletes it.
    fake, environ = cloud
    _init(fake, voke, environ)
    before = _key_ids(fake)
    fake.rest.fail("POST", r":addVersion$", "PERMISSION_DENIED", times=1)
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 6, result.stdout + result.stderr
    assert _key_ids(fake) == before and "lost the answer" not in result.stderr


def test_a_token_endpoint_that_keeps_failing_is_unreachable_not_a_broken_key(cloud, voke):
    fake, environ = cloud
    _init(fake, voke, environ)
    fake.rest.fail("POST", r"/token$", "UNAVAILABLE", 10)  # through google.auth's own retries
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 4, result.stdout + result.stderr  # not exit 7 "no stored credential works"
    error = result.json["error"]
    assert error["type"] == "ConnectivityError" and "token endpoint" in error["message"]
    assert "changed it" not in json.dumps(error)  # no advice to look for tampering
    assert (
        len(fake.iam.user_keys(ACCOUNT)) == 1
        and "voke-rotation" not in fake.secretmanager.secrets["sa-ci"].annotations
    )


def test_a_stored_key_disabled_in_iam_stops_with_advice_for_a_key(cloud, voke):
    fake, environ = cloud
    _init(fake, voke, environ)
    fake.iam.user_keys(ACCOUNT)[0]["disabled"] = True  # the token endpoint answers invalid_grant
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 7, result.stdout + result.stderr
    hint = result.json["error"]["hint"]
    assert "gcloud iam service-accounts keys enable" in hint and "ALTER ROLE" not in hint
    assert len(fake.iam.user_keys(ACCOUNT)) == 1


def test_iam_refusing_the_new_key_rolls_back_a_step_that_never_began(cloud, voke):
    from voketag_ops.testing.gcp_fakes import GrpcAbort

    fake, environ = cloud
    _init(fake, voke, environ)

    def refuse(email: str) -> dict[str, Any]:
        raise GrpcAbort("INVALID_ARGUMENT", "Invalid key algorithm.")

    fake.iam._create = refuse  # type: ignore[method-assign]
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)
    assert result.exit_code == 6, result.stdout + result.stderr  # not exit 7 with resume/rollback to run
    error = result.json["error"]
    assert "create_pending" in error["message"] and "Invalid key algorithm" in error["message"]
    assert error["hint"] == "nothing was changed; fix the cause, then: voke --env t rotate sa-key ci --yes"
    secret = fake.secretmanager.secrets["sa-ci"]
    assert "voke-rotation" not in secret.annotations and secret.aliases == {"current": 1}
    assert len(fake.iam.user_keys(ACCOUNT)) == 1


def test_an_init_that_cannot_store_its_key_deletes_it(cloud, voke, monkeypatch):
    from voketag_ops.adapters.gcp._common import GcpContext

    # the product's retry policy (4 attempts, exponential backoff) with the fakes' 0.01 s backoff
    # (FakeGcp.context) instead of 1 s: 7 s of waiting for the same retries
    from_environment = GcpContext.from_environment.__func__
    monkeypatch.setattr(
        GcpContext,
        "from_environment",
        classmethod(
            lambda cls, env, **overrides: from_environment(cls, env, **{"backoff": 0.01, **overrides})
        ),
    )
    fake, environ = cloud
    fake.rest.fail("POST", r":addVersion$", "UNAVAILABLE", times=10)
    result = voke("rotate", "sa-key", "ci", "--init", "--yes", "--json", environ=environ)
    assert result.exit_code == 4, result.stdout + result.stderr
    stores = [path for method, path in fake.rest.calls if method == "POST" and path.endswith(":addVersion")]
    assert len(stores) == 4  # retried, then given up
    assert fake.iam.user_keys(ACCOUNT) == []  # no live key that nobody holds
    fake.rest.faults.clear()
    empty = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=environ)  # the secret, no version
    assert empty.exit_code == 5, empty.stdout
    assert empty.json["error"]["hint"].endswith("sa-key ci --init --yes")
    rerun = voke("rotate", "sa-key", "ci", "--init", "--yes", "--json", environ=environ)
    assert rerun.exit_code == 0 and len(fake.iam.user_keys(ACCOUNT)) == 1  # exactly one


def test_sa_key_needs_a_cloud_environment(voke, make_environ, tmp_path):
    result = voke("rotate", "sa-key", "ci", "--yes", "--json", environ=make_environ(tmp_path / "h"))
    assert result.exit_code == 3 and "cloud environment" in result.json["error"]["message"]


def test_secrets_commands_read_secret_manager_on_a_cloud_env(cloud, voke):
    fake, environ = cloud
    _init(fake, voke, environ)
    listed = voke("secrets", "list", "--json", environ=environ)
    assert listed.exit_code == 0, listed.stdout + listed.stderr
    assert [s["name"] for s in listed.json["result"]["secrets"]] == ["sa-ci"]
    versions = voke("secrets", "versions", "sa-ci", "--json", environ=environ)
    assert versions.json["result"]["aliases"] == {"current": 1}
    assert "private_key" not in listed.stdout + versions.stdout


def test_a_cloud_database_logins_setup_text_keeps_its_words_when_the_env_is_named():
    # Found by review: `--env prod` was put after the word "voke" in this sentence ("voke
    # --env prod creates it only on the local environment") in `rotate status --json`'s setup.
    from voketag_ops.output import name_env
    from voketag_ops.workflows.rotate import setup_command

    text = setup_command("db-password", "app", local=False)
    assert name_env(text, "prod") == text and "--env" not in name_env(text, "prod")
