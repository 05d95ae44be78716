"""`voke coverage report` against `coverage report` on the same data, for a 5,000-file report.

Generates a project of N modules (default 5,000) in three service packages, measures it
with coverage.py (branch coverage, one run), writes coverage.json and coverage.xml, then
times end to end (process start included):

- `coverage report`                      (coverage.py: reads .coverage and parses every source)
- `voke coverage report coverage.json`   (the goal: at least as fast as coverage.py's report)
- `voke coverage report coverage.xml`
- `voke coverage report .coverage`       (goes through coverage.py's own analysis)
- `voke coverage gate coverage.json`

and the in-process read + report of coverage.json (no start-up). Prints medians and ratios
against `coverage report`, and checks that both tools print the same total. Asserts nothing
about time. BENCH_FILES and BENCH_RUNS change the size and the repetitions.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = int(os.environ.get("BENCH_FILES", "5000"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SERVICES = ("admin_service", "factory_service", "blockchain_service")

MODULE = '''\
"""Generated module {i}."""


def classify(x):
    if x < 0:
        return "negative"
    elif x == 0:
        return "zero"
    total = 0
    for k in range(x % 7):
        if k % 2:
            total += k
        else:
            total -= 1
    return "positive" if total >= 0 else "mixed"


class Holder:
    def __init__(self, value):
        self.value = value

    def scaled(self, factor):
        if factor == 0:
            raise ValueError("zero")
        return self.value * factor


def unused_{i}(items):
    out = []
    for item in items:
        if item:
            out.append(item)
    return out
'''


def generate(root: Path, n: int) -> None:
    for svc in SERVICES:
        (root / svc).mkdir(parents=True)
        (root / svc / "__init__.py").write_text("")
    driver = ["import importlib", "mods = ["]
    for i in range(n):
        svc = SERVICES[i % len(SERVICES)]
        (root / svc / f"m{i:05d}.py").write_text(MODULE.format(i=i))
        driver.append(f"    {svc + '.m' + format(i, '05d')!r},")
    driver += [
        "]",
        "for i, name in enumerate(mods):",
        "    m = importlib.import_module(name)",
        "    m.classify(i % 11 - 2)",
        "    if i % 3:",
        "        m.Holder(i).scaled(2)",
    ]
    (root / "drive.py").write_text("\n".join(driver) + "\n")
    (root / "voke.toml").write_text(
        "[coverage]\n"
        + "".join(f'[coverage.services.{s.replace("_", "-")}]\npaths = ["{s}/"]\n' for s in SERVICES)
    )


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def median_time(cmd: list[str], cwd: Path, env: dict[str, str], runs: int = RUNS) -> float | None:
    """Median wall time of CMD, or None (with the reason printed) when it does not succeed."""
    warm = run(cmd, cwd, env)  # warm-up (page cache, .pyc); a gate may answer 1
    if warm.returncode not in (0, 1):
        print(f"  ! {' '.join(cmd[-3:])} exited {warm.returncode}: {warm.stderr.strip()[-300:]}")
        return None
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(cmd, cwd, env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="voke-cov-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOKE_", "GITHUB_", "COVERAGE_"))}
    env["VOKE_HOME"] = str(work / "home")
    voke = shutil.which("voke") or str(Path(sys.executable).with_name("voke"))
    cov = [sys.executable, "-m", "coverage"]
    try:
        t0 = time.perf_counter()
        generate(work, FILES)
        measure = run([*cov, "run", "--branch", "--source=" + ",".join(SERVICES), "drive.py"], work, env)
        if measure.returncode != 0:
            raise SystemExit(f"coverage run failed: {measure.stderr[-500:]}")
        for fmt, out in (("json", "coverage.json"), ("xml", "coverage.xml")):
            run([*cov, fmt, "-q", "-o", out], work, env)
        size = (work / "coverage.json").stat().st_size
        print(
            f"data: {FILES} files, coverage.json {size / 1e6:.1f} MB, made in {time.perf_counter() - t0:.1f} s; "
            f"{RUNS} timed runs each, medians"
        )

        ours = run([voke, "coverage", "report", "coverage.json", "--json"], work, env)
        total_voke = json.loads(ours.stdout)["result"]["totals"]["display"]
        theirs = run([*cov, "report", "--format=total"], work, env).stdout.strip()
        print(f"check: total shown by coverage.py {theirs}%, by voke {total_voke}%"
              f" -> {'same' if theirs == total_voke else 'DIFFERENT'}")  # fmt: skip

        base = median_time([*cov, "report"], work, env)
        if base is None:
            raise SystemExit("coverage report failed")
        print(f"  coverage report                        {base:7.3f} s   1.00x", flush=True)
        rows = [
            ("voke coverage report coverage.json", [voke, "coverage", "report", "coverage.json"]),
            ("voke coverage report --json", [voke, "coverage", "report", "coverage.json", "--json"]),
            ("voke coverage gate coverage.json", [voke, "coverage", "gate", "coverage.json"]),
            ("voke coverage report coverage.xml", [voke, "coverage", "report", "coverage.xml"]),
            ("voke coverage report .coverage", [voke, "coverage", "report", ".coverage"]),
            ("coverage json (for reference)", [*cov, "json", "-q", "-o", str(work / "again.json")]),
        ]
        for label, cmd in rows:
            t = median_time(cmd, work, env)
            if t is not None:
                print(f"  {label:38} {t:7.3f} s   {t / base:4.2f}x coverage report", flush=True)

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from voketag_ops.config import load_config
        from voketag_ops.workflows.coverage import report

        settings = load_config(environ={}, cwd=work).settings.coverage
        times = []
        for _ in range(RUNS):
            t1 = time.perf_counter()
            report(settings, [Path("coverage.json")], root=work)
            times.append(time.perf_counter() - t1)
        inproc = statistics.median(times)
        print(
            f"  in-process read + report (json)        {inproc:7.3f} s   {inproc / base:4.2f}x coverage report"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
