"""A process that has talked gRPC (a cloud adapter, the fakes' server) still forks the children
voke runs with a preexec_fn (a local restore's `cp`, asking to die with voke): with gRPC's fork
support on, grpcio restarted its poller in the child, which then wrote to the child's stderr or
crashed it before exec (grpc/grpc#43055; a CI run's restore failed so after a cloud test in the
same worker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILDREN = r"""
import os, subprocess, sys, threading
import voketag_ops  # what every voke process (and the test session) loads first
from google.cloud import resourcemanager_v3  # gRPC loaded outside the adapters, as doctor's check does
from voketag_ops.testing.gcp_fakes import FakeGcp
from voketag_ops.adapters.local.postgres import parent_death_kills
import grpc

fake = FakeGcp().start()
channel = grpc.insecure_channel(f"127.0.0.1:{fake.grpc_port}")
call = channel.unary_unary("/google.monitoring.v3.MetricService/ListTimeSeries")
done = threading.Event()

def busy():  # a channel in use while voke forks, as a cloud test's threads may leave one
    while not done.is_set():
        try:
            call(b"", timeout=1)
        except grpc.RpcError:
            pass

threading.Thread(target=busy, daemon=True).start()
bad = 0
for _ in range(200):
    child = subprocess.run(["true"], capture_output=True, preexec_fn=parent_death_kills())
    bad += child.returncode != 0 or bool(child.stderr)
done.set()
fake.stop()
print(bad)
"""


def test_children_forked_beside_a_busy_grpc_channel_run_clean(tmp_path: Path, make_environ) -> None:
    environ = make_environ(tmp_path / "home")
    environ.pop("GRPC_ENABLE_FORK_SUPPORT", None)  # as on any machine: voke's default decides
    run = subprocess.run(
        [sys.executable, "-c", CHILDREN], capture_output=True, text=True, env=environ, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "0", run.stderr[-2000:]
