"""The JWT signing keyring: RFC 7638 kids, JWS tokens, publish-before-sign with a fake
clock (old tokens verify until the max lifetime; signing switches only after the
publication wait), --emergency, resume, and `voke rotate jwt` / `jwks` on the CLI."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from voketag_ops.adapters.local.secrets import LocalSecretStore
from voketag_ops.adapters.local.services import LocalServiceRuntime
from voketag_ops.config import JwtSettings, RotationSettings
from voketag_ops.core import jwt_keys
from voketag_ops.core.rotation import ANNOTATION, RotationRecord
from voketag_ops.errors import PreconditionError
from voketag_ops.workflows.jwt import (
    bootstrap_keyring,
    init_keyring,
    jwt_credential,
    public_jwks,
    rotate_jwt,
    sign_token,
    verify_token,
)
from voketag_ops.workflows.rotate import RotationEngine

T0 = datetime(2027, 1, 1, 2, 0, tzinfo=timezone.utc)
LIFETIME, REFRESH = 3600, 300


class Crash(BaseException):
    """A voke killed where VOKE_FAULT_CRASH_AFTER (or a patched call) says: nothing after runs."""


def crash(_code: int) -> None:
    raise Crash  # in place of os._exit


def test_kid_is_the_rfc_7638_thumbprint():
    # RFC 7638 section 3.1's example key and its thumbprint
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu"
        "6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awa"
        "pJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwt_keys.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("algorithm", ["ES256", "RS256", "EdDSA"])
def test_keys_sign_and_verify(algorithm):
    key = jwt_keys.generate_key(algorithm, T0)
    assert key["kid"] == jwt_keys.thumbprint(key["public_jwk"])
    jwt_keys.check_key(key)
    ring = jwt_keys.Keyring(algorithm, key)
    jwks = ring.jwks(T0)
    assert [k["kid"] for k in jwks["keys"]] == [key["kid"]]
    assert all("d" not in k and "private_key" not in k for k in jwks["keys"])
    token = jwt_keys.sign(key, {"sub": "u1", "exp": int((T0 + timedelta(hours=1)).timestamp())})
    assert jwt_keys.verify(jwks, token, T0)["sub"] == "u1"
    head, _claims, sig = token.split(".")
    forged = jwt_keys.b64url(json.dumps({"sub": "admin", "exp": 2**31}).encode())
    with pytest.raises(jwt_keys.TokenError, match="bad signature"):
        jwt_keys.verify(jwks, f"{head}.{forged}.{sig}", T0)
    with pytest.raises(jwt_keys.TokenError, match="expired"):
        jwt_keys.verify(jwks, token, T0 + timedelta(hours=2))
    other = jwt_keys.generate_key(algorithm, T0)
    with pytest.raises(jwt_keys.TokenError, match="unknown kid"):
        jwt_keys.verify(jwks, jwt_keys.sign(other, {"sub": "x"}), T0)


def test_keyring_check_catches_a_wrong_kid():
    ring = jwt_keys.new_keyring("ES256", T0)
    ring.check()
    bad = jwt_keys.Keyring("ES256", {**ring.current, "kid": "not-the-thumbprint"})
    with pytest.raises(ValueError, match="thumbprint"):
        bad.check()


def test_an_emergency_keyring_holds_one_fresh_key_of_the_algorithm_asked_for():
    ring = jwt_keys.emergency(T0, algorithm="EdDSA")
    assert ring.algorithm == ring.current["alg"] == "EdDSA" and ring.kids() == [ring.current["kid"]]
    assert ring.current["signing_since"] == ring.current["created_at"]
    ring.check()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def keyring(tmp_path):
    home = tmp_path / "home"
    store = LocalSecretStore(home)
    settings = RotationSettings(
        test_interval=0,
        jwt=JwtSettings(max_token_lifetime_seconds=LIFETIME, verifier_refresh_seconds=REFRESH),
    )
    clock = Clock(T0)
    assert bootstrap_keyring(store, settings.jwt, clock())
    assert not bootstrap_keyring(store, settings.jwt, clock())  # idempotent
    engine = RotationEngine(
        store=store,
        runtime=LocalServiceRuntime(home, {}),
        target=None,
        settings=settings,
        home=home,
        sleep=lambda _s: None,
    )
    engine.now = clock
    return engine, clock, store


def kids(cred):
    return [k["kid"] for k in public_jwks(cred)["keys"]]


def claims(clock, sub):
    return {"sub": sub, "iat": int(clock().timestamp()), "exp": int(clock().timestamp()) + LIFETIME}


def test_a_wall_clock_stepped_back_mid_rotation_times_nothing_negative(keyring):
    from voketag_ops.audit import AuditLog

    engine, clock, _store = keyring
    # NTP sets the clock back an hour once the rotation has started: it finishes "before" it
    # started. Its events and reports say how long it ran, as the monotonic clock measured it.
    engine.progress = lambda message: clock.advance(-3600) if message.endswith(": create_pending") else None
    outcome = rotate_jwt(engine)
    assert outcome.error is None and outcome.report.status == "succeeded"
    report = outcome.report
    assert report.finished_at < report.started_at and 0 <= report.duration_seconds < 60
    events = [e for e in AuditLog(engine.audit_home).entries() if e.event_type.startswith("rotation.")]
    assert [e.event_type for e in events] == ["rotation.start", "rotation.finish"]
    assert all(0 <= e.duration_seconds < 60 for e in events), [e.duration_seconds for e in events]
    ended = engine.resume(report.rotation_id).report  # found in the history: its report again
    assert ended.finished_at == report.finished_at
    assert 0 <= ended.duration_seconds <= report.duration_seconds


def test_publish_before_sign_then_keep_after_sign(keyring):
    engine, clock, store = keyring
    cred = jwt_credential(engine)
    k1 = kids(cred)[0]
    early = sign_token(cred, claims(clock, "early"))

    # 1. publish: next is in the JWKS, signing stays on the old key
    outcome = rotate_jwt(engine)
    assert outcome.error is None and outcome.report.status == "succeeded"
    # the promotion (minutes away), not the yearly schedule's next Jan 1st
    assert outcome.report.steps[-1].detail < "next due 2028-01-01T02:00:00Z"
    published = kids(cred)
    assert len(published) == 2 and published[0] == k1
    k2 = published[1]
    header = json.loads(jwt_keys.b64url_decode(sign_token(cred, claims(clock, "x")).split(".")[0]))
    assert header["kid"] == k1

    # 2. too early to switch: exit 5, nothing changed; not due yet
    clock.advance(REFRESH - 10)
    versions = len(store.get("jwt-signing").versions)
    with pytest.raises(PreconditionError, match="signing switches to it at"):
        rotate_jwt(engine)
    assert len(store.get("jwt-signing").versions) == versions
    assert "jwt-signing" not in [d["name"] for d in engine.due()]
    last_old = sign_token(cred, claims(clock, "last-old"))  # signed by k1 just before the switch

    # 3. the wait is over: due, and a second run promotes next
    clock.advance(10)
    assert "jwt-signing" in [d["name"] for d in engine.due()]
    outcome = rotate_jwt(engine)
    assert outcome.error is None, outcome.report.error
    switched_at = clock()
    assert kids(cred) == [k2, k1]  # current first, previous kept
    header = json.loads(jwt_keys.b64url_decode(sign_token(cred, claims(clock, "y")).split(".")[0]))
    assert header["kid"] == k2
    ring = json.loads(store.access("jwt-signing", "current"))
    assert ring["next"] is None and "private_key" not in ring["previous"]  # the old private key is gone

    # 4. tokens signed with the old kid verify until the max lifetime has passed
    assert verify_token(cred, early)["sub"] == "early"
    clock.now = switched_at + timedelta(seconds=LIFETIME - 5)
    assert verify_token(cred, last_old)["sub"] == "last-old"
    assert "jwt-signing" not in [d["name"] for d in engine.due()]
    clock.now = switched_at + timedelta(seconds=LIFETIME) + jwt_keys.CLOCK_SKEW + timedelta(seconds=1)
    assert kids(cred) == [k2]
    with pytest.raises(jwt_keys.TokenError, match="unknown kid"):
        verify_token(cred, last_old)


def header_of(token):
    return json.loads(jwt_keys.b64url_decode(token.split(".")[0]))


def test_a_changed_algorithm_is_migrated_to_publish_before_sign(keyring):
    # rotation.jwt.algorithm changed once the keyring existed: the next key is made with it
    # (not the keyring's old one, as the plan said), published beside the old key, each in the
    # JWKS with its own alg; old tokens verify until they expire (found by a review).
    engine, clock, store = keyring
    cred = jwt_credential(engine)
    cred.settings = cred.settings.model_copy(update={"algorithm": "RS256"})
    old_kid = kids(cred)[0]
    es_token = sign_token(cred, claims(clock, "es"))
    assert header_of(es_token)["alg"] == "ES256"

    plan = rotate_jwt(engine, dry_run=True).report.plan
    assert any("add a new RS256 next key" in line for line in plan), plan
    outcome = rotate_jwt(engine)  # publish
    assert outcome.error is None, outcome.report.error
    new_kid = kids(cred)[1]
    assert outcome.report.steps[1].detail.endswith(f"for RS256 key {new_kid}")
    algs = {k["kid"]: (k["kty"], k["alg"]) for k in public_jwks(cred)["keys"]}
    assert algs == {old_kid: ("EC", "ES256"), new_kid: ("RSA", "RS256")}
    assert header_of(sign_token(cred, claims(clock, "x")))["kid"] == old_kid  # publish before sign

    clock.advance(REFRESH)
    plan = rotate_jwt(engine, dry_run=True).report.plan
    assert any(f"switch signing to the published RS256 next key {new_kid};" in line for line in plan), plan
    assert rotate_jwt(engine).error is None  # promote
    rs_token = sign_token(cred, claims(clock, "rs"))
    assert header_of(rs_token) == {"alg": "RS256", "typ": "JWT", "kid": new_kid}
    assert verify_token(cred, rs_token)["sub"] == "rs" and verify_token(cred, es_token)["sub"] == "es"
    ring = json.loads(store.access("jwt-signing", "current"))
    assert ring["algorithm"] == "RS256" and ring["previous"]["alg"] == "ES256"
    jwt_keys.Keyring.from_dict(ring).check()
    # a token naming the new key with the old key's algorithm does not verify
    head = jwt_keys.b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": new_kid}).encode())
    with pytest.raises(jwt_keys.TokenError, match="algorithm does not match"):
        verify_token(cred, head + es_token[es_token.index(".") :])

    cred.settings = cred.settings.model_copy(update={"algorithm": "EdDSA"})
    plan = rotate_jwt(engine, emergency=True, dry_run=True).report.plan
    assert any("make a fresh EdDSA key" in line for line in plan), plan
    outcome = rotate_jwt(engine, emergency=True)
    assert outcome.error is None, outcome.report.error
    assert header_of(sign_token(cred, claims(clock, "ed")))["alg"] == "EdDSA"
    assert [k["alg"] for k in public_jwks(cred)["keys"]] == ["EdDSA"]
    assert "EdDSA key" in outcome.report.steps[1].detail


def test_init_on_an_existing_keyring_reports_its_own_algorithm_not_the_configured_one(keyring):
    # Found by review: `rotate jwt --init` on an ES256 keyring said RS256 once rotation.jwt.algorithm
    # named the next key's algorithm (a migration not yet rotated).
    engine, _clock, _store = keyring
    cred = jwt_credential(engine)
    cred.settings = cred.settings.model_copy(update={"algorithm": "RS256"})
    for dry_run in (True, False):
        report = init_keyring(engine, dry_run=dry_run)
        assert report["status"] == "exists" and report["algorithm"] == "ES256", report


def test_a_promotion_resumed_late_keeps_the_old_key_as_long_as_its_tokens_live(keyring, monkeypatch):
    from voketag_ops.workflows import rotate as rotate_wf

    engine, clock, _store = keyring
    cred = jwt_credential(engine)
    assert rotate_jwt(engine).error is None  # publish
    clock.advance(REFRESH + 1)

    monkeypatch.setattr(rotate_wf.os, "_exit", crash)
    engine.environ = {rotate_wf.FAULT_ENV: "create_pending"}
    with pytest.raises(Crash):
        rotate_jwt(engine)  # the promotion stops after its keyring was made
    engine.environ = {}
    clock.advance(2 * LIFETIME)  # resumed much later: the old key signed all along
    late = sign_token(cred, claims(clock, "signed-by-the-old-key"))
    assert engine.resume().error is None
    clock.advance(REFRESH)
    assert rotate_jwt(engine).error is None  # the next publish must not drop the old key yet
    assert verify_token(cred, late)["sub"] == "signed-by-the-old-key"


def test_a_promotion_resumed_late_keeps_the_old_key_from_its_commit_before_it_finishes(keyring, monkeypatch):
    from voketag_ops.workflows import rotate as rotate_wf

    engine, clock, _store = keyring
    cred = jwt_credential(engine)
    assert rotate_jwt(engine).error is None  # publish
    clock.advance(REFRESH + 1)
    old_kid = kids(cred)[0]

    monkeypatch.setattr(rotate_wf.os, "_exit", crash)
    engine.environ = {rotate_wf.FAULT_ENV: "create_pending"}
    with pytest.raises(Crash):
        rotate_jwt(engine)  # the promotion's keyring is made long before it commits
    clock.advance(2 * LIFETIME)
    late = sign_token(cred, claims(clock, "signed-just-before-the-switch"))
    engine.environ = {rotate_wf.FAULT_ENV: "commit"}
    with pytest.raises(Crash):
        engine.resume()  # signing switched; the rotation is not finished
    committed = clock()
    assert kids(cred)[1:] == [old_kid] and verify_token(cred, late)["sub"] == "signed-just-before-the-switch"
    clock.now = committed + timedelta(seconds=LIFETIME) + jwt_keys.CLOCK_SKEW - timedelta(seconds=1)
    assert old_kid in kids(cred)
    clock.now = committed + timedelta(seconds=LIFETIME) + jwt_keys.CLOCK_SKEW
    assert old_kid not in kids(cred)


@pytest.mark.parametrize("where", ["saved", "fault hook"])
def test_ctrl_c_between_steps_gives_the_lease_up_and_names_the_rotation_to_resume(
    keyring, monkeypatch, where
):
    # Found by review: one landing past the step's record, in the fault hook (or anywhere before
    # the next step began), was a bare "interrupted" (exit 130) that kept the lease.
    from voketag_ops.core.times import iso
    from voketag_ops.errors import Interrupted
    from voketag_ops.workflows import rotate as rotate_wf

    engine, clock, store = keyring
    save = engine._save

    def save_then_ctrl_c(record, **kw):
        save(record, **kw)
        if record.step == "test":
            raise KeyboardInterrupt  # lands right after the step's record was saved

    def ctrl_c(_code: int) -> None:
        raise KeyboardInterrupt

    if where == "saved":
        engine._save = save_then_ctrl_c
    else:  # lands once the step's record was saved and its save returned, before the next step
        monkeypatch.setattr(rotate_wf.os, "_exit", ctrl_c)
        engine.environ = {rotate_wf.FAULT_ENV: "test"}
    with pytest.raises(Interrupted, match="interrupted after test; its state is recorded") as interrupted:
        rotate_jwt(engine)
    monkeypatch.undo()
    engine.environ = {}
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert interrupted.value.hint == (  # with --yes: pasted into cron or CI (no terminal) they run
        f"voke rotate resume {stored.id} --yes   or: voke rotate rollback {stored.id} --yes"
    )
    assert interrupted.value.message.startswith(f"rotation {stored.id} interrupted after test")
    assert stored.step == "test" and stored.lease_until == iso(clock())  # resumable at once
    engine._save = save
    outcome = engine.resume(stored.id)
    assert outcome.error is None and outcome.report.status == "succeeded"


def test_an_interrupted_run_resume_and_rollback_each_write_an_interrupted_event(keyring):
    from voketag_ops.audit import AuditLog
    from voketag_ops.errors import Interrupted

    engine, _clock, store = keyring
    save, undo = engine._save, engine._undo
    cut_at = ["test"]  # the step whose saved record a Ctrl-C lands right after (None: the next one)

    def save_then_ctrl_c(record, **kw):
        save(record, **kw)
        if cut_at[0] in (None, record.step):
            raise KeyboardInterrupt

    def ctrl_c(record, scope, t0):
        raise KeyboardInterrupt

    engine._save = save_then_ctrl_c
    with pytest.raises(Interrupted, match="interrupted after test"):
        rotate_jwt(engine)
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    cut_at[0] = None
    with pytest.raises(Interrupted, match=f"rotation {stored.id} interrupted during commit"):
        engine.resume(stored.id)
    engine._save, engine._undo = save, ctrl_c
    with pytest.raises(Interrupted, match=f"the rollback of rotation {stored.id} was interrupted"):
        engine.rollback(stored.id)
    engine._undo = undo
    assert engine.rollback(stored.id).report.status == "rolled_back"
    entries = [e for e in AuditLog(engine.audit_home).entries() if e.details.get("rotation_id") == stored.id]
    assert [(e.event_type, e.result) for e in entries] == [
        ("rotation.start", "started"),
        ("rotation.start", "interrupted"),
        ("rotation.resume", "started"),
        ("rotation.resume", "interrupted"),
        ("rotation.rollback", "interrupted"),
        ("rotation.finish", "rolled_back"),
    ]
    run = entries[1]
    assert run.target == "jwt-signing" and run.details["step"] == "test"
    assert run.details["previous_version"] == stored.old_current
    assert run.details["new_version"] == stored.pending_version is not None
    assert run.details["error"] == {
        "type": "Interrupted",
        "message": f"rotation {stored.id} interrupted after test; its state is recorded",
    }
    assert run.duration_seconds is not None and run.duration_seconds >= 0
    assert "private" not in json.dumps([e.details for e in entries]).lower()  # ids and versions, no key


def test_ctrl_c_once_the_record_is_written_names_the_rotation_before_its_first_step(keyring):
    # From the write of its record (or its take-over by a resume) to its first step: the
    # start event, the claim let go, the resume event. Each named the rotation to resume
    # (a bare "interrupted" left no id, no hint, no `interrupted` event, and a resume's lease).
    from contextlib import contextmanager

    from voketag_ops.audit import AuditLog
    from voketag_ops.core.times import iso
    from voketag_ops.errors import Interrupted

    engine, clock, store = keyring
    audit = engine._audit
    cut_on = [("rotation.start", "started")]

    def audit_then_ctrl_c(event_type, record, result, **kw):
        audit(event_type, record, result, **kw)
        if (event_type, result) in cut_on:
            raise KeyboardInterrupt

    def stored():
        return RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])

    def cut(call):  # the answer to an interrupt; a bare one fails the test, not the test run
        try:
            call()
        except Interrupted as exc:
            return exc
        except KeyboardInterrupt:
            pytest.fail("a bare interrupt: no rotation named, no resume hint")
        pytest.fail("not interrupted")

    engine._audit = audit_then_ctrl_c
    run = cut(lambda: rotate_jwt(engine))
    first = stored()
    assert run.message == f"rotation {first.id} interrupted after lock; its state is recorded"
    assert run.hint == f"voke rotate resume {first.id} --yes   or: voke rotate rollback {first.id} --yes"
    assert first.step == "lock" and first.lease_until == iso(clock())  # resumable at once

    cut_on[:] = [("rotation.resume", "started")]
    resumed = cut(lambda: engine.resume(first.id))
    assert (resumed.message, resumed.hint) == (run.message, run.hint)
    assert stored().lease_until == iso(clock())
    engine._audit = audit
    assert engine.rollback(first.id).report.status == "rolled_back"

    @contextmanager
    def claim_then_ctrl_c(_secret):
        yield
        raise KeyboardInterrupt  # as the claim is let go, the record written

    engine.starting = claim_then_ctrl_c
    claimed = cut(lambda: rotate_jwt(engine))
    second = stored()
    assert claimed.message == f"rotation {second.id} interrupted after lock; its state is recorded"
    entries = AuditLog(engine.audit_home).entries()
    events = [(e.event_type, e.result, e.details.get("rotation_id")) for e in entries]
    assert [e for e in events if e[2] in (first.id, second.id)] == [
        ("rotation.start", "started", first.id),
        ("rotation.start", "interrupted", first.id),
        ("rotation.resume", "started", first.id),
        ("rotation.resume", "interrupted", first.id),
        ("rotation.finish", "rolled_back", first.id),
        ("rotation.start", "interrupted", second.id),
    ]


def test_ctrl_c_while_a_run_or_a_resume_is_finished_names_the_resume(keyring):
    # Recording the finish and clearing the record are store writes like any step's: a Ctrl-C
    # there gives the lease up and names the resume (a bare "interrupted" kept the lease).
    from voketag_ops.audit import AuditLog
    from voketag_ops.core.times import iso
    from voketag_ops.errors import Interrupted

    engine, clock, store = keyring
    save, clear = engine._save, engine._clear

    def ctrl_c_before_the_finish_is_recorded(record, **kw):
        if record.status == "succeeded":
            raise KeyboardInterrupt
        save(record, **kw)

    def ctrl_c_before_the_record_is_cleared(record):
        raise KeyboardInterrupt

    engine._save = ctrl_c_before_the_finish_is_recorded
    with pytest.raises(Interrupted, match="interrupted after finish; its state is recorded") as run:
        rotate_jwt(engine)
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert run.value.hint == f"voke rotate resume {stored.id} --yes"  # not a rollback: it worked
    assert (stored.step, stored.status) == ("health", "in_progress")  # resume runs finish again
    assert stored.lease_until == iso(clock())  # resumable at once
    engine._save, engine._clear = save, ctrl_c_before_the_record_is_cleared
    clock.advance(1.23)  # the resume that records the finish comes later
    with pytest.raises(Interrupted, match=f"rotation {stored.id} interrupted after finish") as resumed:
        engine.resume(stored.id)
    assert resumed.value.hint == f"voke rotate resume {stored.id} --yes"
    finished = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert (finished.step, finished.status, finished.lease_until) == ("finish", "succeeded", iso(clock()))
    engine._clear = clear
    outcome = engine.resume(stored.id)
    assert outcome.error is None and outcome.report.status == "succeeded"
    assert ANNOTATION not in store.get("jwt-signing").annotations
    # the report of a rotation that had ended is timed as it ran, not by the resume that only
    # cleared its record; so is that of one found in the history (its record gone)
    assert (outcome.report.started_at, outcome.report.finished_at) == (stored.started_at, iso(clock()))
    assert outcome.report.duration_seconds == 1.23
    again = engine.resume(stored.id)
    assert again.report.duration_seconds == 1.23 and again.report.finished_at == iso(clock())
    entries = [e for e in AuditLog(engine.audit_home).entries() if e.details.get("rotation_id") == stored.id]
    message = f"rotation {stored.id} interrupted after finish; its state is recorded"
    cut = [
        (e.event_type, e.details["step"], e.details["error"]["message"])
        for e in entries
        if e.result == "interrupted"
    ]
    assert cut == [("rotation.start", "finish", message), ("rotation.resume", "finish", message)]
    # told by the resume cut before its clear, the finish is not told again by the last one
    assert [(e.event_type, e.result) for e in entries if e.event_type == "rotation.finish"] == [
        ("rotation.finish", "succeeded")
    ]
    assert [r.id for r in engine.history(secret="jwt-signing")].count(stored.id) == 1


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_rotation_stopped_by_sigterm_or_sighup_says_so_as_other_commands_do(keyring, signame):
    # The answers and `interrupted` events of a rotation, its resume and its rollback said
    # "interrupted" whatever stopped them; other commands say `terminated (SIGTERM)` (review).
    from voketag_ops import interrupts
    from voketag_ops.audit import AuditLog
    from voketag_ops.errors import Interrupted

    engine, _clock, store = keyring
    save, undo, clear = engine._save, engine._undo, engine._clear
    said = f"terminated ({signame})"

    def terminated(*_args, **_kw):
        interrupts.Terminated.received = signame  # as the handler notes it (conftest resets it)
        raise interrupts.Terminated

    def save_then_terminated(record, **kw):
        save(record, **kw)
        if record.step == "test":
            terminated()

    engine._save = save_then_terminated
    with pytest.raises(
        Interrupted, match=rf"rotation \S+ {re.escape(said)} after test; its state is recorded"
    ):
        rotate_jwt(engine)
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    engine._save, engine._undo = save, terminated
    with pytest.raises(Interrupted, match=f"the rollback of rotation {stored.id} was {re.escape(said)}"):
        engine.rollback(stored.id)
    engine._undo = undo
    assert engine.rollback(stored.id).report.status == "rolled_back"

    engine._clear = terminated
    with pytest.raises(Interrupted, match=rf"rotation (\S+) {re.escape(said)} after finish") as cut:
        rotate_jwt(engine)
    engine._clear = clear
    finished = re.search(r"rotation (\S+) ", cut.value.message)
    assert finished is not None and engine.resume(finished.group(1)).error is None
    errors = [
        e.details["error"]["message"]
        for e in AuditLog(engine.audit_home).entries()
        if e.result == "interrupted"
    ]
    assert len(errors) == 3 and all(said in m and "interrupted" not in m for m in errors), errors


def test_ctrl_c_once_the_record_is_cleared_says_it_succeeded_not_resume(keyring):
    # Its record gone, a resume would answer "no rotation ID" (exit 2): the rotation worked. (Its
    # history and event come before the clear: a Ctrl-C while they are written names the resume.)
    from voketag_ops.errors import Interrupted

    engine, _clock, store = keyring
    clear = engine._clear

    def ctrl_c_once_cleared(record):
        clear(record)
        raise KeyboardInterrupt

    engine._clear = ctrl_c_once_cleared
    with pytest.raises(Interrupted, match=r"rotation \S+ succeeded; interrupted once its history") as cut:
        rotate_jwt(engine)
    assert "resume" not in (cut.value.hint or "") and "voke rotate status" in cut.value.hint
    assert ANNOTATION not in store.get("jwt-signing").annotations


def test_a_signal_after_a_rotation_ended_waits_for_its_report(keyring, script_signals, monkeypatch):
    # Exit 130 after a rotation succeeded would have a cron wrapper or an operator run a second
    # one: from its end to the printed report a first Ctrl-C or SIGTERM waits; a second gives way.
    import os
    import signal

    from voketag_ops import interrupts
    from voketag_ops.workflows.rotate import RotationReport

    engine, _clock, _store = keyring
    of = RotationReport.of

    def ctrl_c_then_report(record, **kw):  # the report built once the rotation has ended
        os.kill(os.getpid(), signal.SIGINT)
        return of(record, **kw)

    monkeypatch.setattr(RotationReport, "of", ctrl_c_then_report)
    outcome = rotate_jwt(engine)
    assert outcome.error is None and outcome.report.status == "succeeded"
    with pytest.raises(KeyboardInterrupt):  # a report that hangs can still be stopped
        os.kill(os.getpid(), signal.SIGINT)
    interrupts.settle()  # the answer is out (Output.result)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("ending", ["succeeded", "not cleared", "untold", "rolled back"])
def test_a_second_signal_after_a_rotation_ended_says_how_it_ended_and_what_is_left(
    keyring, script_signals, monkeypatch, ending
):
    # The second Ctrl-C gives way before the report is printed: its answer was a bare
    # "interrupted" (exit 130), which has an operator or a cron wrapper rotate again, though the
    # rotation had ended. It says how, and what is left: nothing, the resume that clears its
    # record or writes its history line, or the retry of one rolled back.
    import errno
    import os
    import signal

    from voketag_ops.audit import AuditLog
    from voketag_ops.cli.app import _interrupted
    from voketag_ops.errors import ConnectivityError, SecretError
    from voketag_ops.workflows.rotate import RotationReport

    engine, _clock, store = keyring
    of, update, history = RotationReport.of, store.update, engine._history
    ended: list[str] = []

    def two_ctrl_cs_then_report(record, **kw):  # the report built once the rotation has ended
        ended.append(record.id)
        os.kill(os.getpid(), signal.SIGINT)  # held
        os.kill(os.getpid(), signal.SIGINT)  # the second gives way
        return of(record, **kw)

    def clear_refused(secret, **kw):
        if ANNOTATION in (kw.get("annotations") or {}) and kw["annotations"][ANNOTATION] is None:
            raise SecretError("the store is read-only")
        return update(secret, **kw)

    def disk_full(record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/home/history.jsonl")

    def unreachable(record, user):
        raise ConnectivityError("no route to the verifiers")

    monkeypatch.setattr(RotationReport, "of", two_ctrl_cs_then_report)
    if ending == "not cleared":
        store.update = clear_refused
    elif ending == "untold":
        engine._history = disk_full
    elif ending == "rolled back":
        engine._test = unreachable
    with pytest.raises(KeyboardInterrupt):
        rotate_jwt(engine)
    rotation = ended[0]
    said = (
        f"interrupted after rotation {rotation} of jwt-signing "
        + {
            "succeeded": "succeeded; its report was not printed (`voke rotate history` shows it)",
            "not cleared": f"succeeded; its report was not printed (`voke rotate resume {rotation} --yes` finishes it)",
            "untold": "succeeded, but its history line could not be written: /home/history.jsonl: No space left "
            "on device; its report was not printed (free space on (or make writable) the file system of "
            f"VOKE_HOME, then: voke rotate resume {rotation} --yes   (it writes what is missing; the rotation "
            "is not run again))",
            "rolled back": "failed at test (ConnectivityError: no route to the verifiers); rolled back; its "
            "report was not printed (once what made it fail is fixed, retry: voke rotate jwt --yes)",
        }[ending]
    )
    assert _interrupted().message == said  # the CLI's answer, exit 130
    cut = [
        (e.event_type, e.details["error"]["message"])
        for e in AuditLog(engine.audit_home).entries()
        if e.result == "interrupted"
    ]
    assert cut == [("rotation.start", said)]
    left = store.get("jwt-signing").annotations.get(ANNOTATION)
    assert (left is not None) == (ending in ("not cleared", "untold"))
    monkeypatch.setattr(RotationReport, "of", of)
    store.update, engine._history = update, history
    if left is not None:  # what the answer names finishes it
        assert engine.resume(rotation).error is None
        assert ANNOTATION not in store.get("jwt-signing").annotations
    assert [r.id for r in engine.history(secret="jwt-signing")].count(rotation) == 1


def test_a_signal_while_the_finish_is_recorded_waits_and_the_rotation_is_on_record(
    keyring, script_signals, monkeypatch
):
    # Cut between recording the finish and writing history and audit, a resume only cleared the
    # record: a rotation that worked had no history line and no `rotation.finish` event.
    import os
    import signal

    from voketag_ops.audit import AuditLog

    engine, _clock, store = keyring
    save = engine._save

    def ctrl_c_while_the_finish_is_recorded(record, **kw):
        save(record, **kw)
        if record.status == "succeeded":
            os.kill(os.getpid(), signal.SIGINT)

    engine._save = ctrl_c_while_the_finish_is_recorded
    outcome = rotate_jwt(engine)
    assert outcome.error is None and outcome.report.status == "succeeded"
    assert ANNOTATION not in store.get("jwt-signing").annotations
    rotation = outcome.report.rotation_id
    assert engine.history(secret="jwt-signing")[0].id == rotation
    finish = [e for e in AuditLog(engine.audit_home).entries() if e.event_type == "rotation.finish"]
    assert [e.details["rotation_id"] for e in finish][-1] == rotation


def test_two_signals_once_the_finish_is_recorded_leave_its_history_and_audit_to_the_resume(
    keyring, script_signals
):
    # The second Ctrl-C gives way after the finish was recorded, before history and audit were
    # written: the resume only cleared the record, and a rotation that worked had neither. It
    # writes each that is missing, once: a resume cut after the history line writes the event
    # alone, and one after that (no record left) writes nothing.
    import os
    import signal

    from voketag_ops.audit import AuditLog
    from voketag_ops.errors import Interrupted

    engine, _clock, store = keyring
    save, history = engine._save, engine._history

    def two_ctrl_cs_once_the_finish_is_recorded(record, **kw):
        save(record, **kw)
        if record.status == "succeeded":
            os.kill(os.getpid(), signal.SIGINT)  # held
            os.kill(os.getpid(), signal.SIGINT)  # the second gives way

    def ctrl_c_after_the_history_line(record):
        history(record)
        raise KeyboardInterrupt

    def written(rotation):
        lines = [r for r in engine.history(secret="jwt-signing") if r.id == rotation]
        events = [
            (e.event_type, e.result)
            for e in AuditLog(engine.audit_home).entries()
            if e.event_type == "rotation.finish" and e.details.get("rotation_id") == rotation
        ]
        return [(r.status, r.step) for r in lines], events

    engine._save = two_ctrl_cs_once_the_finish_is_recorded
    with pytest.raises(Interrupted, match="interrupted after finish") as cut:
        rotate_jwt(engine)
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert cut.value.hint == f"voke rotate resume {stored.id} --yes"
    assert (stored.step, stored.status) == ("finish", "succeeded")
    assert written(stored.id) == ([], [])
    plan = engine.plan_unfinished(stored.id, action="resume")["plan"]  # what --dry-run prints
    assert plan[0].startswith(f"write the history line and rotation.finish event of {stored.id}")
    engine._save, engine._history = save, ctrl_c_after_the_history_line
    with pytest.raises(KeyboardInterrupt):
        engine.resume(stored.id)
    assert written(stored.id) == ([("succeeded", "finish")], [])
    engine._history = history
    for _ in range(2):  # the second finds no record: the rotation's report, nothing written
        outcome = engine.resume(stored.id)
        assert outcome.error is None and outcome.report.status == "succeeded"
        assert outcome.report.finished_at == stored.finished_at
        assert ANNOTATION not in store.get("jwt-signing").annotations
        assert written(stored.id) == ([("succeeded", "finish")], [("rotation.finish", "succeeded")])
    assert "untold" not in engine.history_file.read_text()  # what the record said, not the history


def full_once_the_finish_is_recorded(engine, monkeypatch, full: list[str]) -> list[str]:
    """The files named FULL (base names) refuse writes with ENOSPC once ENGINE records a rotation
    as succeeded, until the list returned is cleared (space freed)."""
    import errno
    import os

    from voketag_ops import files

    save, write_all = engine._save, files.write_all
    refusing: list[str] = []

    def disk_full(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) in refusing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_all(fd, data)

    def saved(record, **kw):
        save(record, **kw)
        if record.status == "succeeded":
            refusing.extend(full)

    monkeypatch.setattr(files, "write_all", disk_full)
    engine._save = saved
    return refusing


@pytest.mark.parametrize(
    ("full", "unwritten"),
    [
        (["audit.jsonl"], "rotation.finish audit event"),
        (["history.jsonl", "audit.jsonl"], "history line and rotation.finish audit event"),
        (["history.jsonl"], "history line"),
    ],
)
def test_a_finish_the_disk_has_no_room_for_is_exit_7_and_the_resume_writes_it(
    keyring, monkeypatch, full, unwritten
):
    # Cleared before its history and event were written, a rotation that worked answered exit 4
    # "nothing was changed" (a cron wrapper rotates again), and its resume found nothing to do:
    # the `rotation.finish` event was lost for good. Its record now stands, untold, until both are.
    from voketag_ops.audit import AuditLog, AuditWriteError
    from voketag_ops.core.times import iso
    from voketag_ops.errors import NeedsOperatorError

    engine, clock, store = keyring
    refusing = full_once_the_finish_is_recorded(engine, monkeypatch, full)

    def written(rotation):
        lines = [r.status for r in engine.history(secret="jwt-signing") if r.id == rotation]
        events = [
            e.result
            for e in AuditLog(engine.audit_home).entries()
            if e.event_type == "rotation.finish" and e.details.get("rotation_id") == rotation
        ]
        return lines, events

    outcome = rotate_jwt(engine)
    rotation = outcome.report.rotation_id
    assert outcome.report.status == "succeeded" and isinstance(outcome.error, NeedsOperatorError)
    assert outcome.error.message.startswith(
        f"rotation {rotation} of jwt-signing succeeded, but its {unwritten} could not be written: "
    )
    assert "No space left on device" in outcome.error.message
    assert outcome.error.hint == (
        "free space on (or make writable) the file system of VOKE_HOME, then: "
        f"voke rotate resume {rotation} --yes   (it writes what is missing; the rotation is not run again)"
    )
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert (stored.id, stored.status, stored.untold, stored.lease_until) == (
        rotation,
        "succeeded",
        True,
        iso(clock()),
    )
    told = (
        [] if "history.jsonl" in full else ["succeeded"],
        [] if "audit.jsonl" in full else ["succeeded"],
    )
    assert written(rotation) == told
    if "audit.jsonl" in full:  # still full: its own event is refused first, nothing else is done
        with pytest.raises(AuditWriteError):
            engine.resume(rotation)
    else:  # the history still full: the same answer
        again = engine.resume(rotation)
        assert again.error is not None and again.error.message == outcome.error.message
    assert written(rotation) == told and ANNOTATION in store.get("jwt-signing").annotations
    refusing.clear()  # space freed
    for _ in range(2):  # each written once; the second finds the rotation ended
        resumed = engine.resume(rotation)
        assert resumed.error is None and resumed.report.status == "succeeded"
        assert ANNOTATION not in store.get("jwt-signing").annotations
        assert written(rotation) == (["succeeded"], ["succeeded"])


@pytest.mark.parametrize("by", ["run", "rollback"])
@pytest.mark.parametrize(
    ("full", "unwritten"),
    [
        ([], None),
        (["audit.jsonl"], "rotation.finish audit event"),
        (["history.jsonl", "audit.jsonl"], "history line and rotation.finish audit event"),
        (["history.jsonl"], "history line"),
    ],
)
def test_a_rollback_whose_finish_the_disk_has_no_room_for_is_exit_7_and_stands(
    keyring, monkeypatch, by, full, unwritten
):
    # A rollback's record is cleared before its history line and `rotation.finish` event are
    # written. A full disk there answered exit 4 "nothing was changed" (the history's), or exit 7
    # "the rollback failed too" with the cleared record written back `needs_attention` (the
    # event's), for a rotation rolled back by its run (exit 6) or by `rotate rollback` (exit 0).
    # Now exit 7 says it was rolled back, what was not written and why; nothing is left to resume.
    import errno
    import os

    from voketag_ops import files
    from voketag_ops.audit import AuditLog
    from voketag_ops.errors import ConnectivityError, Interrupted

    engine, _clock, store = keyring
    write_all, test, undo = files.write_all, engine._test, engine._undo
    refusing: list[str] = []

    def disk_full(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) in refusing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_all(fd, data)

    def full_once_rolling_back(record, scope, t0):
        refusing.extend(full)
        return undo(record, scope, t0)

    def unreachable(record, user):
        raise ConnectivityError("no route to the verifiers")

    def ctrl_c(record, user):
        raise KeyboardInterrupt

    def written(rotation):
        lines = [r.status for r in engine.history(secret="jwt-signing") if r.id == rotation]
        events = [
            e.result
            for e in AuditLog(engine.audit_home).entries()
            if e.event_type == "rotation.finish" and e.details.get("rotation_id") == rotation
        ]
        return lines, events

    monkeypatch.setattr(files, "write_all", disk_full)
    engine._undo = full_once_rolling_back
    if by == "run":
        engine._test = unreachable
        outcome = rotate_jwt(engine)
        rotation = outcome.report.rotation_id
        ended = "failed at test (ConnectivityError: no route to the verifiers); rolled back"
    else:
        engine._test = ctrl_c
        with pytest.raises(Interrupted):
            rotate_jwt(engine)
        rotation = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION]).id
        engine._test = test
        outcome = engine.rollback(rotation)
        ended = "was rolled back"
    assert outcome.report.status == "rolled_back"
    if unwritten is None:  # all written: the documented exits
        assert (outcome.error.exit_code if outcome.error else 0) == (6 if by == "run" else 0)
    else:
        assert outcome.error.exit_code == 7
        assert outcome.error.message.startswith(
            f"rotation {rotation} of jwt-signing {ended}, but its {unwritten} could not be written: "
        )
        assert "No space left on device" in outcome.error.message
        again = "once what made it fail is fixed, retry" if by == "run" else "to rotate again"
        assert outcome.error.hint == (
            "free space on (or make writable) the file system of VOKE_HOME; the rollback stands "
            f"(nothing to resume); {again}: voke rotate jwt --yes"
        )
    assert written(rotation) == (
        [] if "history.jsonl" in full else ["rolled_back"],
        [] if "audit.jsonl" in full else ["rolled_back"],
    )
    # The rollback stands, its record cleared: nothing to resume, nor to roll back again.
    meta = store.get("jwt-signing")
    assert ANNOTATION not in meta.annotations and meta.aliases == {"current": 1}
    assert engine.resume().report is None
    refusing.clear()  # space freed: the retry the hint names rotates
    engine._test, engine._undo = test, undo
    assert rotate_jwt(engine).error is None


def test_ctrl_c_before_the_commit_lands_leaves_it_to_resume_not_recorded_as_done(keyring):
    # The commit's alias move and its record are one compare-and-swap: a Ctrl-C before it lands
    # must not give the lease up with a record that says it did (resume would skip it and roll back).
    from voketag_ops.errors import Interrupted

    engine, _clock, store = keyring
    save = engine._save

    def ctrl_c_before_the_commit(record, **kw):
        if "current" in (kw.get("aliases") or {}):
            raise KeyboardInterrupt
        save(record, **kw)

    engine._save = ctrl_c_before_the_commit
    with pytest.raises(Interrupted, match="interrupted during commit"):
        rotate_jwt(engine)
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert stored.step == "test" and stored.committed_at is None
    engine._save = save
    outcome = engine.resume(stored.id)
    assert outcome.error is None and outcome.report.status == "succeeded"


def test_a_rollback_disables_a_pending_version_stored_but_never_recorded(keyring, monkeypatch):
    engine, clock, store = keyring
    real = LocalSecretStore.add_version

    def add_then_die(self, name, payload):
        real(self, name, payload)
        raise Crash  # killed before the record names the version

    monkeypatch.setattr(LocalSecretStore, "add_version", add_then_die)
    with pytest.raises(Crash):
        rotate_jwt(engine)
    monkeypatch.setattr(LocalSecretStore, "add_version", real)
    record = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert record.pending_version is None
    clock.advance(engine.settings.lease_seconds + 1)
    planned = engine.plan_unfinished(record.id, action="rollback")["plan"]
    assert planned == ["disable version 2 and remove the pending alias"]
    outcome = engine.rollback(record.id)
    assert outcome.report.status == "rolled_back" and outcome.report.new_version == 2
    meta = store.get("jwt-signing")
    assert {v.version: v.state for v in meta.versions} == {1: "enabled", 2: "disabled"}
    assert meta.aliases == {"current": 1}


def test_emergency_revokes_every_old_key_at_once(keyring):
    engine, clock, _store = keyring
    cred = jwt_credential(engine)
    assert rotate_jwt(engine).error is None  # a next key is published and waiting
    before = kids(cred)
    token = sign_token(cred, claims(clock, "u"))
    outcome = rotate_jwt(engine, emergency=True)  # no wait for an emergency
    assert outcome.error is None and outcome.report.strategy == "emergency"
    after = kids(cred)
    assert len(after) == 1 and after[0] not in before
    with pytest.raises(jwt_keys.TokenError, match="unknown kid"):
        verify_token(cred, token)
    assert verify_token(cred, sign_token(cred, claims(clock, "new")))["sub"] == "new"


def left_unfinished(store, strategy: str, rotation_id: str) -> RotationRecord:
    """A JWT rotation in STRATEGY that a process now gone locked and left at its first step."""
    meta = store.get("jwt-signing")
    record = RotationRecord(
        id=rotation_id,
        secret="jwt-signing",
        kind="jwt",
        strategy=strategy,
        target="jwt",
        owner="gone-host:1",
        lease_until="2000-01-01T00:00:00Z",
        started_at="2027-01-01T02:00:00Z",
        step="lock",
        old_current=meta.aliases["current"],
    )
    store.update("jwt-signing", etag=meta.etag, annotations={ANNOTATION: record.to_json()})
    return record


def test_an_interrupted_emergency_resumes_as_an_emergency(keyring):
    engine, _clock, store = keyring
    cred = jwt_credential(engine)
    before = kids(cred)
    record = left_unfinished(store, "emergency", "rot-20270101T020000Z-e0e0e0")
    outcome = engine.resume(record.id)  # a fresh process: the credential's own mode is the normal one
    assert outcome.error is None and outcome.report.resumed
    after = kids(cred)
    assert len(after) == 1 and after[0] not in before


def test_an_unfinished_rotation_is_neither_resumed_by_a_dry_run_nor_by_another_mode(keyring):
    from voketag_ops.errors import PreconditionError
    from voketag_ops.workflows.jwt import rotate_jwt

    engine, _clock, store = keyring
    cred = jwt_credential(engine)
    before = kids(cred)
    record = left_unfinished(store, "publish-before-sign", "rot-20270101T020000Z-a1a1a1")
    etag = store.get("jwt-signing").etag
    planned = rotate_jwt(engine, dry_run=True)  # a dry run plans finishing it, and changes nothing
    assert planned.report.dry_run and record.id in planned.report.plan[0]
    assert store.get("jwt-signing").etag == etag and kids(cred) == before
    for dry_run in (True, False):  # the compromised key must not stay: refused, dry or not
        with pytest.raises(PreconditionError, match="cannot resume it"):
            rotate_jwt(engine, emergency=True, dry_run=dry_run)
    assert store.get("jwt-signing").etag == etag


def test_a_normal_run_finishes_an_unfinished_emergency_as_an_emergency(keyring):
    engine, _clock, store = keyring
    cred = jwt_credential(engine)
    before = kids(cred)
    left_unfinished(store, "emergency", "rot-20270101T020000Z-b2b2b2")
    outcome = rotate_jwt(engine)  # `rotate jwt` or `rotate due --run` after the emergency was cut short
    assert outcome.error is None and outcome.report.resumed
    after = kids(cred)
    assert len(after) == 1 and after[0] not in before  # every old key gone


@pytest.mark.pg
def test_cli_rotate_jwt_and_jwks(platform, platform_environ, voke):
    env = {**platform_environ, "VOKE_ROTATION__JWT__VERIFIER_REFRESH_SECONDS": "3600"}
    jwks0 = voke("rotate", "jwks", environ=env)
    assert jwks0.exit_code == 0, jwks0.stderr
    kids0 = [k["kid"] for k in json.loads(jwks0.stdout)["keys"]]
    plan = voke("rotate", "jwt", "--dry-run", "--json", environ=env)
    assert plan.exit_code == 0 and "publish it in the JWKS" in plan.json["result"]["plan"][1]
    published = voke("rotate", "jwt", "--yes", "--json", environ=env)
    assert published.exit_code == 0, published.stdout + published.stderr
    assert published.json["result"]["kind"] == "jwt"
    kids1 = [k["kid"] for k in voke("rotate", "jwks", "--json", environ=env).json["result"]["keys"]]
    assert kids1[0] == kids0[0] and len(kids1) == 2
    waiting = voke("rotate", "jwt", "--yes", "--json", environ=env)
    assert waiting.exit_code == 5 and "signing switches" in waiting.json["error"]["message"]
    promoted = voke(
        "rotate",
        "jwt",
        "--yes",
        "--json",
        environ={**env, "VOKE_ROTATION__JWT__VERIFIER_REFRESH_SECONDS": "0"},
    )
    assert promoted.exit_code == 0, promoted.stdout + promoted.stderr
    jwks2 = json.loads(voke("rotate", "jwks", environ=env).stdout)
    assert [k["kid"] for k in jwks2["keys"]] == [kids1[1], kids0[0]]
    emergency = voke("rotate", "jwt", "--emergency", "--yes", "--json", environ=env)
    assert emergency.exit_code == 0 and emergency.json["result"]["strategy"] == "emergency"
    jwks3 = voke("rotate", "jwks", environ=env)
    keys3 = json.loads(jwks3.stdout)["keys"]
    assert len(keys3) == 1 and keys3[0]["kid"] not in kids1
    assert voke("rotate", "jwt", "--emergency", environ=env).exit_code == 2  # no --yes, no terminal
    ring = json.loads(platform.store().access("jwt-signing", "current"))
    private = ring["current"]["private_key"]
    body = private.split("-----")[2].strip().splitlines()[1]
    for out in (jwks0, plan, published, waiting, promoted, emergency, jwks3):
        assert "PRIVATE KEY" not in out.stdout + out.stderr and body not in out.stdout + out.stderr
        assert '"d"' not in out.stdout


def test_cleanup_takes_a_rolled_back_version_for_no_successor(keyring, monkeypatch):
    # 3 was made, made current and rolled back (2 current again); 4, 5 and 6 followed 23 h
    # later. 2 was superseded when 4 became current and stayed: a day after 3 was made it had
    # been superseded for an hour, and cleanup disabled it then (3's creation started its 24 h).
    from voketag_ops.adapters.local import secrets as local_secrets
    from voketag_ops.core.times import iso
    from voketag_ops.workflows import rotate as rotate_wf

    engine, clock, store = keyring
    monkeypatch.setattr(local_secrets, "_now", lambda: iso(clock()))  # versions made at the test's time
    assert rotate_jwt(engine, emergency=True).error is None  # 2
    clock.advance(3600)
    monkeypatch.setattr(rotate_wf.os, "_exit", crash)
    engine.environ = {rotate_wf.FAULT_ENV: "commit"}
    made = clock()
    with pytest.raises(Crash):
        rotate_jwt(engine, emergency=True)  # 3 is current when its voke dies
    engine.environ = {}
    clock.advance(engine.settings.lease_seconds + 1)
    stored = RotationRecord.from_json(store.get("jwt-signing").annotations[ANNOTATION])
    assert engine.rollback(stored.id).report.status == "rolled_back"
    for minutes in (0, 10, 20):  # 4, 5, 6
        clock.now = made + timedelta(hours=23, minutes=minutes)
        assert rotate_jwt(engine, emergency=True).error is None
    meta = store.get("jwt-signing")
    assert meta.aliases == {"current": 6, "previous": 5} and meta.version(3).state == "disabled"

    def plan(at: datetime) -> list[tuple[int, str]]:
        clock.now = at
        return [(a.version, a.action) for a in engine.cleanup(dry_run=True)["actions"]]

    assert plan(made + timedelta(hours=24, minutes=1)) == [(1, "disable")]
    assert plan(made + timedelta(hours=47, minutes=1)) == [(1, "disable"), (2, "disable")]
    engine.cleanup(dry_run=False)
    assert {v.version: v.state for v in store.get("jwt-signing").versions} == {
        1: "disabled", 2: "disabled", 3: "disabled", 4: "enabled", 5: "enabled", 6: "enabled"
    }  # fmt: skip


def test_a_resume_writes_the_finish_event_a_line_added_by_hand_only_claims(keyring, monkeypatch, caplog):
    # `rotate resume` of a rotation whose `rotation.finish` event the disk had no room for wrote
    # none when the audit log held one, a line appended by hand too (not linked to the entry
    # before it): the genuine event was then never written.
    from datetime import UTC, datetime

    from voketag_ops.audit import AuditLog
    from voketag_ops.core import audit as core

    engine, _clock, _store = keyring
    refusing = full_once_the_finish_is_recorded(engine, monkeypatch, ["audit.jsonl"])
    rotation = rotate_jwt(engine).report.rotation_id
    refusing.clear()
    log = AuditLog(engine.audit_home)
    last = list(log.entries())[-1]
    forged = core.make_entry(
        seq=last.seq + 1, prev_hash="f" * 64, now=datetime.now(UTC), event_type="rotation.finish",
        actor="sre", env="local", target="jwt-signing", result="succeeded", duration_seconds=1.0,
        details={"rotation_id": rotation},
    )  # fmt: skip
    with log.path.open("ab") as fh:
        fh.write(forged.line())

    assert engine.resume(rotation).error is None
    finished = [e for e in log.entries() if e.event_type == "rotation.finish"]
    assert [(e.seq, e.details["rotation_id"]) for e in finished] == [
        (forged.seq, rotation),
        (forged.seq + 2, rotation),  # after the resume's own `started` event
    ]
    assert f"audit.jsonl:{forged.seq + 1} does not verify (broken_link)" in caplog.text
