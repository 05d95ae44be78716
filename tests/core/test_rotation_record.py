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
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            RotationRecord.from_json(json.dumps(doc | change))
    with pytest.raises(ValueError, match="no id"):
        RotationRecord.from_json(json.dumps({k: v for k, v in doc.items() if k != "id"}))
    with pytest.raises(ValueError, match="not an object"):
        RotationRecord.from_json("[]")
    with pytest.raises(ValueError, match="nested too deeply"):
        RotationRecord.from_json("[" * 100_000)
