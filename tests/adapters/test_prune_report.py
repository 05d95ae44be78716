"""`voke dr prune --dry-run --json` answers under the run's keys (README: `dr prune`), so a
script reading the run's report can read the plan's."""

from __future__ import annotations

from voketag_ops.adapters.local import dr


def test_a_prune_plan_has_every_key_of_the_prunes_report():
    plan = dr.PrunePlan(dr.utcnow(), [], [], None, None, {"000000010000000000000001": 16}, {}, []).as_dict()
    assert plan["failures"] == []  # (it was missing from the plan: the run always has it)
    assert set(dr.Pruned().as_dict()) <= set(plan)
    assert plan["removed_segments"] == 1 and plan["freed_bytes"] == 16
    assert set(dr.plan_keys()) == set(plan)
