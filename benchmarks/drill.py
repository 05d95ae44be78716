"""DR timings on this machine: each drill's RTO, and voke's overhead against the same
PostgreSQL steps run bare in the same run.

- PITR: bare = `cp -a` of the base backup + recovery settings + `pg_ctl start` until
  `pg_is_in_recovery()` is false; voke = `voke dr restore` (window checks, sealing the
  archive, the copy, recovery, the write check, the stop point). Database of --size-mb.
- Failover: bare = `pg_ctl stop -m immediate` on the primary, `pg_promote()` on the
  standby, first successful INSERT; voke = the same fault, then `voke dr failover`
  (fence, promote, record the leader, repoint, verify a write), timed to the first INSERT.
- Drills: `voke drill run` for every scenario (RTO measured by the canary), and the
  failover drill again with a synchronous standby (acknowledged commits must not be lost).

Goals (issue 6): failover RTO under 5 s with RPO 0 for acknowledged commits when the
replica is synchronous; PITR of a 1 GB database with voke's overhead under 20 % of the
bare PostgreSQL time. Prints figures and ratios; asserts nothing.

    python benchmarks/drill.py [--size-mb 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from voketag_ops.adapters.local import dr
from voketag_ops.adapters.local.environment import LocalEnvironment
from voketag_ops.config import load_config
from voketag_ops.workflows import dr as dr_flow
from voketag_ops.workflows import drill as drill_flow
from voketag_ops.workflows.env import LocalPlatform


def load(env: LocalEnvironment, size_mb: int) -> float:
    """Fill table bench.big to about SIZE_MB (COPY-speed inserts); returns the database size in MB."""
    rows = size_mb * 1_000_000 // 160  # about 160 bytes per row with its index
    with env.primary().connect() as conn:
        conn.execute("create schema if not exists bench")
        conn.execute("drop table if exists bench.big")
        conn.execute(
            "create table bench.big (id bigint primary key, sku text, name text, qty int, at timestamptz)"
        )
        step = 2_000_000
        for start in range(1, rows + 1, step):
            conn.execute(
                "insert into bench.big select g, 'SKU-' || (g %% 1000), md5(g::text), g %% 97, "
                "'2024-01-01'::timestamptz + g * interval '1 second' from generate_series(%s, %s) g",
                (start, min(rows, start + step - 1)),
            )
        conn.execute("checkpoint")
        size = conn.execute("select pg_database_size('postgres')").fetchone()[0]
    return size / 1e6


def bare_pitr(env: LocalEnvironment, backup_path: str, target: str) -> float:
    """The PostgreSQL steps alone: copy, recovery settings, start, wait until promoted."""
    port = dr.pick_free_port()
    node = dr.restore_node(env, "bare", port)
    shutil.rmtree(node.data_dir, ignore_errors=True)
    if not node.data_dir.parent.exists():
        node.data_dir.parent.mkdir(mode=0o700)
        dr._chown_to_server(env, node.data_dir.parent)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-a", backup_path, str(node.data_dir)], check=True)
    copied = time.perf_counter() - t0
    (node.data_dir / "voke-backup.json").unlink()
    settings = env._common_settings(node)
    settings.update(
        archive_mode="off",
        restore_command=f"cp '{env.archive_dir}/%f' '%p'",
        recovery_target_time=target,
        recovery_target_action="promote",
    )
    node.write_config(settings, env._hba())
    (node.data_dir / "recovery.signal").write_text("")
    dr._chown_to_server(env, node.data_dir / "recovery.signal")
    node.start(timeout=600)
    dr.wait_until(
        lambda: dr.in_recovery(node) is False, "the bare restore to be promoted", timeout=600, interval=0.02
    )
    elapsed = time.perf_counter() - t0
    print(f"  bare PITR: copy {copied:.2f} s, start to promoted {elapsed - copied:.2f} s")
    node.stop(mode="immediate")
    shutil.rmtree(node.data_dir, ignore_errors=True)
    return elapsed


OWN: list[float] = []  # voke's own steps in each restore: sealing, window checks, config, write check


def voke_pitr(settings, env: LocalEnvironment, target: str, name: str) -> float:
    t0 = time.perf_counter()
    report = dr_flow.restore(settings, env, to=target, name=name, dry_run=False)
    elapsed = time.perf_counter() - t0
    t = report["timings"]
    OWN.append(elapsed - t["copy_seconds"] - t["recovery_seconds"])
    print(
        f"  voke PITR: copy {t['copy_seconds']:.2f} s, start to promoted {t['recovery_seconds']:.2f} s, "
        f"the rest {elapsed - t['copy_seconds'] - t['recovery_seconds']:.2f} s"
    )
    dr.discard_restore(env, name)
    return elapsed


def first_insert(node, timeout: float = 60) -> None:
    def ok() -> bool:
        try:
            with node.connect(dr.DR_DB, timeout=2) as conn:
                conn.execute("create table if not exists bench_write (at timestamptz)")
                conn.execute("insert into bench_write values (now())")
            return True
        except Exception:
            return False

    dr.wait_until(ok, f"a write on {node.name}", timeout=timeout, interval=0.02)


def bare_failover(env: LocalEnvironment) -> float:
    leader, standby = env.primary(), env.standby()
    dr.wait_caught_up(leader, standby, timeout=60)
    dr.settle_archive_status(env, standby)  # voke's fix for inherited .ready files, outside the timing
    t0 = time.perf_counter()
    leader.stop(mode="immediate")
    dr.query_one(standby, "select pg_promote(true, 60)", timeout=65)
    first_insert(standby)
    elapsed = time.perf_counter() - t0
    env.set_leader(standby.name)  # let voke rebuild the old primary afterwards
    return elapsed


def voke_failover(settings, env: LocalEnvironment) -> float:
    leader, standby = env.primary(), env.standby()
    dr.wait_caught_up(leader, standby, timeout=60)
    t0 = time.perf_counter()
    leader.stop(mode="immediate")
    dr_flow.failover(settings, env, dry_run=False)
    first_insert(env.primary())
    return time.perf_counter() - t0


def restore_topology(settings, env: LocalEnvironment, leader: str) -> None:
    state = env.require_state()
    dr_flow.failback(settings, env, dry_run=False, switch_back=state.leader != leader)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="database size for the PITR comparison")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each timed step")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="voke-bench-dr-"))
    environ = {"VOKE_HOME": str(home), "VOKE_LOCAL__ARCHIVE_TIMEOUT": "60"}
    settings = load_config(environ=environ, cwd=home).settings
    env = LocalEnvironment(settings.local)
    try:
        t = time.perf_counter()
        env.up()
        print(f"env up: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        size = load(env, args.size_mb)
        print(f"loaded bench.big: database {size:,.0f} MB in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        backup = env.take_base_backup()
        print(
            f"base backup {backup.label}: {backup.size_bytes / 1e6:,.0f} MB in {time.perf_counter() - t:.1f} s"
        )
        with env.primary().connect() as conn:
            conn.execute("update bench.big set qty = qty + 1 where id % 1000 = 0")
        time.sleep(0.5)
        target = dr.iso(dr.utcnow())
        time.sleep(0.5)
        with env.primary().connect() as conn:
            conn.execute("delete from bench.big where id % 1000 = 1")
        dr.seal_archive(env, env.primary())  # both variants then read the same archived WAL

        bare, voke = [], []
        for i in range(args.runs):
            bare.append(bare_pitr(env, backup.path, target.replace("Z", "+00")))
            voke.append(voke_pitr(settings, env, target, f"bench-{i}"))
        b, v = statistics.median(bare), statistics.median(voke)
        print(
            f"PITR ({size:,.0f} MB, {args.runs} runs): bare {b:.2f} s, voke dr restore {v:.2f} s, "
            f"difference {v - b:+.2f} s = {100 * (v - b) / b:+.1f} % of bare; voke's own steps "
            f"{statistics.median(OWN):.2f} s = {100 * statistics.median(OWN) / b:.1f} % of bare (goal < 20 %)"
        )

        bare, voke = [], []
        for _ in range(args.runs):
            bare.append(bare_failover(env))
            restore_topology(settings, env, "primary")
            voke.append(voke_failover(settings, env))
            restore_topology(settings, env, "primary")
        b, v = statistics.median(bare), statistics.median(voke)
        print(
            f"failover ({args.runs} runs): bare stop+promote+insert {b:.2f} s, voke dr failover {v:.2f} s, "
            f"ratio {v / b:.2f}x (goal: RTO < 5 s)"
        )

        with env.primary().connect() as conn:
            conn.execute("drop schema bench cascade")
        for scenario in ("pitr", "failover", "failback", "network"):
            j = drill_flow.run_drill(settings, env, scenario)
            rto, target_rto = j["rto_seconds"] or 0.0, j["targets"]["rto_target_seconds"]
            print(
                f"drill {scenario:<9} {j['status']:<10} RTO {rto:.2f} s (target {target_rto:g} s, "
                f"{rto / target_rto:.4f} of it)  RPO {j['rpo_seconds'] or 0:.3f} s  lost {j['lost_commits']}  "
                f"phases {j['phases']}"
            )
        with env.primary().connect() as conn:
            conn.execute("alter system set synchronous_standby_names = '*'")
            conn.execute("select pg_reload_conf()")
        try:
            j = drill_flow.run_drill(settings, env, "failover")
        finally:
            for node in (env.primary(), env.standby()):
                if dr.in_recovery(node) is False:
                    with node.connect() as conn:
                        conn.execute("alter system reset synchronous_standby_names")
                        conn.execute("select pg_reload_conf()")
        print(
            f"drill failover (synchronous standby) {j['status']}: RTO {j['rto_seconds'] or 0:.2f} s, "
            f"acknowledged {j['canary'].get('acked_commits')}, lost {j['lost_commits']}, "
            f"RPO {j['rpo_seconds'] or 0:.3f} s "
            "(goal: RTO < 5 s, RPO 0)"
        )
    finally:
        for restored in dr.list_restores(env):
            dr.discard_restore(env, restored["name"])
        # The platform's destroy: the drills started the local services with the environment.
        LocalPlatform(settings).destroy(discard_chain=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
