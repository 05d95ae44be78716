"""`voke ingest load` against PostgreSQL's own COPY and against pandas + to_sql.

Same run, same file: a sample of BENCH_INGEST_ROWS rows (default 1,000,000, about
100 MB) written by `voke ingest sample`, loaded into fresh databases of a local
environment started for the benchmark (in a temporary VOKE_HOME):

- (a) the limit: the raw file through ``COPY ... FROM STDIN (FORMAT csv)`` into an
  unconstrained table of text columns;
- voke: ``voke ingest load FILE --db ...`` (validation, staging, typed table with a
  primary key, Merkle seal, commit), as a user runs it;
- (b) the usual alternative: ``pandas.read_csv`` + ``DataFrame.to_sql`` into the same
  kind of typed table (skipped when pandas/SQLAlchemy are missing; BENCH_PANDAS_ROWS
  limits its rows, and the 1M figure is then extrapolated and labelled so);
- a diagnostic, PostgreSQL's share: the rows exactly as voke sends them (canonical,
  sorted piece by piece) COPYed into voke's own tables (``ingest.tags`` with its primary
  key), by a bare client that validates and seals nothing. What voke takes beyond this is
  voke's own work: validation, the Merkle seal, the leaf hashes, its start. The same COPY
  into ``ingest.tags`` without its primary key shows the key's part: one B-tree insertion,
  and one WAL record, per row, which is what keeps tag_ids unique across batches.

Each path runs in a child process of its own, so its peak RSS (getrusage) is its own.
Goals (issue 4): voke within 3x of raw COPY, at least 5x faster than pandas + to_sql,
peak memory under 300 MB whatever the file size. Prints figures; asserts nothing. The
host is shared and noisy: compare the ratios of one run, not absolute times across
runs, and use BENCH_INGEST_RUNS=5 or more.

Besides wall time, each path's CPU time is counted: the client's (its process and every
child it waited for) and the servers' (the primary's backends and background processes,
and the streaming replica's): on a 2-core host the sum over 2 bounds the wall time from
below, and it does not depend on what else the host runs.

BENCH_INGEST_MEMORY_ROWS (e.g. 2000000) adds one voke load of a sample that many rows
(the file-size limit raised to fit) to show that peak memory does not grow with it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROWS = int(os.environ.get("BENCH_INGEST_ROWS", "1000000"))
RUNS = int(os.environ.get("BENCH_INGEST_RUNS", "1"))
PANDAS_ROWS = int(os.environ.get("BENCH_PANDAS_ROWS", str(ROWS)))
MEMORY_ROWS = int(os.environ.get("BENCH_INGEST_MEMORY_ROWS", "0"))

# Runs CMD as its only child and reports that child's peak RSS (KiB on Linux).
_MEASURE = textwrap.dedent(
    """
    import resource, subprocess, sys, time
    t0 = time.perf_counter()
    done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    sys.stderr.write(done.stderr)
    sys.stdout.write(done.stdout)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print("\\nMEASURE", elapsed, usage.ru_maxrss, done.returncode, usage.ru_utime + usage.ru_stime)
    """
)

_RAW_COPY = textwrap.dedent(
    """
    import sys, psycopg
    conninfo, path = sys.argv[1:3]
    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t_raw (tag_id text, sku text, product_name text, factory_id text,"
                        " manufactured_at text, lot text, color text, size text)")
            with cur.copy("COPY t_raw FROM STDIN (FORMAT csv, HEADER true)") as copy, open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    copy.write(chunk)
        conn.commit()
    """
)

# COPY of prepared rows (FILE: pieces of "canonical row, leaf index, batch id" lines, each
# piece sorted, separated by blank lines) into ingest.tags, as voke's stager does.
_PG_SHARE = textwrap.dedent(
    """
    import sys, psycopg
    conninfo, path, columns = sys.argv[1:4]
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur, open(path, "rb") as fh:
        for piece in fh.read().split(b"\\n\\n"):
            if piece.strip():
                with cur.copy(f"COPY ingest.tags ({columns}) FROM STDIN") as copy:
                    copy.write(piece + b"\\n")
        conn.commit()
    """
)

_PANDAS = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from sqlalchemy import create_engine, text
    url, path, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t_typed (tag_id text PRIMARY KEY, sku text NOT NULL,"
                          " product_name text NOT NULL, factory_id text NOT NULL,"
                          " manufactured_at timestamptz NOT NULL, lot text, color text, size text)"))
    df = pd.read_csv(path, nrows=rows, parse_dates=["manufactured_at"], dtype={"size": str})
    # method="multi" binds rows x columns parameters per INSERT; PostgreSQL allows at most 65,535.
    df.to_sql("t_typed", engine, if_exists="append", index=False, method="multi",
              chunksize=65535 // len(df.columns))
    """
)


@dataclass
class Measured:
    seconds: float
    rss_mb: float
    client_cpu: float  # seconds of CPU of the command and its children
    server_cpu: float  # seconds of CPU of the PostgreSQL primary and replica meanwhile
    stdout: str


def server_cpu(postmasters: list[int]) -> float:
    """CPU seconds so far of the servers: their live processes and the ones they reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid, ppid = int(entry), int(fields[1])
        if pid in postmasters:
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        elif ppid in postmasters:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def measure(cmd: list[str], env: dict[str, str], postmasters: list[int]) -> Measured:
    """CMD run as the only child of a fresh interpreter: time, peak RSS, CPU, stdout."""
    before = server_cpu(postmasters)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True, text=True, check=False
    )
    time.sleep(0.5)  # the backend exits after the client and is reaped; the replica catches up
    server = server_cpu(postmasters) - before
    tail = done.stdout.rstrip().splitlines()[-1].split()
    seconds, rss_kb, code, client = float(tail[1]), int(tail[2]), int(tail[3]), float(tail[4])
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return Measured(seconds, rss_kb / 1024, client, server, done.stdout)


_COLUMNS = "tag_id, sku, product_name, factory_id, manufactured_at, lot, color, size, leaf_index, batch_id"


def prepare_pg_share(sample: Path, out: Path) -> None:
    """The rows voke sends for SAMPLE, for _PG_SHARE: canonical text, leaf index, batch 1,
    sorted piece by piece (128k rows, voke's largest), in COPY text format."""
    from datetime import UTC, datetime

    from voketag_ops.core import ingest as core

    validator = core.BatchValidator(now=datetime.now(UTC), seal=False, detect_duplicates=False)
    piece: list[str] = []
    leaf = 0
    with sample.open("rb") as src, out.open("w", encoding="utf-8") as dst:

        def flush() -> None:
            piece.sort()
            dst.write(core.copy_text(piece) + "\n")  # a blank line ends the piece
            piece.clear()

        for data in itertools.chain(iter(lambda: src.read(1 << 20), b""), [b""]):
            chunk = validator.feed(data) if data else validator.finish()
            piece.extend(f"{row}\t{leaf + i}\t1" for i, row in enumerate(chunk.canonical))
            leaf += chunk.accepted
            if len(piece) >= 1 << 17:
                flush()
        flush()


def main() -> None:
    # `timeout`, cron or a CI job ends a long bench with SIGTERM: leave through the `finally`
    # below (env destroy), which Python skips on a signal it does not handle (servers left running).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="voke-bench-ingest-"))
    # A sample over the default 100 MB limit (more than ~1M rows) must still load.
    env = {**os.environ, "VOKE_HOME": str(work / "home"), "VOKE_INGEST__MAX_FILE_BYTES": str(1 << 40)}
    env.pop("VOKE_CONFIG", None)
    voke = shutil.which("voke") or str(Path(sys.executable).with_name("voke"))
    sample = work / "sample.csv"
    try:
        subprocess.run(
            [voke, "env", "up"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        t0 = time.perf_counter()
        subprocess.run(
            [voke, "ingest", "sample", "--rows", str(ROWS), "--out", str(sample), "--seed", "20240601"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        size_mb = sample.stat().st_size / 1e6
        print(
            f"ingest: sample of {ROWS:,} rows, {size_mb:.1f} MB, written in {time.perf_counter() - t0:.1f} s"
        )

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from voketag_ops.adapters.local.environment import LocalEnvironment
        from voketag_ops.config import LocalSettings

        local = LocalEnvironment(LocalSettings(home=work / "home"))

        def fresh_db(name: str) -> str:
            # The databases of earlier runs go first: autovacuum would work on their tables
            # during this run, and more of it each run.
            with local.primary().connect() as conn:
                for (old,) in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'bench%'"
                ).fetchall():
                    conn.execute(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
            conninfo = local.platform_database(name)
            if name.startswith(("bench_share", "bench_nokey")):  # voke's tables, made as voke makes them
                from voketag_ops.workflows import ingest as wf

                made = wf.connect(conninfo)
                wf.ensure_schema(made)
                if name.startswith("bench_nokey"):
                    made.execute("ALTER TABLE ingest.tags DROP CONSTRAINT tags_pkey")
                    made.commit()
                made.close()
            quiesce()
            return conninfo

        def quiesce() -> None:
            """Every path starts from the same quiet host: the replica has replayed the WAL so
            far, both servers have checkpointed, the archive has caught up and the page cache
            is written out, so no run pays for the one before it."""
            with local.primary().connect() as conn:
                conn.execute("CHECKPOINT")
                row = conn.execute(
                    "SELECT pg_current_wal_lsn(), pg_walfile_name(pg_current_wal_lsn() - "
                    "(SELECT setting::numeric FROM pg_settings WHERE name = 'wal_segment_size'))"
                ).fetchone()
                assert row is not None
                lsn, previous = row  # every segment up to PREVIOUS is complete: archived in a moment
                for _ in range(300):
                    done = conn.execute(
                        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
                    ).fetchone()
                    if done is not None and done[0] >= previous:
                        break
                    time.sleep(0.1)
            with local.standby().connect() as conn:
                for _ in range(300):
                    caught_up = conn.execute(
                        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                    ).fetchone()
                    if caught_up is not None and caught_up[0]:
                        break
                    time.sleep(0.1)
                conn.execute("CHECKPOINT")
            os.sync()  # dirty pages from the run before are written now, not during the next

        postmasters = [pid for node in (local.primary(), local.standby()) if (pid := node.pid())]
        prepared = work / "voke-rows.txt"
        prepare_pg_share(sample, prepared)
        # Untimed warm-up of each path on a small file: the first run would pay for cold caches.
        small = work / "warm-up.csv"
        subprocess.run(
            [voke, "ingest", "sample", "--rows", "2000", "--out", str(small), "--seed", "1"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        measure([sys.executable, "-c", _RAW_COPY, fresh_db("bench_warm_raw"), str(small)], env, postmasters)
        measure(
            [voke, "ingest", "load", str(small), "--db", fresh_db("bench_warm_voke"), "--json"],
            env,
            postmasters,
        )
        raws: list[Measured] = []
        vokes: list[Measured] = []
        shares: list[Measured] = []
        keyless: list[Measured] = []
        for run in range(RUNS):
            conninfo = fresh_db(f"bench_raw_{run}")
            raws.append(measure([sys.executable, "-c", _RAW_COPY, conninfo, str(sample)], env, postmasters))
            conninfo = fresh_db(f"bench_voke_{run}")
            m = measure([voke, "ingest", "load", str(sample), "--db", conninfo, "--json"], env, postmasters)
            result = json.loads(m.stdout[: m.stdout.rindex("\nMEASURE")])["result"]
            assert result["status"] == "loaded" and result["rows_loaded"] == ROWS, result
            vokes.append(m)
            conninfo = fresh_db(f"bench_share_{run}")
            shares.append(
                measure(
                    [sys.executable, "-c", _PG_SHARE, conninfo, str(prepared), _COLUMNS], env, postmasters
                )
            )
            conninfo = fresh_db(f"bench_nokey_{run}")
            keyless.append(
                measure(
                    [sys.executable, "-c", _PG_SHARE, conninfo, str(prepared), _COLUMNS], env, postmasters
                )
            )
            raw = raws[-1]
            print(
                f"ingest: run {run + 1}: raw COPY {raw.seconds:.2f} s, voke load {m.seconds:.2f} s "
                f"(ratio {m.seconds / raw.seconds:.2f}x), voke peak RSS {m.rss_mb:.0f} MB; CPU s "
                f"client+servers: raw {raw.client_cpu:.2f}+{raw.server_cpu:.2f}, "
                f"voke {m.client_cpu:.2f}+{m.server_cpu:.2f}"
            )
        raw_med = statistics.median(r.seconds for r in raws)
        voke_med = statistics.median(v.seconds for v in vokes)
        print(
            f"ingest: (a) raw COPY FROM STDIN, unconstrained text table: median {raw_med:.2f} s of {RUNS}, "
            f"{ROWS / raw_med:,.0f} rows/s, peak RSS {max(r.rss_mb for r in raws):.0f} MB, "
            f"CPU {statistics.median(r.client_cpu + r.server_cpu for r in raws):.2f} s"
        )
        print(
            f"ingest: voke ingest load (validate + typed table with PK + seal): median {voke_med:.2f} s, "
            f"{ROWS / voke_med:,.0f} rows/s, peak RSS {max(v.rss_mb for v in vokes):.0f} MB (goal < 300 MB), "
            f"CPU {statistics.median(v.client_cpu + v.server_cpu for v in vokes):.2f} s "
            f"(client {statistics.median(v.client_cpu for v in vokes):.2f}, "
            f"servers {statistics.median(v.server_cpu for v in vokes):.2f})"
        )
        share_med = statistics.median(p.seconds for p in shares)
        print(
            f"ingest: PostgreSQL's share, voke's rows COPYed into its own tables by a bare client: median "
            f"{share_med:.2f} s, CPU {statistics.median(p.client_cpu + p.server_cpu for p in shares):.2f} s "
            f"(servers {statistics.median(p.server_cpu for p in shares):.2f}); voke / that = {voke_med / share_med:.2f}x, "
            f"that / raw COPY = {share_med / raw_med:.2f}x"
        )
        keyless_med = statistics.median(p.seconds for p in keyless)
        print(
            f"ingest: the same without ingest.tags' primary key: median {keyless_med:.2f} s "
            f"({keyless_med / raw_med:.2f}x raw COPY); the key's part {share_med - keyless_med:.2f} s, "
            f"servers' CPU {statistics.median(p.server_cpu for p in shares) - statistics.median(p.server_cpu for p in keyless):.2f} s"
        )
        ratios = ", ".join(f"{v.seconds / r.seconds:.2f}x" for r, v in zip(raws, vokes, strict=True))
        print(
            f"ingest: voke / raw COPY = {voke_med / raw_med:.2f}x of the medians (goal within 3x); "
            f"run by run {ratios}"
        )
        if MEMORY_ROWS:
            big = work / "big.csv"
            subprocess.run(
                [voke, "ingest", "sample", "--rows", str(MEMORY_ROWS), "--out", str(big), "--seed", "7"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            big_run = measure(
                [voke, "ingest", "load", str(big), "--db", fresh_db("bench_memory"), "--json"],
                env,
                postmasters,
            )
            print(
                f"ingest: voke load of {MEMORY_ROWS:,} rows ({big.stat().st_size / 1e6:.0f} MB): {big_run.seconds:.2f} s, "
                f"peak RSS {big_run.rss_mb:.0f} MB (vs {max(v.rss_mb for v in vokes):.0f} MB at {ROWS:,} rows)"
            )
            big.unlink()

        try:
            import pandas  # noqa: F401
            import sqlalchemy  # noqa: F401
        except ImportError:
            print(
                "ingest: (b) pandas + to_sql skipped: pandas/SQLAlchemy not installed (the nox bench session has them)"
            )
            return
        from psycopg.conninfo import conninfo_to_dict

        conninfo = fresh_db("bench_pandas")
        parts = conninfo_to_dict(conninfo)
        url = f"postgresql+psycopg://{parts['user']}@/{parts['dbname']}?host={parts['host']}&port={parts['port']}"
        rows = min(PANDAS_ROWS, ROWS)
        pandas_run = measure([sys.executable, "-c", _PANDAS, url, str(sample), str(rows)], env, postmasters)
        seconds, rss = pandas_run.seconds, pandas_run.rss_mb
        full = seconds * ROWS / rows
        label = "" if rows == ROWS else f" (measured on {rows:,} rows, extrapolated linearly: a lower bound)"
        print(
            f"ingest: (b) pandas read_csv + to_sql(method='multi', chunksize=8191): {full:.1f} s for {ROWS:,} rows"
            f"{label}, {rows / seconds:,.0f} rows/s, peak RSS {rss:.0f} MB"
        )
        print(f"ingest: pandas + to_sql / voke = {full / voke_med:.1f}x (goal at least 5x)")
    finally:
        subprocess.run(
            [voke, "env", "destroy", "--yes"],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
