"""Start-up and `env up` timings, as ratios against `python -c pass` measured in the same run.

Goals (issue 2): `voke --version` within 3x of `python -c pass`; `voke --help` under 0.3 s;
`voke env up` from nothing to a streaming replica and a finished base backup under 10 s.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "15"))


def median_time(cmd: list[str], env: dict[str, str], runs: int = RUNS) -> float:
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="voke-bench-"))
    env = {**os.environ, "VOKE_HOME": str(home / "home")}
    script = shutil.which("voke") or str(Path(sys.executable).with_name("voke"))
    base = median_time([sys.executable, "-c", "pass"], env)
    print(f"startup: python -c pass                median {base * 1000:7.1f} ms  (baseline, {RUNS} runs)")
    try:
        rows = [
            ("voke --version", [script, "--version"]),
            ("voke --help", [script, "--help"]),
            ("voke env status (no env)", [script, "env", "status"]),
        ]
        for label, cmd in rows:
            t = median_time(cmd, env)
            print(f"startup: {label:30} median {t * 1000:7.1f} ms  ratio {t / base:5.2f}x python -c pass")

        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(
                [script, "env", "up"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            times.append(time.perf_counter() - t0)
            t_status = median_time([script, "env", "status"], env, runs=5)
            subprocess.run(
                [script, "env", "destroy", "--yes"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        up = statistics.median(times)
        print(
            f"env up: from nothing to streaming replica + base backup: median {up:.2f} s of 3 "
            f"(ratio {up / base:.0f}x python -c pass; goal < 10 s)"
        )
        print(
            f"startup: voke env status (running env)   median {t_status * 1000:7.1f} ms  "
            f"ratio {t_status / base:5.2f}x python -c pass"
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
