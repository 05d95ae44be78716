"""`voke rotate api-key` against local fake provider servers that speak each provider's
API (voketag_ops.testing.providers.FakeProviders): every provider end to end, failures and
rollbacks, orphans found by a rerun, crash after every step + resume, cleanup
retiring the old keys, notifications, and no key value in any output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from voketag_ops.adapters.local.secrets import LocalSecretStore
from voketag_ops.adapters.local.services import LocalServiceRuntime
from voketag_ops.config import ApiKeySettings, RotationSettings
from voketag_ops.core.rotation import ANNOTATION, CURRENT_ANNOTATION, LAST_ANNOTATION, STEPS, RotationRecord
from voketag_ops.core.times import iso
from voketag_ops.errors import (
    AuthenticationError,
    ConfigError,
    ConnectivityError,
    PreconditionError,
    ProviderRefusedError,
    StepTimeoutError,
    UsageError,
)
from voketag_ops.testing.providers import FakeProviders, WebhookReceiver
from voketag_ops.workflows.api_keys import adopt_api_key, maps_key_id, minted_name, rotate_api_key
from voketag_ops.workflows.rotate import FAULT_ENV, FAULT_EXIT_CODE, RotationEngine

AUDIENCE = "https://api.voketag.test/"


def put(store, name, value):
    """A secret whose `current` version holds VALUE (JSON)."""
    store.create(name)
    version = store.add_version(name, json.dumps(value).encode()).version
    store.update(name, etag=store.get(name).etag, aliases={"current": version})


class World:
    """A secret store in a temp dir, the fake providers, and the keys in use today."""

    def __init__(self, home: Path, fake: FakeProviders) -> None:
        self.home, self.fake = home, fake
        self.store = LocalSecretStore(home)
        self.sendgrid_key, self.sendgrid_id = fake.add_sendgrid_key()
        self.maps_key, self.maps_name = fake.add_google_key(
            "prod-maps", restrictions={"apiTargets": [{"service": "geocoding-backend.googleapis.com"}]}
        )
        self.auth0_id, self.auth0_secret = fake.add_auth0_client()
        self.stripe_key = fake.add_stripe_key()
        put(
            self.store,
            "auth0-admin",
            {"client_id": fake.auth0_admin_id, "client_secret": fake.auth0_admin_secret},
        )
        put(self.store, "google-admin", {"access_token": fake.google_token()})
        self.api_keys = {
            "sendgrid": ApiKeySettings(provider="sendgrid", secret="sendgrid-key", endpoint=fake.url),
            "maps": ApiKeySettings(
                provider="maps",
                secret="maps-key",
                endpoint=fake.url,
                admin_secret="google-admin",
                options={"project": fake.google_project, "maps_endpoint": fake.url},
            ),
            "auth0": ApiKeySettings(
                provider="auth0",
                secret="auth0-client",
                endpoint=fake.url,
                admin_secret="auth0-admin",
                options={"client_id": self.auth0_id, "audience": AUDIENCE},
            ),
            "stripe": ApiKeySettings(provider="stripe", secret="stripe-key", endpoint=fake.url),
        }

    def engine(self, **settings) -> RotationEngine:
        rotation = RotationSettings(api_keys=self.api_keys, test_interval=0, test_attempts=3, **settings)
        return RotationEngine(
            store=self.store,
            runtime=LocalServiceRuntime(self.home, {}),
            target=None,
            settings=rotation,
            home=self.home,
            sleep=lambda _s: None,
        )

    def adopt_all(self) -> RotationEngine:
        engine = self.engine()
        for name, raw in (
            ("sendgrid", self.sendgrid_key),
            ("maps", self.maps_key),
            ("auth0", self.auth0_secret),
            ("stripe", self.stripe_key),
        ):
            assert adopt_api_key(engine, name, raw)["status"] == "adopted"
        return engine

    def value(self, secret, version="current"):
        return json.loads(self.store.access(secret, version))


@pytest.fixture
def fake():
    with FakeProviders() as f:
        yield f


@pytest.fixture
def world(tmp_path, fake):
    return World(tmp_path / "home", fake)


# -- each provider, end to end -------------------------------------------------------------------
def test_sendgrid_mints_beside_the_old_key_with_its_scopes(world, fake):
    engine = world.adopt_all()
    outcome = rotate_api_key(engine, "sendgrid")
    assert outcome.error is None, outcome.report.error
    report = outcome.report
    assert report.status == "succeeded" and report.strategy == "additive"
    assert [s.name for s in report.steps] == list(STEPS)
    new = world.value("sendgrid-key")
    assert new["key_name"] == minted_name(report.rotation_id)
    keys = fake.live_sendgrid_keys()
    assert keys == {world.sendgrid_id: "production", new["key_id"]: minted_name(report.rotation_id)}
    assert fake.sendgrid_keys[new["key_id"]]["scopes"] == fake.sendgrid_keys[world.sendgrid_id]["scopes"]
    assert fake.sendgrid_keys[new["key_id"]]["key"] == new["api_key"]
    # the old key keeps working until cleanup retires it
    assert world.store.get("sendgrid-key").aliases == {"current": 2, "previous": 1}


def test_maps_key_created_by_operation_with_the_old_restrictions(world, fake):
    fake.operation_polls = 3  # the create operation is not done at once
    engine = world.adopt_all()
    outcome = rotate_api_key(engine, "maps")
    assert outcome.error is None, outcome.report.error
    new = world.value("maps-key")
    assert new["key_id"] == maps_key_id(outcome.report.rotation_id)
    made = fake.google_keys[new["key_name"]]
    assert made["keyString"] == new["api_key"]
    assert made["restrictions"] == fake.google_keys[world.maps_name]["restrictions"]
    assert made["displayName"] == f"voke {outcome.report.rotation_id} (maps)"
    assert set(fake.live_google_keys()) == {world.maps_name, new["key_name"]}
    assert len(fake.calls("GET", r"^/v2/operations/")) >= 3


def test_maps_refuses_to_mint_a_key_when_the_old_keys_restrictions_cannot_be_read(world, fake):
    engine = world.adopt_all()
    fake.fail("GET", world.maps_name + "$", 404, times=1)  # the old key cannot be read this once
    outcome = rotate_api_key(engine, "maps")
    assert (
        outcome.error is not None and outcome.error.exit_code == 7
    )  # stopped for a person, as SendGrid's scopes
    assert "cannot read the restrictions" in outcome.report.error["message"]
    assert set(fake.live_google_keys()) == {world.maps_name}  # no unrestricted key was made
    assert not fake.calls("POST", r"/keys$")
    assert world.store.get("maps-key").aliases["current"] == 1


def test_auth0_sets_a_known_secret_single_phase(world, fake):
    engine = world.adopt_all()
    fake.auth0_propagation = 2  # Auth0 takes a moment to accept a new secret everywhere
    outcome = rotate_api_key(engine, "auth0")
    assert outcome.error is None, outcome.report.error
    assert outcome.report.strategy == "single-phase"
    test_step = next(s for s in outcome.report.steps if s.name == "test")
    assert "try 3 of 3" in test_step.detail
    new = world.value("auth0-client")
    assert fake.auth0_clients[world.auth0_id] == new["client_secret"] != world.auth0_secret
    patch = fake.calls("PATCH", r"^/api/v2/clients/")
    assert len(patch) == 1 and patch[0].headers["authorization"].startswith("Bearer ")


def test_auth0_failed_test_sets_the_old_secret_back(world, fake):
    engine = world.adopt_all()
    fake.auth0_propagation = 10  # never settles within the three tries
    outcome = rotate_api_key(engine, "auth0")
    assert outcome.error is not None and outcome.error.exit_code == 6
    assert outcome.report.status == "rolled_back"
    assert fake.auth0_clients[world.auth0_id] == world.auth0_secret  # the stored current works again
    assert world.store.get("auth0-client").aliases == {"current": 1}
    # "safe to retry", at once: the secret set back is not accepted everywhere yet (two more
    # token calls); the drift check asks as patiently as the test step instead of exit 7.
    fake.auth0_propagation, fake._auth0_settling[world.auth0_id] = 0, 2
    retried = rotate_api_key(engine, "auth0")
    assert retried.error is None and retried.report.status == "succeeded"


def test_stripe_pasted_key_is_verified_before_it_is_stored(world, fake):
    engine = world.adopt_all()
    versions = len(world.store.get("stripe-key").versions)
    with pytest.raises(PreconditionError, match="no API that creates keys"):
        rotate_api_key(engine, "stripe")
    with pytest.raises(UsageError, match="is the current key"):
        rotate_api_key(engine, "stripe", new_key=world.stripe_key)
    with pytest.raises(UsageError, match="not a Stripe secret key"):
        rotate_api_key(engine, "stripe", new_key="pk_test_publishable_is_not_secret")
    with pytest.raises(AuthenticationError, match="rejected"):
        rotate_api_key(engine, "stripe", new_key="sk_test_51" + "x" * 40)
    assert len(world.store.get("stripe-key").versions) == versions  # nothing stored
    new = fake.add_stripe_key()
    fake.revoke_stripe_key(world.stripe_key)  # rolled in the Dashboard with "expire now"
    outcome = rotate_api_key(engine, "stripe", new_key=new + "\n")
    assert outcome.error is None, outcome.report.error
    assert world.value("stripe-key")["api_key"] == new
    assert fake.calls("GET", "/v1/balance")[-1].headers["authorization"] == f"Bearer {new}"


def test_a_failed_stripe_rotation_keeps_the_new_key_when_the_dashboard_expired_the_old_one(
    world, fake, monkeypatch
):
    engine = world.adopt_all()
    new = fake.add_stripe_key()
    fake.revoke_stripe_key(world.stripe_key)  # rolled in the Dashboard with "expire now"

    def busy_at_test(step):  # Stripe answers 429 to the test step's 3 tries
        if step == "set_target":
            fake.fail("GET", "/v1/balance", 429, times=3)

    monkeypatch.setattr(engine, "_fault", busy_at_test)
    outcome = rotate_api_key(engine, "stripe", new_key=new)
    assert outcome.error is not None and outcome.error.exit_code == 7  # not "rolled back; safe to retry"
    assert "not rolled back" in outcome.error.message and "voke rotate resume" in outcome.error.message
    meta = world.store.get("stripe-key")
    assert meta.version(2).state == "enabled" and meta.aliases["pending"] == 2  # the one key that works
    assert outcome.report.status == "needs_attention"
    resumed = engine.resume(outcome.report.rotation_id)  # Stripe answers again: finished on the new key
    assert resumed.error is None and resumed.report.status == "succeeded"
    assert world.value("stripe-key")["api_key"] == new


def _stopped_with_the_old_key_expired(engine, world, fake, monkeypatch):
    """A Stripe rotation by ENGINE whose old key the Dashboard expired ("expire now"), failed at
    its test (Stripe answers 429 to the 3 tries) and stopped: its rollback refused (exit 7)."""
    new = fake.add_stripe_key()
    fake.revoke_stripe_key(world.stripe_key)

    def busy_at_test(step):
        if step == "set_target":
            fake.fail("GET", "/v1/balance", 429, times=3)

    monkeypatch.setattr(engine, "_fault", busy_at_test)
    return rotate_api_key(engine, "stripe", new_key=new)


def test_a_refused_rollback_stops_with_the_resume_alone_to_paste(world, fake, monkeypatch):
    with WebhookReceiver() as hook:
        world.adopt_all()
        engine = world.engine(notify_webhook=hook.url)
        stopped = _stopped_with_the_old_key_expired(engine, world, fake, monkeypatch)
        rotation_id = stopped.report.rotation_id
        again = world.engine(notify_webhook=hook.url).rollback(rotation_id)
    for error in (stopped.error, again.error):  # the rollback would only stop there again
        assert error.exit_code == 7 and "not rolled back" in error.message
        assert f"voke rotate resume {rotation_id} --yes" in error.hint
        assert "rollback" not in error.hint and "old value no longer authenticates" in error.hint
    texts = [b["text"] for b in hook.bodies]
    assert len(texts) == 2 and all("voke rotate rollback" not in t for t in texts)
    assert all(f"voke rotate resume {rotation_id} --yes" in t for t in texts)


def test_after_a_refused_rollback_status_and_a_new_rotation_offer_the_resume_alone(world, fake, monkeypatch):
    # Found by review: the refused rollback's own hint named the resume alone, but `rotate status`
    # (terminal and --json) and the refusal of a new rotation of that secret still offered
    # `voke rotate rollback`, which would only stop there again.
    from rich.console import Console

    from voketag_ops.cli.rotate_cmd import _render_status

    stopped = _stopped_with_the_old_key_expired(world.adopt_all(), world, fake, monkeypatch)
    rotation_id = stopped.report.rotation_id
    refused = world.engine().rollback(rotation_id)
    assert refused.error is not None and refused.error.exit_code == 7
    resume = f"voke rotate resume {rotation_id} --yes"
    engine = world.engine()
    status = engine.status()
    [entry] = status["in_progress"]
    assert entry["status"] == "needs_attention" and not entry["running"]
    assert refused.error.hint.endswith(f": {entry['next']}")  # what the refused rollback said to paste
    assert entry["next"].startswith(resume) and "rollback" not in entry["next"]
    out = io.StringIO()
    setup = {secret: engine.setup_command(secret) for secret in status["missing"]}
    _render_status(Console(file=out, width=300, color_system=None), status, setup=setup)
    assert f"not running: {resume}" in out.getvalue() and "rollback" not in out.getvalue()
    with pytest.raises(PreconditionError, match="needs a person") as again:
        rotate_api_key(world.engine(), "stripe", new_key=fake.add_stripe_key())
    assert again.value.hint == entry["next"]


def test_a_stripe_key_nobody_pastes_is_refused_by_the_dry_run_as_by_the_run(world, fake):
    engine = world.adopt_all()
    for dry_run in (False, True):  # `rotate due --run` and its --dry-run: no key is asked for
        with pytest.raises(PreconditionError, match="no API that creates keys"):
            engine.rotate("stripe", dry_run=dry_run)
    planned = rotate_api_key(engine, "stripe", dry_run=True)  # `rotate api-key stripe`: its run asks
    assert planned.report.status == "planned" and planned.report.plan[1].startswith("read the new key pasted")


def test_rotating_before_adopting_and_bad_configuration(world, fake):
    engine = world.engine()
    # configured but never adopted: listed, or a cron job would never hear of it
    assert {"auth0-client", "maps-key", "sendgrid-key", "stripe-key"} <= set(engine.status()["missing"])
    with pytest.raises(PreconditionError, match="adopt"):
        rotate_api_key(engine, "sendgrid")
    with pytest.raises(ConfigError, match="no API key named 'twilio'"):
        rotate_api_key(engine, "twilio")
    with pytest.raises(AuthenticationError):
        adopt_api_key(engine, "sendgrid", "SG.nope.notakey")
    assert not world.store.exists("sendgrid-key")
    world.api_keys["auth0"] = world.api_keys["auth0"].model_copy(update={"admin_secret": None})
    with pytest.raises(ConfigError, match="admin_secret is required"):
        adopt_api_key(world.engine(), "auth0", world.auth0_secret)
    world.api_keys["maps"] = world.api_keys["maps"].model_copy(update={"options": {}})
    with pytest.raises(ConfigError, match=r"options\.project"):
        adopt_api_key(world.engine(), "maps", world.maps_key)
    assert adopt_api_key(engine, "sendgrid", world.sendgrid_key)["version"] == 1
    with pytest.raises(PreconditionError, match="already holds"):
        adopt_api_key(engine, "sendgrid", world.sendgrid_key)


def test_a_pasted_key_with_an_invisible_character_is_a_usage_error(world, fake):
    engine = world.engine()
    for slip in ("\u200b", " inner", "\x07"):
        with pytest.raises(UsageError, match="printable ASCII") as err:
            adopt_api_key(engine, "sendgrid", world.sendgrid_key + slip)
        assert world.sendgrid_key not in str(err.value)
    assert not world.store.exists("sendgrid-key")
    engine = world.adopt_all()
    with pytest.raises(UsageError, match="printable ASCII"):
        rotate_api_key(engine, "stripe", new_key="sk_live_" + "a" * 30 + "\u200b")


# -- failures, rollbacks, orphans -----------------------------------------------------------------------
def test_failed_test_step_deletes_the_minted_key(world, fake):
    engine = world.adopt_all()
    fake.sendgrid_minted_keys_work = False  # the new key never authenticates
    outcome = rotate_api_key(engine, "sendgrid")
    assert outcome.error is not None and outcome.error.exit_code == 6
    assert outcome.report.steps[-1].name == "rollback"
    assert fake.live_sendgrid_keys() == {world.sendgrid_id: "production"}
    meta = world.store.get("sendgrid-key")
    assert meta.aliases == {"current": 1} and meta.version(2).state == "disabled"
    assert ANNOTATION not in meta.annotations
    fake.sendgrid_minted_keys_work = True
    assert rotate_api_key(world.engine(), "sendgrid").error is None  # the next run starts clean


def test_lost_reply_on_create_leaves_no_orphan(world, fake):
    engine = world.adopt_all()
    fake.fail("POST", r"^/v3/api_keys$", status=0, after=True)  # minted, but the answer never arrives
    outcome = rotate_api_key(engine, "sendgrid")
    assert outcome.error is not None and outcome.error.exit_code == 6
    assert "ConnectivityError" in outcome.report.error["kind"]
    assert fake.live_sendgrid_keys() == {world.sendgrid_id: "production"}  # the rollback found it by name
    fake.fail("POST", r"^/v2/projects/.*/keys$", status=503, after=True)
    outcome = rotate_api_key(engine, "maps")
    assert outcome.error is not None and outcome.error.exit_code == 6
    assert set(fake.live_google_keys()) == {world.maps_name}


def test_rollback_after_commit_deletes_the_minted_key_once_nothing_uses_it(world, fake, monkeypatch):
    engine = world.adopt_all()
    engine.owner = "gone-host:1"  # a process on another machine, which dies right after `commit`

    def die(step):
        if step == "commit":
            raise SystemExit(86)

    monkeypatch.setattr(engine, "_fault", die)
    with pytest.raises(SystemExit):
        rotate_api_key(engine, "sendgrid")
    record = RotationRecord.from_json(world.store.get("sendgrid-key").annotations[ANNOTATION])
    assert record.step == "commit" and world.store.get("sendgrid-key").aliases["current"] == 2
    assert len(fake.live_sendgrid_keys()) == 2
    later = world.engine()
    later.now = lambda: datetime.now(timezone.utc) + timedelta(hours=1)  # its lease has run out
    plan = later.plan_unfinished(record.id, action="rollback")["plan"]  # what --dry-run prints
    assert plan.index("delete the provider key this rotation minted, once no service uses it") < plan.index(
        "disable version 2"
    )
    assert len(fake.live_sendgrid_keys()) == 2  # the dry run deleted nothing
    outcome = later.rollback(record.id)
    assert outcome.error is None and outcome.report.status == "rolled_back"
    assert world.store.get("sendgrid-key").aliases == {"current": 1}
    assert fake.live_sendgrid_keys() == {world.sendgrid_id: "production"}


def _killed_after_lock(world, secret, rotation_id="rot-20261126T010203Z-abcdef"):
    """The record a run leaves when it dies right after taking the lock (owner gone)."""
    meta = world.store.get(secret)
    record = RotationRecord(
        id=rotation_id,
        secret=secret,
        kind=f"api-key:{secret.split('-')[0]}",
        strategy="additive",
        target=secret.split("-")[0],
        owner="no-such-host:1",
        lease_until="2000-01-01T00:00:00Z",
        started_at="2026-11-26T01:02:03Z",
        step="lock",
        old_current=meta.aliases["current"],
    )
    world.store.update(secret, etag=meta.etag, annotations={ANNOTATION: record.to_json()})
    return rotation_id


def test_rerun_deletes_a_sendgrid_orphan_and_mints_exactly_one(world, fake):
    engine = world.adopt_all()
    rotation_id = _killed_after_lock(world, "sendgrid-key")
    # the killed run had minted its key (it has the rotation's name) but never stored it
    with fake.lock:
        fake._mint_sendgrid(minted_name(rotation_id), ["mail.send"])
    outcome = engine.resume(rotation_id)
    assert outcome.error is None and outcome.report.resumed
    new = world.value("sendgrid-key")
    assert fake.live_sendgrid_keys() == {
        world.sendgrid_id: "production",
        new["key_id"]: minted_name(rotation_id),
    }


def test_rerun_adopts_a_maps_orphan(world, fake):
    engine = world.adopt_all()
    rotation_id = _killed_after_lock(world, "maps-key")
    with fake.lock:
        orphan = fake._make_google_key(fake.google_project, maps_key_id(rotation_id), "orphan", None)
    outcome = engine.resume(rotation_id)
    assert outcome.error is None
    assert world.value("maps-key")["api_key"] == orphan["keyString"]  # adopted, not a second key
    assert set(fake.live_google_keys()) == {world.maps_name, orphan["name"]}
    assert not fake.calls("POST", r"/keys$")


def test_maps_keys_rotate_and_clean_up_with_the_scheduled_jobs_permissions_alone(world, fake):
    """The scheduled `rotate due --run` and `rotate cleanup` call the API Keys API as the job's
    account, which holds catalog.PROJECT_PERMISSIONS alone (terraform's voke_scheduled): a 403
    there failed every Maps rotation. Adopting the key in use (a person's step) also needs
    keys.lookupKey, which only the operators hold (catalog.OPERATOR_PERMISSIONS)."""
    from voketag_ops.adapters.gcp import catalog

    def run_as(permissions):  # the identity the Maps credential calls Google with
        store = world.store
        token = json.dumps({"access_token": fake.google_token(permissions)}).encode()
        version = store.add_version("google-admin", token).version
        store.update("google-admin", etag=store.get("google-admin").etag, aliases={"current": version})

    engine = world.engine()
    run_as(catalog.PROJECT_PERMISSIONS)
    with pytest.raises(AuthenticationError, match=r"apikeys\.keys\.lookup"):
        adopt_api_key(engine, "maps", world.maps_key)
    run_as(catalog.PROJECT_PERMISSIONS + catalog.OPERATOR_PERMISSIONS)
    assert adopt_api_key(engine, "maps", world.maps_key)["status"] == "adopted"
    run_as(catalog.PROJECT_PERMISSIONS)
    fake.requests.clear()
    outcome = rotate_api_key(engine, "maps")  # keys.get, keys.create, operations.get
    assert outcome.error is None, outcome.report.error
    rotation_id = _killed_after_lock(world, "maps-key", "rot-20261127T010203Z-abcdef")
    with fake.lock:  # a killed run's key, found again: keys.get, keys.getKeyString
        orphan = fake._make_google_key(fake.google_project, maps_key_id(rotation_id), "orphan", None)
    assert engine.resume(rotation_id).error is None
    later = datetime.now(timezone.utc) + timedelta(days=2)
    engine.now = lambda: later
    engine.cleanup(dry_run=False)  # keys.delete
    assert set(fake.live_google_keys()) == {orphan["name"]}
    assert {r.method for r in fake.calls(path="/keyString$")} == {"GET"}
    assert not [r for r in fake.requests if r.status == 403]


def test_unreachable_provider_changes_nothing(world, fake):
    engine = world.adopt_all()
    fake.stop()
    with pytest.raises(ConnectivityError, match="cannot reach"):
        rotate_api_key(engine, "sendgrid")
    meta = world.store.get("sendgrid-key")
    assert len(meta.versions) == 1 and ANNOTATION not in meta.annotations


def test_a_provider_refusing_before_the_lock_is_exit_4_and_changes_nothing(world, fake):
    from voketag_ops.errors import ProviderRefusedError

    engine = world.adopt_all()
    fake.fail("GET", "^/v3/scopes$", status=400)  # the drift check's call
    with pytest.raises(ProviderRefusedError) as info:
        rotate_api_key(engine, "sendgrid")
    assert info.value.exit_code == 4 and info.value.kind == "ValidationError"  # a step's: a person looks
    meta = world.store.get("sendgrid-key")
    assert len(meta.versions) == 1 and ANNOTATION not in meta.annotations


def test_a_provider_busy_once_before_the_lock_is_asked_again(world, fake):
    engine = world.adopt_all()
    fake.fail("GET", "^/v3/scopes$", status=503)  # the drift check's call, once
    assert rotate_api_key(engine, "sendgrid").error is None
    assert world.store.get("sendgrid-key").aliases["current"] == 2


def test_a_provider_that_stays_busy_before_the_lock_names_the_drift_check(world, fake):
    engine = world.adopt_all()
    fake.fail("GET", "^/v3/scopes$", status=429, times=3)  # every one of test_attempts
    with pytest.raises(ConnectivityError) as info:
        rotate_api_key(engine, "sendgrid")
    message = info.value.message
    assert info.value.exit_code == 4 and message.startswith("drift check (before the lock): ")
    assert "(after 3 tries)" in message and message.endswith("nothing was changed")
    meta = world.store.get("sendgrid-key")
    assert len(meta.versions) == 1 and ANNOTATION not in meta.annotations


def test_a_provider_busy_once_when_asked_whether_it_accepts_the_pending_key_is_asked_again(world, fake):
    engine = world.adopt_all()

    def busy_at(message: str) -> None:  # set_target first asks whether the new key already works
        if message.endswith(": set_target"):
            fake.fail("GET", "^/v3/scopes$", status=503)

    engine.progress = busy_at
    outcome = rotate_api_key(engine, "sendgrid")
    assert outcome.error is None and outcome.report.status == "succeeded"
    assert len(fake.live_sendgrid_keys()) == 2  # the old key and one new: none minted, deleted, minted again


def test_a_provider_message_quoting_a_secret_is_redacted_before_it_is_cut(world, fake):
    from voketag_ops import redact

    secret = "Quoted-Secret-0123456789abcdefXY"
    redact.register(secret)
    engine = world.adopt_all()
    # The secret starts at character 185 of the reason, which is cut at 200.
    message = "x" * 170 + " client secret " + secret
    fake.fail("POST", r"^/v3/api_keys$", status=400, message=message)
    outcome = rotate_api_key(engine, "sendgrid")
    assert outcome.error is not None and "client secret ***" in outcome.error.message
    # The 400 refused the creation: rolled back (nothing was made), the record kept in the history
    assert outcome.error.exit_code == 6 and ANNOTATION not in world.store.get("sendgrid-key").annotations
    stored = (world.home / "rotations" / "history.jsonl").read_text()
    assert "client secret ***" in stored
    for text in (outcome.error.message, stored, (world.home / "audit" / "audit.jsonl").read_text()):
        assert secret[:8] not in text


def test_an_unreadable_200_from_a_provider_is_its_unusable_answer_not_an_internal_error(world, fake):
    # Found by review: a 200 whose operation had no `name` (a proxy's page read as {}) was a
    # KeyError, exit 70, leaving the rotation unfinished after its lock.
    engine = world.adopt_all()
    fake.fail("POST", r"^/v2/projects/.*/keys$", status=200)  # 200, but an error body: no operation
    outcome = rotate_api_key(engine, "maps")
    # a key may exist: it stops for a person (exit 7) with the resume and the rollback to run
    assert outcome.error is not None and outcome.error.exit_code == 7, outcome.error
    assert "voke rotate rollback" in (outcome.error.hint or "")
    assert outcome.report.error["kind"] == "ValidationError", outcome.report.error
    assert "apikeys: POST /v2/projects/" in outcome.report.error["message"]
    assert "without name" in outcome.report.error["message"]


SG, KEY = "SG.x.y", "projects/p/locations/global/keys/k1"


@pytest.mark.parametrize(
    ("method", "path", "body", "call"),
    [
        ("GET", "/v3/scopes", ["not", "an", "object"], lambda sg, g: sg.scopes(SG)),
        ("GET", "/v3/api_keys", {"result": ["not a key"]}, lambda sg, g: sg.list_keys(SG)),
        ("GET", "/v3/api_keys/k1", {"result": [7]}, lambda sg, g: sg.get_key(SG, "k1")),
        ("POST", "/v3/api_keys", None, lambda sg, g: sg.create_key(SG, "n", ["mail.send"])),
        ("GET", f"/v2/{KEY}", {}, lambda sg, g: g.get_key("t", KEY)),
        ("GET", f"/v2/{KEY}/keyString", "<html>", lambda sg, g: g.key_string("t", KEY)),
        ("GET", "/v2/keys:lookupKey", {"name": 7}, lambda sg, g: g.lookup("t", "AIza")),
        ("DELETE", f"/v2/{KEY}", {"done": False}, lambda sg, g: g.delete_key("t", KEY)),
        ("DELETE", f"/v2/{KEY}", {"done": True, "response": []}, lambda sg, g: g.delete_key("t", KEY)),
    ],
)
def test_every_unusable_200_of_a_provider_is_provider_refused(fake, method, path, body, call):
    from voketag_ops.adapters.providers import GoogleApiKeysClient, SendGridClient

    fake._error = lambda *_args: body  # type: ignore[method-assign]  # what the injected 200 carries
    fake.fail(method, f"^{path}$", status=200)
    with pytest.raises(ProviderRefusedError) as exc:
        call(SendGridClient(fake.url, timeout=2), GoogleApiKeysClient(fake.url, timeout=2))
    assert path.split("/")[1] in exc.value.message and method in exc.value.message, exc.value.message


def test_http_errors_become_rotation_failure_kinds(fake):
    from voketag_ops.adapters.providers import HttpClient

    client = HttpClient(fake.url, provider="maps", timeout=2)
    fake.fail("GET", "^/x$", status=401)
    with pytest.raises(AuthenticationError):
        client.call("GET", "/x", query={"key": "AIzaSECRETVALUE"})
    fake.fail("GET", "^/x$", status=429)
    with pytest.raises(ConnectivityError) as exc:
        client.call("GET", "/x", query={"key": "AIzaSECRETVALUE"})
    assert "AIzaSECRETVALUE" not in exc.value.message and "/x" in exc.value.message
    slow = HttpClient(fake.url, provider="maps", timeout=0.2)
    import socket

    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        slow.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(StepTimeoutError):
            slow.call("GET", "/x")


# -- cleanup retires superseded keys ----------------------------------------------------------------------
def test_cleanup_deletes_old_provider_keys_a_day_later(world, fake):
    engine = world.adopt_all()
    for name in ("sendgrid", "maps"):
        assert rotate_api_key(engine, name).error is None
    assert engine.cleanup(dry_run=False)["actions"] == []  # too early: the old keys stay
    assert len(fake.live_sendgrid_keys()) == 2
    later = datetime.now(timezone.utc) + timedelta(days=2)
    engine.now = lambda: later
    plan = engine.cleanup(dry_run=True)["actions"]
    assert {(a.secret, a.version, a.action) for a in plan} == {
        ("sendgrid-key", 1, "retire"),
        ("maps-key", 1, "retire"),
    }
    assert len(fake.live_sendgrid_keys()) == 2  # the dry run deleted nothing
    engine.cleanup(dry_run=False)
    last = engine.history(secret="sendgrid-key")[0].id
    assert fake.live_sendgrid_keys() == {world.value("sendgrid-key")["key_id"]: minted_name(last)}
    assert set(fake.live_google_keys()) == {world.value("maps-key")["key_name"]}
    for secret in ("sendgrid-key", "maps-key"):  # no dead key is offered to fall back to
        meta = engine.store.get(secret)
        assert meta.version(1).state == "disabled", secret
        assert "previous" not in meta.aliases and meta.aliases["current"] == 2, secret
    assert [a for a in engine.cleanup(dry_run=False)["actions"] if a.action == "retire"] == []  # idempotent


def _resumed_days_later(world, fake, monkeypatch, name, days=2):
    """Rotate NAME in a run that dies after create_pending (another machine's, owner gone), then
    resume it DAYS later: its version is made now and becomes current only then. The engine
    (its clock at that resume) is returned."""
    engine = world.engine()
    engine.owner = "gone-host:1"

    def die(step):
        if step == "create_pending":
            raise SystemExit(86)

    monkeypatch.setattr(engine, "_fault", die)
    with pytest.raises(SystemExit):
        rotate_api_key(engine, name)
    later = world.engine()
    resumed_at = datetime.now(timezone.utc) + timedelta(days=days)
    later.now = lambda: resumed_at
    assert later.resume().error is None
    return later, resumed_at


def test_cleanup_deletes_an_old_key_a_day_after_the_new_one_became_current_not_after_it_was_made(
    world, fake, monkeypatch
):
    world.adopt_all()
    engine, resumed_at = _resumed_days_later(world, fake, monkeypatch, "maps")
    engine.now = lambda: resumed_at + timedelta(hours=1)  # made 2 days ago, current for an hour
    assert engine.cleanup(dry_run=False)["actions"] == []
    assert world.maps_name in fake.live_google_keys()
    engine.now = lambda: resumed_at + timedelta(hours=25)
    assert [(a.version, a.action) for a in engine.cleanup(dry_run=False)["actions"]] == [(1, "retire")]
    assert world.maps_name not in fake.live_google_keys()


@pytest.mark.parametrize("older_voke", [False, True])
def test_cleanup_keeps_an_old_key_after_a_later_rotation_was_rolled_back_on_a_machine_without_history(
    world, fake, monkeypatch, older_voke
):
    world.adopt_all()
    engine, resumed_at = _resumed_days_later(world, fake, monkeypatch, "maps")  # v2 made 2 days before
    if older_voke:  # a rotation an older voke finished: no `voke-became-current`, as before
        meta = world.store.get("maps-key")
        world.store.update("maps-key", etag=meta.etag, annotations={CURRENT_ANNOTATION: None})
    else:  # a later rotation fails its test and is rolled back: `voke-last-rotation` is its own

        def at(step):
            if step == "set_target":
                fake.fail("GET", r"^/maps/api/geocode/json$", 401, times=3)

        monkeypatch.setattr(engine, "_fault", at)
        assert rotate_api_key(engine, "maps").error.exit_code == 6
        assert json.loads(world.store.get("maps-key").annotations[LAST_ANNOTATION])["status"] == "rolled_back"
    (world.home / "rotations" / "history.jsonl").unlink()  # another operator's machine, a CI runner
    engine = world.engine()
    engine.now = lambda: resumed_at + timedelta(hours=1)  # v2 current for an hour only
    assert engine.cleanup(dry_run=True)["actions"] == []
    engine.now = lambda: resumed_at + timedelta(hours=25)
    assert [(a.version, a.action) for a in engine.cleanup(dry_run=True)["actions"]] == [(1, "retire")]


def test_cleanup_disables_a_version_a_day_after_it_was_superseded_not_after_its_successor_was_made(
    world, fake, monkeypatch
):
    world.adopt_all()
    # v2 made now, current only 2 days later; v3-v5 then: v1 and v2, the 4th and 5th enabled
    # versions, were superseded then (v1 when v2 became current, not when it was made).
    engine, resumed_at = _resumed_days_later(world, fake, monkeypatch, "auth0")
    for _ in range(3):
        assert rotate_api_key(engine, "auth0").error is None
    engine.now = lambda: resumed_at + timedelta(hours=1)
    assert engine.cleanup(dry_run=True)["actions"] == []
    engine.now = lambda: resumed_at + timedelta(hours=25)
    planned = engine.cleanup(dry_run=True)["actions"]
    assert [(a.version, a.action, a.reason) for a in planned] == [
        (n, "disable", f"superseded since {iso(resumed_at)}") for n in (1, 2)
    ]


def test_a_cleanup_stopped_after_deleting_a_key_disables_its_version_next_time(world, fake, monkeypatch):
    engine = world.adopt_all()
    assert rotate_api_key(engine, "sendgrid").error is None
    later = datetime.now(timezone.utc) + timedelta(days=2)
    engine.now = lambda: later
    monkeypatch.setattr(engine.store, "set_state", lambda *_a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed right before the version is disabled
        engine.cleanup(dry_run=False)
    monkeypatch.undo()
    assert len(fake.live_sendgrid_keys()) == 1  # the old key is gone, its version still enabled
    engine = world.engine()
    engine.now = lambda: later
    plan = engine.cleanup(dry_run=True)["actions"]
    assert [(a.secret, a.version, a.action) for a in plan] == [("sendgrid-key", 1, "retire")]
    engine.cleanup(dry_run=False)
    assert engine.store.get("sendgrid-key").version(1).state == "disabled"
    assert len(fake.live_sendgrid_keys()) == 1


# -- notifications -------------------------------------------------------------------------------------------
def test_webhook_told_of_success_and_rollback_without_values(world, fake):
    with WebhookReceiver() as hook:
        engine = world.adopt_all()
        engine = world.engine(notify_webhook=hook.url)
        assert rotate_api_key(engine, "sendgrid").error is None
        fake.sendgrid_minted_keys_work = False
        assert rotate_api_key(engine, "sendgrid").error.exit_code == 6
        fake.sendgrid_minted_keys_work = True
        fake.fail("GET", r"^/v3/api_keys/", status=404)  # the current key's scopes cannot be read
        stopped = rotate_api_key(engine, "sendgrid")
        assert stopped.error.exit_code == 7
        assert engine.rollback(stopped.report.rotation_id).error is None
    texts = [b["text"] for b in hook.bodies]
    assert len(texts) == 4 and all(set(b) == {"text"} for b in hook.bodies)
    assert "succeeded" in texts[0] and "sendgrid-key" in texts[0]
    assert "rolled back" in texts[1] and "voke rotate api-key sendgrid --yes" in texts[1]
    assert (
        "needs a person" in texts[2]
        and f"voke rotate rollback {stopped.report.rotation_id} --yes" in texts[2]
    )
    assert "rolled back" in texts[3]
    values = [k["key"] for k in fake.sendgrid_keys.values()] + [world.sendgrid_key]
    values += [
        json.loads(world.store.access("sendgrid-key", v.version))["api_key"]
        for v in world.store.get("sendgrid-key").versions
        if v.state == "enabled"
    ]
    for raw in hook.raw:
        for value in values:
            assert value not in raw.decode()


def test_a_failing_webhook_never_fails_the_rotation(world, fake, caplog):
    engine = world.adopt_all()
    with WebhookReceiver(status=500) as hook:
        engine = world.engine(notify_webhook=hook.url)
        assert rotate_api_key(engine, "maps").error is None
    assert len(hook.bodies) == 1
    engine = world.engine(notify_webhook="http://127.0.0.1:9/unreachable")
    assert rotate_api_key(engine, "maps").error is None


def test_ctrl_c_while_the_webhook_is_told_leaves_the_rotation_succeeded(world, fake, monkeypatch):
    import os
    import signal

    world.adopt_all()
    engine = world.engine(notify_webhook="http://127.0.0.1:9/slow")
    told: list[str] = []

    def slow_endpoint(record, **_):
        told.append(record.status)
        os.kill(os.getpid(), signal.SIGINT)  # noted: the rotation has ended
        os.kill(os.getpid(), signal.SIGINT)  # the second gives way, inside the wait: it skips the webhook

    monkeypatch.setattr(engine, "_notify", slow_endpoint)
    outcome = rotate_api_key(engine, "maps")
    assert outcome.error is None and outcome.report.status == "succeeded" and told == ["succeeded"]
    assert engine.unfinished() == []


# -- the CLI, on the shared local platform ---------------------------------------------------------------------
def cli_environ(platform_environ, fake, secret):
    return {
        **platform_environ,
        "VOKE_ROTATION__API_KEYS__SENDGRID__PROVIDER": "sendgrid",
        "VOKE_ROTATION__API_KEYS__SENDGRID__SECRET": secret,
        "VOKE_ROTATION__API_KEYS__SENDGRID__ENDPOINT": fake.url,
        "VOKE_ROTATION__API_KEYS__STRIPE__PROVIDER": "stripe",
        "VOKE_ROTATION__API_KEYS__STRIPE__SECRET": f"{secret}-stripe",
        "VOKE_ROTATION__API_KEYS__STRIPE__ENDPOINT": fake.url,
    }


def voke_proc(environ, *args, **extra):
    return subprocess.run(
        [sys.executable, "-m", "voketag_ops", *args],
        input="",
        capture_output=True,
        text=True,
        env={**environ, **extra},
        timeout=120,
    )


@pytest.mark.pg
def test_crash_after_each_step_then_resume_never_two_new_keys(
    platform, platform_environ, fake, voke, monkeypatch
):
    environ = cli_environ(platform_environ, fake, "sendgrid-crash")
    key, key_id = fake.add_sendgrid_key()
    monkeypatch.setattr(sys, "stdin", io.StringIO(key))
    adopted = voke("rotate", "api-key", "sendgrid", "--adopt", "--yes", "--json", environ=environ)
    assert adopted.exit_code == 0, adopted.stdout + adopted.stderr
    store = platform.store()
    for step in STEPS:
        before = set(fake.live_sendgrid_keys())
        # the crash is the real process's (os._exit mid-step); the resume runs in-process, as any later voke
        crashed = voke_proc(environ, "rotate", "api-key", "sendgrid", "--yes", **{FAULT_ENV: step})
        assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
        resumed = voke("rotate", "resume", "--yes", "--json", environ=environ)
        assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
        meta = store.get("sendgrid-crash")
        assert ANNOTATION not in meta.annotations and "pending" not in meta.aliases
        current = json.loads(store.access("sendgrid-crash", "current"))
        minted = set(fake.live_sendgrid_keys()) - before
        assert minted == {current["key_id"]}, step  # exactly one new key, and it is the stored one
        assert fake.sendgrid_keys[current["key_id"]]["key"] == current["api_key"]
        assert key_id in fake.live_sendgrid_keys()  # the old key worked throughout


@pytest.mark.pg
def test_cli_api_key_commands_and_no_value_in_any_output(platform, platform_environ, fake, voke, monkeypatch):
    environ = cli_environ(platform_environ, fake, "sendgrid-cli")
    environ["VOKE_LOG_LEVEL"] = "debug"
    key, _ = fake.add_sendgrid_key()
    stripe_old, stripe_new = fake.add_stripe_key(), fake.add_stripe_key()

    def run(*args, stdin=""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return voke(*args, environ=environ)

    runs = [
        run("rotate", "api-key", "sendgrid", "--dry-run"),  # not adopted yet
        run("rotate", "api-key", "sendgrid", "--adopt", "--yes", "--json", stdin=key + "\n"),
        run("rotate", "api-key", "stripe", "--adopt", "--yes", "--json", stdin=stripe_old),
        run("rotate", "api-key", "sendgrid", "--dry-run", "--json"),
        run("rotate", "api-key", "sendgrid", "--yes", "--json"),
        run("rotate", "api-key", "stripe", "--yes", "--json", stdin=stripe_new),
        run("rotate", "status", "--json"),
        run("rotate", "history", "--json"),
        run("secrets", "list", "--json"),
        run("config", "show"),
        run("rotate", "api-key", "stripe", "--yes"),  # nothing pasted: usage error, nothing happens
        run("rotate", "api-key", "stripe", stdin=stripe_new),  # no --yes and no terminal
        run("rotate", "api-key", "twilio", "--yes"),  # not configured
    ]
    codes = [r.exit_code for r in runs]
    assert codes == [5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 3], [r.stdout + r.stderr for r in runs]
    assert "--adopt" in runs[0].stderr
    assert runs[3].json["result"]["plan"][0].startswith("lock sendgrid-cli")
    rotated = runs[4].json["result"]
    assert rotated["status"] == "succeeded" and rotated["kind"] == "api-key:sendgrid"
    assert runs[5].json["result"]["strategy"] == "assisted"
    status = runs[6].json["result"]
    assert {"sendgrid-cli", "sendgrid-cli-stripe", "db-app", "jwt-signing"} <= {
        s["name"] for s in status["secrets"]
    }
    stored = json.loads(platform.store().access("sendgrid-cli-stripe", "current"))
    assert stored["api_key"] == stripe_new
    values = [key, stripe_old, stripe_new] + [k["key"] for k in fake.sendgrid_keys.values()]
    home = platform.env.home
    files = [
        p
        for p in home.rglob("*")
        if p.is_file() and p.suffix in (".jsonl", ".json", ".log") and "secrets" not in p.parts
    ]
    blobs = [r.stdout + r.stderr for r in runs] + [p.read_text(errors="replace") for p in files]
    for value in values:
        for blob in blobs:
            assert value not in blob


@pytest.mark.pg
def test_a_due_stripe_key_stops_before_the_lock(
    platform, platform_environ, fake, voke, monkeypatch, tmp_path
):
    environ = cli_environ(platform_environ, fake, "sendgrid-due")
    stripe = fake.add_stripe_key()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stripe))
    assert voke("rotate", "api-key", "stripe", "--adopt", "--yes", environ=environ).exit_code == 0
    from voketag_ops.config import load_config
    from voketag_ops.workflows.rotate import local_engine

    engine = local_engine(load_config(environ=environ, cwd=tmp_path).settings)
    engine.now = lambda: datetime.now(timezone.utc) + timedelta(days=200)
    due = {d["name"] for d in engine.due()}
    assert "sendgrid-due-stripe" in due
    with pytest.raises(PreconditionError, match="no API that creates keys"):
        engine.rotate("stripe")
    assert ANNOTATION not in platform.store().get("sendgrid-due-stripe").annotations
    # The cron job's plan says what its run does: refused (the dry run said `planned`).
    store = platform.store()
    meta = store.get("sendgrid-due-stripe")
    long_ago = {"id": None, "status": "created", "finished_at": "2020-01-01T00:00:00Z", "version": 1}
    store.update(meta.name, etag=meta.etag, annotations={LAST_ANNOTATION: json.dumps(long_ago)})  # due now
    planned = voke("rotate", "due", "--run", "--dry-run", "--json", environ=environ)
    ran = voke("rotate", "due", "--run", "--yes", "--json", environ=environ)
    reports = []
    for result in (planned, ran):
        assert result.exit_code == 5, result.stdout
        reports.append(
            [r for r in result.json["result"]["rotations"] if r["secret"] == "sendgrid-due-stripe"]
        )
    assert reports[0] == reports[1] and reports[0][0]["status"] == "not_started"
    assert "no API that creates keys" in reports[0][0]["error"]["message"]
    assert len(store.get("sendgrid-due-stripe").versions) == 1


def test_config_show_masks_the_webhook(voke, make_environ, tmp_path):
    hook = "https://hooks.slack.com/services/T000/B000/s3cr3tw3bh00kt0k3n"
    result = voke(
        "config", "show", "--json", environ=make_environ(tmp_path / "h", VOKE_ROTATION__NOTIFY_WEBHOOK=hook)
    )
    assert result.exit_code == 0 and "rotation.notify_webhook" in result.stdout
    assert hook not in result.stdout + result.stderr


def test_a_disabled_current_version_in_the_local_store_is_a_precondition_naming_it(world, fake):
    engine = world.adopt_all()
    world.store.set_state("sendgrid-key", 1, "disabled")
    with pytest.raises(PreconditionError) as info:  # as on Secret Manager: one rule for both stores
        rotate_api_key(engine, "sendgrid")
    assert info.value.message == "secret sendgrid-key: current version 1 is DISABLED; nothing was changed"
    assert "sendgrid-key.json" in (info.value.hint or "") and len(fake.live_sendgrid_keys()) == 1
