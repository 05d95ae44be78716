"""`voke drill`: run DR drills on the local environment and keep their journals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voketag_ops.adapters.local.environment import LocalEnvironment


def journals_dir(env: LocalEnvironment) -> Path:
    return env.home / "drills"


def load_journals(env: LocalEnvironment) -> list[dict[str, Any]]:
    """Every journal under VOKE_HOME/drills, oldest first (unreadable files are skipped)."""
    found = []
    for path in sorted(journals_dir(env).glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda j: j.get("started_at") or "")


def last_result(env: LocalEnvironment) -> dict[str, Any] | None:
    journals = load_journals(env)
    if not journals:
        return None
    last = journals[-1]
    return {
        k: last.get(k) for k in ("run_id", "scenario", "status", "finished_at", "rto_seconds", "rpo_seconds")
    }
