"""Coverage data for testing and benchmarking `voke coverage`: a tiny real project with two
services and an unassigned tool measured by coverage.py in subprocesses (branch and
statement runs, parallel data files), and synthetic coverage.json documents.

Shipped with the package like a test fake, so tests and `benchmarks/` share one generator.
Needs coverage.py (the `test` extra).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOURCES = {
    "admin_service/__init__.py": "",
    "admin_service/users.py": """
        class Users:
            def __init__(self):
                self.names = []

            def add(self, name):
                if not name:
                    raise ValueError("empty")
                if name in self.names:
                    return False
                self.names.append(name)
                return True

            def purge(self):
                removed = 0
                while self.names:
                    self.names.pop()
                    removed += 1
                return removed


        def greet(name):
            return "hi " + name if name else "nobody"
    """,
    "factory_service/__init__.py": "",
    "factory_service/batches.py": """
        def validate(rows):
            errors = []
            for i, row in enumerate(rows):
                if len(row) != 3:
                    errors.append(i)
                elif not row[0]:
                    errors.append(i)
            return errors


        def seal(rows):
            if not rows:  # pragma: no cover
                return None
            acc = 0
            for r in rows:
                acc ^= hash(tuple(r))
            return acc


        def unused(x):
            try:
                return 1 / x
            except ZeroDivisionError:
                return None
    """,
    "tools/__init__.py": "",
    "tools/cli.py": """
        def main(argv):
            if argv:
                return argv[0]
            return None
    """,
    "run_a.py": """
        from admin_service.users import Users, greet
        from factory_service.batches import validate
        import tools.cli
        u = Users(); u.add("x"); u.add("x"); greet("y")
        validate([[1, 2, 3], [1, 2]])
        tools.cli.main(["a"])
    """,
    "run_b.py": """
        from admin_service.users import Users
        from factory_service.batches import seal, validate
        u = Users(); u.add("z"); u.purge()
        seal([[1], [2]]); validate([["", 1, 2]])
    """,
}
SOURCE_ARG = "--source=admin_service,factory_service,tools"


@dataclass(frozen=True)
class Measured:
    """A measured project: its root and the files coverage.py wrote there."""

    root: Path
    json: Path  # branch data, both runs combined
    xml: Path
    data: Path  # .coverage, both runs combined
    parallel: tuple[Path, Path]  # .coverage.* of each run (branch)
    statement_data: Path  # one statement-only run
    report_total: str  # `coverage report --precision=3` TOTAL percentage
    totals: dict  # coverage.json totals

    def copy_to(self, dest: Path) -> Path:
        shutil.copytree(self.root, dest)
        return dest


def write_project(root: Path) -> None:
    for rel, text in SOURCES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def coverage(root: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "coverage", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def measure(root: Path) -> Measured:
    write_project(root)
    coverage(root, "run", "--branch", "-p", SOURCE_ARG, "run_a.py")
    coverage(root, "run", "--branch", "-p", SOURCE_ARG, "run_b.py")
    parallel = tuple(sorted(root.glob(".coverage.*")))
    assert len(parallel) == 2
    keep = root / "parallel"
    keep.mkdir()
    kept = []
    for p in parallel:
        shutil.copy(p, keep / p.name)
        kept.append(keep / p.name)
    coverage(root, "combine", "-q")
    coverage(root, "json", "-q", "-o", "coverage.json")
    coverage(root, "xml", "-q", "-o", "coverage.xml")
    report = coverage(root, "report", "--precision=3")
    total_line = next(ln for ln in report.splitlines() if ln.startswith("TOTAL"))
    stmt_dir = root / "statement"
    stmt_dir.mkdir()
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--data-file", str(stmt_dir / ".coverage.stmt"), SOURCE_ARG,
         "run_a.py"],
        cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    return Measured(
        root=root,
        json=root / "coverage.json",
        xml=root / "coverage.xml",
        data=root / ".coverage",
        parallel=(kept[0], kept[1]),
        statement_data=stmt_dir / ".coverage.stmt",
        report_total=total_line.split()[-1].rstrip("%"),
        totals=json.loads((root / "coverage.json").read_text())["totals"],
    )


_CACHE: dict[str, Measured] = {}


def measured_once(make_dir: Callable[[], Path]) -> Measured:
    """The measured project, made once per process in the directory MAKE_DIR returns
    (treat it as read-only, or `copy_to` somewhere else first)."""
    if "m" not in _CACHE:
        _CACHE["m"] = measure(make_dir() / "project")
    return _CACHE["m"]


def coverage_json(
    files: dict[str, dict], *, branch: bool = False, fmt: int | None = 3, version: str = "7.17.4"
) -> dict:
    """A synthetic coverage.json: FILES maps path -> {"executed": [...], "missing": [...]} (plus
    optional "executed_branches"/"missing_branches"); summaries are filled in like coverage.py's."""
    meta: dict = {"version": version, "timestamp": "2026-01-01T00:00:00", "branch_coverage": branch,
                  "show_contexts": False}  # fmt: skip
    if fmt is not None:
        meta["format"] = fmt
    out_files = {}
    tot = {"covered_lines": 0, "num_statements": 0, "missing_lines": 0}
    for path, spec in files.items():
        executed, missing = sorted(spec.get("executed", [])), sorted(spec.get("missing", []))
        summary = {"covered_lines": len(executed), "num_statements": len(executed) + len(missing),
                   "missing_lines": len(missing), "excluded_lines": 0}  # fmt: skip
        entry = {
            "executed_lines": executed,
            "summary": summary,
            "missing_lines": missing,
            "excluded_lines": [],
        }
        if branch:
            taken, missed = spec.get("executed_branches", []), spec.get("missing_branches", [])
            entry["executed_branches"], entry["missing_branches"] = taken, missed
            arcs = taken + missed
            missed_from = [a for a, _ in missed]
            summary.update(
                num_branches=len(arcs),
                missing_branches=len(missed_from),
                covered_branches=len(arcs) - len(missed_from),
                num_partial_branches=sum(1 for a in missed_from if a not in missing),
            )
        if "functions" in spec:
            entry["functions"] = spec["functions"]
        out_files[path] = entry
        for k in tot:
            tot[k] += summary[k]
    return {"meta": meta, "files": out_files, "totals": tot}


def lines_file(executed: int, missing: int) -> dict:
    """A file with EXECUTED covered statements (lines 1..) followed by MISSING missed ones."""
    return {
        "executed": list(range(1, executed + 1)),
        "missing": list(range(executed + 1, executed + missing + 1)),
    }
