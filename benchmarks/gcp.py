"""A command against a cloud environment, timed against the in-process Google Cloud fakes
and split into import and calls.

- `voke --help` and `voke --env NAME rotate status --json` as whole processes (the
  difference is what a cloud command pays: google imports plus API calls);
- inside one process: importing the CLI (must load no google module), importing the
  GCP client modules the DR status needs, then the DR status itself (Cloud SQL
  instances.get x2, backupRuns.list x2, getLatestRecoveryTime, Monitoring
  ListTimeSeries x3), measured cold (first call: client construction) and warm.
Prints figures (medians); asserts nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "7"))

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import voketag_ops.cli.app  # noqa
t1 = time.perf_counter()
assert not [m for m in sys.modules if m.startswith("google")], "the CLI imported google"
from voketag_ops.config import load_config
settings = load_config().settings
t1b = time.perf_counter()
from google.cloud import sqladmin_v1beta4, monitoring_v3  # noqa: the DR status needs these two
t2 = time.perf_counter()
from voketag_ops.workflows import cloud_dr
recovery = cloud_dr.recovery_for(settings)
cloud_dr.status(settings, recovery)
t3 = time.perf_counter()
warm = []
for _ in range(5):
    a = time.perf_counter(); cloud_dr.status(settings, recovery); warm.append(time.perf_counter() - a)
print(json.dumps({"cli_import": t1 - t0, "config": t1b - t1, "google_import": t2 - t1b, "status_cold": t3 - t2,
                  "status_warm": sorted(warm)[2]}))
"""


def median_time(cmd: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed: {proc.stdout}{proc.stderr}")
    return statistics.median(times)


def main() -> None:
    from datetime import timedelta

    from voketag_ops.adapters.gcp import catalog
    from voketag_ops.testing.gcp_fakes import FakeGcp, now

    with FakeGcp() as fake, tempfile.TemporaryDirectory() as tmp:
        fake.sql.add_instance("voke-db")
        fake.sql.add_instance("voke-db-dr", replica_of="voke-db")
        fake.sql.add_backup("voke-db", "SUCCESSFUL", now() - timedelta(hours=2))
        fake.monitoring.add_point(
            catalog.REPLICA_LAG, 1.0, resource={"database_id": f"{fake.project}:voke-db-dr"}
        )
        env = fake.environment(replica="voke-db-dr", services=[])
        lines = [
            "[environments.bench]",
            *[f"{k} = {json.dumps(v)}" for k, v in env.items() if not isinstance(v, dict)],
        ]
        lines += [
            "[environments.bench.endpoints]",
            *[f"{k} = {json.dumps(v)}" for k, v in env["endpoints"].items()],
        ]
        config = Path(tmp) / "voke.toml"
        config.write_text("\n".join(lines) + "\n")
        environ = {
            **os.environ,
            "VOKE_CONFIG": str(config),
            "VOKE_ENV": "bench",
            "VOKE_HOME": str(Path(tmp) / "h"),
        }
        voke = [sys.executable, "-m", "voketag_ops"]
        help_s = median_time([*voke, "--help"], environ)
        status_s = median_time([*voke, "rotate", "status", "--json"], environ)
        probes = [
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True
                ).stdout
            )
            for _ in range(RUNS)
        ]
        med = {k: statistics.median(p[k] for p in probes) for k in probes[0]}
    print(f"gcp: voke --help                              {help_s * 1000:7.0f} ms (process)")
    print(f"gcp: voke --env bench rotate status --json    {status_s * 1000:7.0f} ms (process; {RUNS} runs)")
    print(
        f"gcp: dr status split: import voketag_ops.cli  {med['cli_import'] * 1000:7.0f} ms (no google module)"
    )
    print(f"gcp:                  load voke.toml          {med['config'] * 1000:7.0f} ms")
    print(
        f"gcp:                  import sqladmin+monitoring {med['google_import'] * 1000:5.0f} ms (once per process)"
    )
    print(f"gcp:                  calls, first (clients)  {med['status_cold'] * 1000:7.0f} ms")
    print(f"gcp:                  calls, warm             {med['status_warm'] * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
