"""`after_another_start`: what commands that start the local environment on demand do when
another voke is starting, stopping or destroying it."""

from __future__ import annotations

import pytest

from voketag_ops.adapters.local.environment import LocalEnvironment
from voketag_ops.config import LocalSettings
from voketag_ops.locks import LockHeld
from voketag_ops.workflows.env import after_another_start


@pytest.mark.parametrize("holder", ["env up", "env up (servers only)", "env down", "env destroy"])
def test_a_start_another_on_demand_start_beat_to_the_lock_waits_and_tries_again(tmp_path, holder):
    # Two cron jobs on a stopped environment: both saw no other start, the second's `env up`
    # was refused by the first's lock, and it exited 5 instead of using what the first started.
    env = LocalEnvironment(LocalSettings(home=tmp_path / "home"))
    tries = []

    def start():
        tries.append(len(tries))
        if len(tries) == 1:
            raise LockHeld(f"{holder} pid 7")

    after_another_start(env, start)
    assert tries == [0, 1]


@pytest.mark.parametrize("operation", ["dr failover", "env move-port"])
def test_a_start_refused_by_a_dr_operation_is_not_retried(tmp_path, operation):
    # A move-port (a node's port, the standby's conninfo, the services' secret) is one: a start
    # waited for it as for another voke's `env up`, then exit 5 said the environment was starting.
    env = LocalEnvironment(LocalSettings(home=tmp_path / "home"))
    tries = []

    def start():
        tries.append(1)
        if len(tries) > 1:
            raise AssertionError("retried")
        raise LockHeld(f"{operation} pid 7")

    with pytest.raises(LockHeld, match=rf"^another DR operation is running \({operation} pid 7\)"):
        after_another_start(env, start)
    assert tries == [1]
    assert LockHeld("x").type_name == "PreconditionError"  # what --json says, as before
    assert LockHeld("env up pid 7").message == (
        "another voke is starting, stopping or destroying the environment (env up pid 7); wait for it to finish"
    )
