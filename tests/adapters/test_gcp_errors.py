"""Error translation and retries of the GCP adapters, against faults injected into the
fakes: retryable errors are retried (tenacity), others are not, and each becomes the voke
error (and exit code) the adapter's one translate() assigns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("google.cloud.secretmanager_v1")

from voketag_ops.errors import ExitCode, NotFoundError, SecretError
from voketag_ops.testing.gcp_fakes import FakeGcp


@pytest.fixture
def fake() -> Iterator[FakeGcp]:
    with FakeGcp() as f:
        yield f


@pytest.fixture
def store(fake: FakeGcp) -> Any:
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    s = GcpSecretStore(fake.context())
    s.create("s")
    s.add_version("s", b"v1")
    return s


def _calls(fake: FakeGcp, method: str, suffix: str) -> int:
    return sum(1 for m, p in fake.rest.calls if m == method and p.endswith(suffix))


def test_unavailable_is_retried_and_succeeds(fake, store):
    fake.rest.fail("GET", r"/secrets/s$", "UNAVAILABLE", times=2)
    before = _calls(fake, "GET", "/secrets/s")
    assert store.get("s").name == "s"
    assert _calls(fake, "GET", "/secrets/s") - before == 3


def test_a_non_idempotent_call_is_not_retried_on_internal_errors(fake, store):
    fake.rest.fail("POST", r":addVersion$", "INTERNAL", times=1)
    with pytest.raises(SecretError) as err:
        store.add_version("s", b"v2")
    assert err.value.exit_code == ExitCode.BACKEND
    assert _calls(fake, "POST", ":addVersion") == 2  # the first add, then this one failure: no retry
    assert len(fake.secretmanager.secrets["s"].versions) == 1


def test_throttling_is_retried_even_for_non_idempotent_calls(fake, store):
    fake.rest.fail("POST", r":addVersion$", "RESOURCE_EXHAUSTED", times=1)
    assert store.add_version("s", b"v2").version == 2


def test_permission_denied_is_a_backend_error_with_the_doctor_hint(fake, store):
    fake.rest.fail("GET", r"/secrets/s$", "PERMISSION_DENIED", times=1)
    with pytest.raises(SecretError) as err:
        store.get("s")
    assert err.value.exit_code == ExitCode.BACKEND and "voke doctor" in (err.value.hint or "")


def test_retries_give_up_after_the_configured_attempts(fake, store):
    fake.rest.fail("GET", r"/secrets/s$", "UNAVAILABLE", times=10)
    with pytest.raises(SecretError):
        store.get("s")
    assert sum(f.times for f in fake.rest.faults) == 10 - store.ctx.attempts


def test_a_missing_cloud_run_service_is_not_found(fake):
    from voketag_ops.adapters.gcp.run import CloudRunRuntime

    runtime = CloudRunRuntime(fake.context(), {"nope": "s"})
    with pytest.raises(NotFoundError):
        runtime.services()


def test_an_unreachable_api_is_a_backend_error(fake):
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    ctx = fake.context(endpoints={"secretmanager": "http://127.0.0.1:9"}, attempts=2)
    with pytest.raises(SecretError) as err:
        GcpSecretStore(ctx).get("s")
    assert err.value.exit_code == ExitCode.BACKEND


def test_a_library_message_is_redacted_before_it_is_cut():
    from voketag_ops import redact
    from voketag_ops.adapters.gcp._common import message_of

    secret = "Gcp-Cut-Secret-2c4e6a8b"
    redact.register(secret)
    message = message_of(RuntimeError("z" * 290 + " " + secret + "\nsecond line"))  # kept to 300
    assert message == "z" * 290 + " ***"


# -- answers that are lost or unreadable ----------------------------------------------------------------
def test_a_malformed_answer_is_a_backend_error_naming_the_resource_not_the_parsers_detail(fake, store):
    fake.rest.fail("GET", r"/secrets/s$", answer="cut")  # HTTP 200, half a JSON document
    with pytest.raises(SecretError) as err:
        store.get("s")
    assert err.value.exit_code == ExitCode.BACKEND
    assert err.value.message == "secret 's': malformed response from the API"


def test_a_field_of_the_wrong_type_does_not_echo_the_value(fake):
    from voketag_ops.adapters.gcp.sql import CloudSqlAdmin, CloudSqlRecovery
    from voketag_ops.errors import BackendError

    fake.sql.add_instance("voke-db")
    fake.sql.instances["voke-db"]["tier"] = {"not": "a string: pw-SUPERSECRET-hunter2"}
    with pytest.raises(BackendError) as err:
        CloudSqlRecovery(CloudSqlAdmin(fake.context()), "voke-db").instance()
    assert err.value.exit_code == ExitCode.BACKEND
    assert err.value.message == "instance voke-db: malformed response from the API"


def test_an_html_error_page_is_named_by_its_http_status(fake, store):
    fake.rest.fail("GET", r"/secrets/s$", times=99, answer="html")  # a load balancer's 502 page
    with pytest.raises(SecretError) as err:
        store.get("s")
    assert err.value.message == "secret 's': HTTP 502 Bad Gateway (not a JSON error response)"


def test_a_connection_dropped_mid_body_is_retried_for_an_idempotent_call(fake, store):
    fake.rest.fail("GET", r"/secrets/s$", answer="short")  # ChunkedEncodingError
    before = _calls(fake, "GET", "/secrets/s")
    assert store.get("s").name == "s"
    assert _calls(fake, "GET", "/secrets/s") - before == 2


@pytest.mark.parametrize("answer", ["drop-after", "short", "cut"])
def test_a_lost_answer_to_a_change_never_says_nothing_was_changed(fake, store, answer):
    fake.rest.fail("POST", r":addVersion$", answer=answer)
    with pytest.raises(SecretError) as err:
        store.add_version("s", b"v2")
    assert "may have been made" in err.value.message
    assert "nothing was changed" not in (err.value.hint or "") and "took effect" in (err.value.hint or "")
    assert len(fake.secretmanager.secrets["s"].versions) == 2  # it was


def test_an_update_whose_answer_is_lost_is_done_when_the_secret_holds_it(fake, store):
    # The retry meets its own write ("etag does not match"); what is stored is what was written.
    fake.rest.fail("PATCH", r"/secrets/s$", "UNAVAILABLE", answer="drop-after")
    meta = store.update("s", etag=store.get("s").etag, annotations={"k": "mine"})
    assert meta.annotations["k"] == "mine" and _calls(fake, "PATCH", "/secrets/s") == 2


def test_an_update_raced_by_another_writer_is_still_an_etag_mismatch(fake, store, monkeypatch):
    from voketag_ops.errors import EtagMismatchError

    etag = store.get("s").etag
    served = fake.secretmanager._secret_doc

    def read_then_raced(secret: Any) -> Any:  # another writer lands right after voke's read
        doc = served(secret)
        secret.annotations["k"], secret.etag = "theirs", '"raced"'
        return doc

    monkeypatch.setattr(fake.secretmanager, "_secret_doc", read_then_raced)
    with pytest.raises(EtagMismatchError):
        store.update("s", etag=etag, annotations={"k": "mine"})
    assert fake.secretmanager.secrets["s"].annotations["k"] == "theirs"


def _db_target(fake: FakeGcp) -> Any:
    from voketag_ops.adapters.gcp.sql import CloudSqlAdmin, CloudSqlDbTarget

    fake.sql.add_instance("voke-db", users=("app",))
    return CloudSqlDbTarget(CloudSqlAdmin(fake.context()), "voke-db")


def test_a_password_change_whose_answer_is_lost_is_found_running_and_waited_for(fake):
    target = _db_target(fake)
    fake.rest.fail("PUT", r"/instances/voke-db/users$", answer="drop-after")
    target.set_password("app", "Pw-Lost-Answer-1")
    assert fake.sql.users[("voke-db", "app")] == "Pw-Lost-Answer-1"
    assert _calls(fake, "PUT", "/users") == 1  # not sent twice


def test_a_password_change_not_found_after_a_lost_answer_keeps_its_rotation_kind(fake):
    from voketag_ops.errors import DatabaseError

    target = _db_target(fake)
    fake.rest.fail("PUT", r"/instances/voke-db/users$", answer="drop")  # lost before Cloud SQL saw it
    with pytest.raises(DatabaseError) as err:  # the rotation rolls back (sets the old password again)
        target.set_password("app", "Pw-Lost-Answer-2")
    assert "may have been made" in err.value.message and "Pw-Lost" not in err.value.message
    assert "gcloud sql operations list --instance voke-db --project voke-test" in (err.value.hint or "")


def test_a_grpc_deadline_passed_on_a_change_says_to_check_it_not_that_nothing_changed():
    # gRPC clients (IAM keys, Monitoring) raise DeadlineExceeded when they stop waiting: the
    # server may have made the key all the same.
    from google.api_core import exceptions as gexc

    from voketag_ops.adapters.gcp._common import DEFAULT_ERRORS, GcpContext, translating

    def create_key(**_kwargs: Any) -> None:
        raise gexc.DeadlineExceeded("Deadline Exceeded")

    with pytest.raises(Exception) as err, translating("new key of ci@p", DEFAULT_ERRORS):
        GcpContext(project="p", attempts=1).call(create_key, idempotent=False)
    assert err.value.exit_code == ExitCode.BACKEND
    assert "nothing was changed" not in (err.value.hint or "") and "took effect" in (err.value.hint or "")


# -- a 400 voke's own request gets, and how a library error reads --------------------------------------
def test_a_400_to_a_request_voke_built_is_a_backend_refusal_named_without_the_url(fake, store):
    from voketag_ops.adapters.gcp.sql import CloudSqlAdmin, CloudSqlRecovery
    from voketag_ops.errors import BackendError

    fake.rest.fail("GET", r"/versions/1:access$", "INVALID_ARGUMENT")
    with pytest.raises(SecretError) as err:
        store.access("s", 1)
    assert err.value.exit_code == ExitCode.BACKEND
    assert err.value.message == "secret 's': injected INVALID_ARGUMENT"  # not "GET http://...?%24alt=...: "
    fake.sql.add_instance("voke-db")
    fake.rest.fail("GET", r"/getLatestRecoveryTime$", "INVALID_ARGUMENT")
    with pytest.raises(BackendError) as sql_err:
        CloudSqlRecovery(CloudSqlAdmin(fake.context()), "voke-db").recovery_window()
    assert sql_err.value.exit_code == ExitCode.BACKEND
    assert sql_err.value.message == "recovery window of voke-db: injected INVALID_ARGUMENT"


def test_a_version_named_by_hand_that_no_api_takes_is_not_found_before_any_call(fake, store):
    calls = len(fake.rest.calls)
    with pytest.raises(NotFoundError):
        store.access("s", "no such/alias")
    assert len(fake.rest.calls) == calls


def test_a_dropped_or_refused_connection_reads_as_such_not_as_urllib3s_repr(fake, store):
    fake.rest.fail("GET", r"/secrets/s$", times=99, answer="drop")
    with pytest.raises(SecretError) as err:
        store.get("s")
    assert err.value.message == "secret 's': connection lost (ConnectionError)"
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    ctx = fake.context(endpoints={"secretmanager": "http://127.0.0.1:9"}, attempts=1)
    with pytest.raises(SecretError) as refused:
        GcpSecretStore(ctx).get("s")
    assert refused.value.message == "secret 's': could not connect (ConnectionError)"
