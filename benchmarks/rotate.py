"""A full local DB-password rotation under load, against a baseline from the same run.

Builds a fresh local environment (its own VOKE_HOME in a temp dir, destroyed at the
end), then runs ROTATIONS alternating-user rotations of `db-app` (all eight steps:
lock, pending version, ALTER ROLE, fresh-login test, commit, blue-green restart of the
three services, health on the new instances, finish) while probe threads hit every
service's current `/health` URL (looked up per request, a fresh connection each time,
each health check itself a fresh DB login). Baseline: the bare work a hand-run script
does, `ALTER ROLE ... PASSWORD` plus one fresh login, done directly with psycopg.

Goal (issue 5): a rotation under 3 s with zero failed probes. Prints figures; asserts
nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROTATIONS = int(os.environ.get("BENCH_ROTATIONS", "5"))
BASELINE_RUNS = int(os.environ.get("BENCH_BASELINE_RUNS", "10"))
PROBE_THREADS = int(os.environ.get("BENCH_PROBE_THREADS", "2"))


class Probe:
    """Threads that GET every service's current /health URL until stopped."""

    def __init__(self, runtime: object, services: list[str]) -> None:
        self.runtime, self.services = runtime, services
        self.requests = 0
        self.failures: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(PROBE_THREADS)]

    def _run(self) -> None:
        from voketag_ops.adapters.local.services import http_health

        while not self.stop.is_set():
            for service in self.services:
                url = self.runtime.url(service)  # type: ignore[attr-defined]
                ok, body = http_health(url) if url else (False, {"error": "no route"})
                with self.lock:
                    self.requests += 1
                    if not ok:
                        self.failures.append((service, body))

    def __enter__(self) -> Probe:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def baseline(env: object, host: str, port: int, dbname: str) -> list[float]:
    """Bare ALTER ROLE (a SCRAM verifier, as voke sends) + one fresh login, with psycopg."""
    import psycopg
    from psycopg import sql

    from voketag_ops.adapters.local.dbusers import scram_verifier
    from voketag_ops.core.rotation import generate_password

    primary = env.primary()  # type: ignore[attr-defined]
    with primary.connect() as conn:
        conn.execute("drop role if exists bench_login")
        conn.execute(sql.SQL("create role bench_login login"))
        conn.execute(sql.SQL("grant connect on database {} to bench_login").format(sql.Identifier(dbname)))
    times = []
    for _ in range(BASELINE_RUNS):
        password = generate_password(32)
        t0 = time.perf_counter()
        with primary.connect() as conn:
            conn.execute(
                sql.SQL("alter role bench_login password {}").format(sql.Literal(scram_verifier(password)))
            )
        with psycopg.connect(
            host=host, port=port, user="bench_login", password=password, dbname=dbname
        ) as login:
            login.execute("select 1").fetchone()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    from voketag_ops.config import load_config
    from voketag_ops.workflows.env import LocalPlatform
    from voketag_ops.workflows.rotate import local_engine

    tmp = Path(tempfile.mkdtemp(prefix="voke-bench-rotate-"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VOKE_")}
    environ["VOKE_HOME"] = str(tmp / "home")
    settings = load_config(environ=environ, cwd=tmp).settings
    platform = LocalPlatform(settings)
    try:
        t0 = time.perf_counter()
        platform.up()
        print(f"env up (fresh local environment): {time.perf_counter() - t0:.2f} s")
        target = platform.db_target()
        host, port = target.endpoint()
        base = baseline(platform.env, host, port, settings.rotation.db_users["app"].database)
        base_median = statistics.median(base)
        print(
            f"baseline: ALTER ROLE + fresh login (psycopg)  median {base_median * 1000:7.1f} ms "
            f"({BASELINE_RUNS} runs)"
        )

        engine = local_engine(settings)
        runtime = platform.runtime()
        services = [s.name for s in runtime.services(check=False)]
        durations: list[float] = []
        steps: dict[str, list[float]] = {}
        failed_rotations = 0
        with Probe(runtime, services) as probe:
            time.sleep(0.5)  # probes running before the first rotation starts
            for _ in range(ROTATIONS):
                t = time.perf_counter()
                outcome = engine.rotate_db_password("app")
                durations.append(time.perf_counter() - t)
                if outcome.error is not None:
                    failed_rotations += 1
                    print(f"  rotation failed: {outcome.error.message}", file=sys.stderr)
                for step in outcome.report.steps:
                    steps.setdefault(step.name, []).append(step.duration_seconds)
            time.sleep(1.5)  # and after the last one (old instances drain for 1 s)
        med = statistics.median(durations)
        print(
            f"rotation: full local DB-password rotation      median {med:.3f} s  min {min(durations):.3f} s  "
            f"max {max(durations):.3f} s  ({ROTATIONS} rotations, {failed_rotations} failed; goal < 3 s)"
        )
        print(f"rotation: ratio {med / base_median:.1f}x the bare ALTER ROLE + login baseline")
        print(
            "rotation: median per step: "
            + ", ".join(f"{name} {statistics.median(v):.3f} s" for name, v in steps.items())
        )
        print(
            f"probe: {probe.requests} /health requests ({PROBE_THREADS} threads, fresh connection each, "
            f"{len(services)} services), {len(probe.failures)} failed (goal 0)"
        )
        for service, body in probe.failures[:5]:
            print(f"  failed: {service}: {body}", file=sys.stderr)
        return 0
    finally:
        platform.destroy(discard_chain=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
