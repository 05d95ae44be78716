"""The rotation record as stored: what it keeps of a failure."""

from __future__ import annotations

import json
import re

import pytest

from voketag_ops import redact
from voketag_ops.core.rotation import RotationRecord, StepRecord


def test_a_stored_record_holds_no_registered_secret_in_its_error_or_step_details():
    # The record goes to the `voke-rotation` annotation and history.jsonl, not through output.
    secret = "Backend-Quoted-Secret-7f3a9c"
    redact.register(secret)
    record = RotationRecord(
        id="r1", secret="db-app", kind="db-password", strategy="alternating", target="app",
        owner="host:1", lease_until="2030-01-01T00:00:00Z", started_at="2030-01-01T00:00:00Z",
        steps=[StepRecord("set_target", "failed", 0.1, f"ValidationError: refused {secret}")],
        error={"step": "set_target", "kind": "ValidationError", "message": f"refused {secret}"},
    )  # fmt: skip
    stored = record.to_json()
    assert secret not in stored
    again = RotationRecord.from_json(stored)
    assert again.error == {"step": "set_target", "kind": "ValidationError", "message": "refused ***"}
    assert again.steps[0].detail == "ValidationError: refused ***"


def test_every_field_of_a_record_has_its_stored_type_checked():
    from dataclasses import fields

    from voketag_ops.core import rotation

    assert set(rotation._FIELD_TYPES) == {f.name for f in fields(RotationRecord)}
    assert set(rotation._STEP_TYPES) == {f.name for f in fields(StepRecord)}


def test_a_stored_record_of_the_wrong_shape_is_a_value_error_saying_why():
    good = RotationRecord(
        id="r1", secret="db-app", kind="db-password", strategy="alternating", target="app",
        owner="host:1", lease_until="2030-01-01T00:00:00Z", started_at="2030-01-01T00:00:00Z",
        steps=[StepRecord("lock", "done", 0.1)], error={"message": "m"},
    ).to_json()  # fmt: skip
    assert RotationRecord.from_json(good).steps == [StepRecord("lock", "done", 0.1)]
    doc = json.loads(good)
    assert "unclaimed_keys" not in doc and "rollback_refused" not in doc  # absent: an older voke reads it
    kept = [{"key_id": "k1", "account": "a@p.iam.gserviceaccount.com", "command": "gcloud ..."}]
    assert RotationRecord.from_json(json.dumps(doc | {"unclaimed_keys": kept})).unclaimed_keys == kept
    for change, why in [
        ({"id": 5}, "id is int"),
        ({"pending_version": True}, "pending_version is bool"),
        ({"error": "boom"}, "error is str"),
        ({"error": {"message": 5}}, "error holds a value that is not text"),
        ({"steps": [{"name": "lock"}]}, "steps[0] is not a step"),
        (
            {"steps": [{"name": "lock", "status": "done", "duration_seconds": "1"}]},
            "steps[0].duration_seconds is str",
        ),
        ({"status": "weird"}, "unknown status"),
        ({"step": "weird"}, "unknown step"),
        ({"extra": 1}, "unknown field 'extra'"),
        ({"unclaimed_keys": {"key_id": "k"}}, "unclaimed_keys is dict"),
        ({"unclaimed_keys": [{"key_id": 5}]}, "unclaimed_keys[0] is not a key"),
        ({"rollback_refused": "yes"}, "rollback_refused is str"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            RotationRecord.from_json(json.dumps(doc | change))
    with pytest.raises(ValueError, match="no id"):
        RotationRecord.from_json(json.dumps({k: v for k, v in doc.items() if k != "id"}))
    with pytest.raises(ValueError, match="not an object"):
        RotationRecord.from_json("[]")
    with pytest.raises(ValueError, match="nested too deeply"):
        RotationRecord.from_json("[" * 100_000)


def test_recorded_seconds_are_the_measured_ones_and_never_negative():
    # An older voke kept no duration: its start and finish, one of them read after NTP stepped
    # the clock back, give 0 rather than -3600 s.
    old = RotationRecord.from_json(
        RotationRecord(
            id="rot-1",
            secret="s",
            kind="jwt",
            strategy="jwt",
            target="t",
            owner="h:1",
            lease_until="2027-01-01T03:00:00Z",
            started_at="2027-01-01T02:00:00Z",
            status="succeeded",
            finished_at="2027-01-01T01:00:05Z",
        ).to_json()
    )
    assert old.duration_seconds is None and old.recorded_seconds() == 0
    assert "duration_seconds" not in json.loads(old.to_json())  # an older voke still reads it
    old.duration_seconds = 4.5
    assert RotationRecord.from_json(old.to_json()).recorded_seconds() == 4.5
    for bad in (True, "4.5"):
        with pytest.raises(ValueError, match="duration_seconds is"):
            RotationRecord.from_json(
                old.to_json().replace('"duration_seconds":4.5', f'"duration_seconds":{json.dumps(bad)}')
            )
