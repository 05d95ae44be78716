"""The rotation record as stored: what it keeps of a failure."""

from __future__ import annotations

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
