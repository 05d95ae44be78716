"""Coverage readers: coverage.json, Cobertura XML and .coverage agree with each other and with
`coverage report` on real data; bad inputs are rejected with one clear message."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from voketag_ops.adapters.local.coverage_files import coverage_precision, read_inputs
from voketag_ops.core.coverage import (
    InexactMerge,
    PathMap,
    combine,
    diff_coverage,
    display_covered,
    total,
)
from voketag_ops.coverage_testing import (
    SOURCE_ARG,
    Measured,
    coverage,
    coverage_json,
    measured_once,
    write_project,
)
from voketag_ops.errors import ConfigError, InputError, UsageError


@pytest.fixture
def measured(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    return measured_once(lambda: tmp_path_factory.mktemp("measured"))


def totals_of(paths, root, **kw):
    inputs = read_inputs([Path(p) for p in paths], root=root, **kw)
    files = combine(f for i in inputs for f in i.files)
    return inputs, files, total(f.counts for f in files.values())


def per_file(files):
    return {
        p: (c.statements, c.missing, c.branches, c.missing_branches, c.partial_branches)
        for p, c in ((p, f.counts) for p, f in files.items())
    }


def test_json_totals_equal_coverage_report(measured: Measured):
    inputs, files, t = totals_of([measured.json], measured.root)
    assert inputs[0].format == "json" and inputs[0].branch and inputs[0].tool_version
    assert t.percent == measured.totals["percent_covered"]
    assert display_covered(t.percent, 0) == measured.totals["percent_covered_display"]
    assert display_covered(t.percent, 3) == measured.report_total
    assert (t.statements, t.missing, t.branches, t.missing_branches, t.partial_branches) == (
        measured.totals["num_statements"],
        measured.totals["missing_lines"],
        measured.totals["num_branches"],
        measured.totals["missing_branches"],
        measured.totals["num_partial_branches"],
    )
    doc = json.loads(measured.json.read_text())
    for path, f in files.items():
        s = doc["files"][path]["summary"]
        c = f.counts
        assert (c.statements, c.missing, c.branches, c.missing_branches, c.partial_branches) == (
            s["num_statements"], s["missing_lines"], s["num_branches"], s["missing_branches"],
            s["num_partial_branches"],
        )  # fmt: skip


# coverage.json of old coverage.py versions (see old_coverage_json/README.md), and what each
# version's own `coverage report --precision=3` printed for it: (Stmts, Miss, Branch, BrPart,
# Cover) of admin_service/*, of factory_service/* (--include) and the TOTAL.
OLD = Path(__file__).parent / "old_coverage_json"
_WITH_ARCS_COUNTED_AS_6 = {
    "admin_service/": (13, 3, 6, 2, "73.684"),
    "factory_service/": (12, 1, 6, 1, "88.889"),
    "": (25, 4, 12, 3, "81.081"),
}
_WITH_ARCS_COUNTED_AS_4 = {
    "admin_service/": (13, 3, 6, 2, "73.684"),
    "factory_service/": (12, 1, 4, 1, "87.500"),
    "": (25, 4, 10, 3, "80.000"),
}
OLD_REPORTS = {
    "6.2": _WITH_ARCS_COUNTED_AS_6,  # format 1: no arc lists at all
    "6.5.0": _WITH_ARCS_COUNTED_AS_6,  # the `with` line lists 3 arcs, counts 2 exits
    "7.5.4": _WITH_ARCS_COUNTED_AS_6,
    "7.10.7": _WITH_ARCS_COUNTED_AS_4,  # (Python 3.12)
    "7.11.3": _WITH_ARCS_COUNTED_AS_4,
}


@pytest.mark.parametrize("version", OLD_REPORTS)
def test_old_coverage_json_totals_equal_that_version_s_coverage_report(version, tmp_path):
    # Up to 7.11, executed_lines holds excluded lines that ran (users.py 9 and 23) and line 1 of
    # the empty __init__.py; totals from the lists counted 29 statements where coverage.py has 25.
    inputs, files, t = totals_of([OLD / f"{version}.json"], tmp_path)
    assert inputs[0].tool_version == version and inputs[0].branch
    for prefix, (stmts, miss, branches, partial, cover) in OLD_REPORTS[version].items():
        c = total(f.counts for p, f in files.items() if p.startswith(prefix))
        assert (c.statements, c.missing, c.branches, c.partial_branches) == (stmts, miss, branches, partial)
        assert display_covered(c.percent, 3) == cover, prefix
    totals = json.loads((OLD / f"{version}.json").read_text())["totals"]
    assert t.percent == totals["percent_covered"] and t.missing_branches == totals["missing_branches"]
    users = files["admin_service/users.py"]
    assert users.missing == {5, 17, 20} and not users.executed & {9, 10, 23, 24}
    assert not files["admin_service/__init__.py"].statements
    # an excluded line that ran is no statement of a diff either
    diff = diff_coverage({"admin_service/users.py": {9, 23}}, files, 0)
    assert diff.measured == 0 and diff.display == "n/a"


def test_old_coverage_json_of_two_runs_combines_as_coverage_combine_or_says_it_cannot(tmp_path):
    # 7.10.7's lists, once the lines that are no statements are set aside, are its counts: the
    # two runs combine as `coverage combine` then `coverage report` of 7.10.7 says.
    _, _, t = totals_of([OLD / "7.10.7.json", OLD / "7.10.7-second-run.json"], tmp_path)
    assert (t.statements, t.missing, t.branches, t.partial_branches) == (25, 3, 10, 2)
    assert display_covered(t.percent, 3) == "85.714"
    # 7.5.4 lists 3 arcs for the `with` line of batch.py and counts 2 exits: which exits the two
    # runs took together cannot be told from them, so they are not combined at all.
    with pytest.raises(InexactMerge, match=re.escape("factory_service/batch.py")):
        totals_of([OLD / "7.5.4.json", OLD / "7.5.4-second-run.json"], tmp_path)
    # the same report twice is itself
    _, _, twice = totals_of([OLD / "7.5.4.json", OLD / "7.5.4.json"], tmp_path)
    assert display_covered(twice.percent, 3) == "81.081"


def test_a_coverage_json_summary_is_checked_and_one_without_counts_leaves_the_lists(tmp_path):
    doc = json.loads((OLD / "6.2.json").read_text())
    users = doc["files"]["admin_service/users.py"]
    users["summary"]["num_branches"] = "6"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"admin_service/users\.py: summary\.num_branches must be a count"):
        read_inputs([path], root=tmp_path)
    del users["summary"]  # (no tool voke knows writes that: then the lists are all there is)
    path.write_text(json.dumps(doc))
    _, files, _ = totals_of([path], tmp_path)
    assert (
        files["admin_service/users.py"].counts.statements,
        files["admin_service/users.py"].counts.branches,
    ) == (13, 0)


def test_cobertura_and_data_file_agree_with_json(measured: Measured):
    _, jfiles, jt = totals_of([measured.json], measured.root)
    xinputs, xfiles, xt = totals_of([measured.xml], measured.root)
    dinputs, dfiles, dt = totals_of([measured.data], measured.root)
    assert xinputs[0].format == "cobertura" and dinputs[0].format == "coverage-data"
    assert per_file(xfiles) == per_file(jfiles) == per_file(dfiles)
    assert xt.percent == jt.percent == dt.percent
    assert xfiles["admin_service/users.py"].missing == jfiles["admin_service/users.py"].missing


def test_cobertura_of_a_multi_package_source_agrees_with_json(tmp_path):
    # `[run] source = a, b, c` makes one <source> per package: their empty __init__.py are one
    # <class filename="__init__.py"> with no <line>, counted nothing, under all three.
    packages = ("admin_service", "factory_service", "blockchain_service")
    for i, package in enumerate(packages):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / f"m{i}.py").write_text("def f(x):\n    if x:\n        return 1\n    return 2\n")
    (tmp_path / ".coveragerc").write_text(f"[run]\nbranch = True\nsource = {','.join(packages)}\n")
    (tmp_path / "main.py").write_text(
        "from admin_service.m0 import f\nfrom factory_service.m1 import f as g\nimport blockchain_service.m2\n"
        "f(1)\ng(0)\n"
    )
    coverage(tmp_path, "run", "main.py")
    coverage(tmp_path, "json", "-q", "-o", "cov.json")
    coverage(tmp_path, "xml", "-q", "-o", "cov.xml")
    assert "<source>" in (xml := (tmp_path / "cov.xml").read_text()) and 'filename="__init__.py"' in xml
    _, jfiles, jt = totals_of([tmp_path / "cov.json"], tmp_path)
    _, xfiles, xt = totals_of([tmp_path / "cov.xml"], tmp_path)
    assert per_file(xfiles) == per_file(jfiles) and xt == jt
    assert {f"{p}/__init__.py" for p in packages} <= set(xfiles)
    # a file name under two sources whose class counts lines is still refused: which one ran?
    (tmp_path / "admin_service" / "util.py").write_text("x = 1\n")
    (tmp_path / "factory_service" / "util.py").write_text("x = 2\n")
    coverage(tmp_path, "run", "main.py")
    coverage(tmp_path, "xml", "-q", "-o", "cov.xml")
    with pytest.raises(InputError, match=r"util\.py exists under 2 of its <source> entries"):
        read_inputs([tmp_path / "cov.xml"], root=tmp_path)


def _write_all(fd: int, data: bytes) -> None:
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
    except BrokenPipeError:  # the reader gave up
        pass


@pytest.mark.parametrize("kind", ["json", "xml"])
def test_an_input_is_opened_once_so_a_pipe_can_be_given(measured: Measured, kind):
    # `cat coverage.json | voke coverage report /dev/stdin`, `voke coverage report <(...)`: the head
    # read to recognise the format was gone when the file was opened again to be parsed
    given = getattr(measured, kind)
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=_write_all, args=(write_fd, given.read_bytes()))
    writer.start()
    try:
        inputs, files, t = totals_of([f"/dev/fd/{read_fd}"], measured.root)
    finally:
        os.close(read_fd)
        writer.join()
    _, expected_files, expected = totals_of([given], measured.root)
    assert inputs[0].format == ("json" if kind == "json" else "cobertura")
    assert per_file(files) == per_file(expected_files) and t == expected


def test_parallel_data_files_combine_to_the_union(measured: Measured):
    _, jfiles, jt = totals_of([measured.json], measured.root)
    _, pfiles, _ = totals_of(list(measured.parallel), measured.root)
    assert per_file(pfiles) == per_file(jfiles)
    _, dirfiles, _ = totals_of([measured.parallel[0].parent], measured.root)
    assert per_file(dirfiles) == per_file(jfiles)
    # one run alone covers less than the union
    _, _, one = totals_of([measured.parallel[0]], measured.root)
    assert one.missing > jt.missing


def test_two_json_reports_of_the_same_files_are_combined(measured: Measured, tmp_path):
    # Two partial reports (one per run) combine to the union, like `coverage combine`.
    reports = []
    for i, data in enumerate(measured.parallel):
        out = tmp_path / f"part{i}.json"
        coverage(measured.root, "json", "-q", f"--data-file={data}", "-o", str(out))
        reports.append(out)
    _, files, t = totals_of(reports, measured.root)
    _, jfiles, jt = totals_of([measured.json], measured.root)
    assert per_file(files) == per_file(jfiles)
    assert t.percent == jt.percent


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.iterdir() if p.name.startswith(".coverage")}


def _under(path: str, root: Path) -> str:
    """A path of coverage.py's JSON report as voke keys it (from ROOT)."""
    return os.path.relpath(path, root) if os.path.isabs(path) else path


def _coverage_py_json(root: Path, tmp_path: Path) -> dict:
    """`coverage json` of ROOT's data as coverage.py's CLI reads it, run on a copy (it combines
    the .coverage.* beside .coverage into it and deletes them)."""
    copy = shutil.copytree(root, tmp_path / "coverage-py-copy")
    coverage(copy, "json", "-q", "-o", "out.json")
    assert not list(copy.glob(".coverage.*.pid*"))  # it did combine (and delete) the data files
    return json.loads((copy / "out.json").read_text())


def test_a_data_file_is_read_with_the_data_files_beside_it_as_coverage_report_reads_it(tmp_path):
    # `coverage run` then `coverage run -p` leave .coverage and .coverage.HOST.PID...: coverage.py's
    # reporting commands (report, json, xml) combine the second into the first; voke's number is
    # coverage.py's, and it changes no file.
    root = tmp_path / "project"
    write_project(root)
    coverage(root, "run", "--branch", SOURCE_ARG, "run_a.py")
    coverage(root, "run", "--branch", "-p", SOURCE_ARG, "run_b.py")
    (root / ".coverage.json").write_text("{}")  # a report beside it is no data file
    before = _snapshot(root)
    assert len(before) == 3
    expected = _coverage_py_json(root, tmp_path)
    report = coverage(shutil.copytree(root, tmp_path / "report-copy"), "report", "--precision=3")
    report_total = next(ln for ln in report.splitlines() if ln.startswith("TOTAL")).split()[-1]

    inputs, files, t = totals_of([Path(".coverage")], root)
    assert _snapshot(root) == before  # nothing combined into .coverage, nothing deleted
    assert t.percent == expected["totals"]["percent_covered"]
    assert display_covered(t.percent, 3) + "%" == report_total
    assert (t.statements, t.missing, t.branches, t.missing_branches) == (
        expected["totals"]["num_statements"],
        expected["totals"]["missing_lines"],
        expected["totals"]["num_branches"],
        expected["totals"]["missing_branches"],
    )
    assert {p: (f.counts.statements, f.counts.missing) for p, f in files.items()} == {
        _under(p, root): (f["summary"]["num_statements"], f["summary"]["missing_lines"])
        for p, f in expected["files"].items()
    }
    assert [i.source for i in inputs] == [f"{root / '.coverage'}, {next(root.glob('.coverage.*.pid*'))}"]
    # .coverage alone (what voke read before) covers less
    (root / ".coverage.json").unlink()
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(root / ".coverage", alone / ".coverage")
    _, _, one = totals_of([alone / ".coverage"], root)
    assert one.missing > t.missing


def test_before_coverage_py_7_14_the_data_files_beside_it_are_not_combined(tmp_path, monkeypatch):
    # coverage.py's reporting commands combine them since 7.14 only: an older one reports .coverage alone
    import coverage as coverage_py

    root = tmp_path / "project"
    write_project(root)
    coverage(root, "run", "--branch", SOURCE_ARG, "run_a.py")
    alone = totals_of([Path(".coverage")], root)[2]
    coverage(root, "run", "--branch", "-p", SOURCE_ARG, "run_b.py")
    monkeypatch.setattr(coverage_py, "version_info", (7, 13, 5, "final", 0))
    inputs, _, t = totals_of([Path(".coverage")], root)
    assert t == alone and inputs[0].source == str(root / ".coverage")
    monkeypatch.setattr(coverage_py, "version_info", (7, 14, 0, "final", 0))
    assert totals_of([Path(".coverage")], root)[2].missing < alone.missing


def test_an_unreadable_data_file_beside_it_is_skipped_with_coverage_py_s_warning(tmp_path):
    root = tmp_path / "project"
    write_project(root)
    coverage(root, "run", "--branch", SOURCE_ARG, "run_a.py")
    (root / ".coverage.damaged").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    expected = _coverage_py_json_keeping(root)
    inputs, _, t = totals_of([Path(".coverage")], root)
    assert t.percent == expected["totals"]["percent_covered"]
    assert any(".coverage.damaged" in w for w in inputs[0].warnings), inputs[0].warnings
    assert (root / ".coverage.damaged").exists()


def test_a_data_file_coverage_py_would_write_into_is_refused_or_skipped_and_left_as_it_was(tmp_path):
    # coverage.py gives a file without its tables its schema when it reads one: an empty
    # .coverage.x in a directory became a 53 KB database (on a read-only mount: exit 1)
    root = tmp_path / "project"
    write_project(root)
    coverage(root, "run", "--branch", "-p", SOURCE_ARG, "run_a.py")
    parts = root / "parts"
    parts.mkdir()
    for made in root.glob(".coverage.*"):
        made.rename(parts / made.name)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("create table t (a)")
    for content, why in ((b"", "empty file"), (foreign.read_bytes(), "without coverage.py's tables")):
        (parts / ".coverage.x").write_bytes(content)
        with pytest.raises(InputError, match=rf"parts/\.coverage\.x: .*{why}"):
            read_inputs([Path("parts")], root=root)
        assert (parts / ".coverage.x").read_bytes() == content
    # beside a lone .coverage (combined in since coverage.py 7.14) it is no data file: skipped
    (parts / ".coverage.x").rename(root / ".coverage.x")
    for made in parts.glob(".coverage.*"):
        made.rename(root / ".coverage")
    inputs, _, t = totals_of([Path(".coverage")], root)
    assert t.statements and inputs[0].source == str(root / ".coverage")
    assert (root / ".coverage.x").read_bytes() == foreign.read_bytes()


def _coverage_py_json_keeping(root: Path) -> dict:
    # (coverage.py keeps a data file it could not read: nothing to copy)
    before = (root / ".coverage").read_bytes()
    coverage(root, "json", "-q", "-o", "out.json")
    assert (root / ".coverage").read_bytes() == before
    return json.loads((root / "out.json").read_text())


def test_report_ignore_errors_in_the_project_config_skips_a_deleted_source(tmp_path):
    # `[report] ignore_errors = True`: `coverage report` skips a measured file since deleted,
    # with a warning, and reports the rest; so does voke (without it: the sources are missing).
    (tmp_path / ".coveragerc").write_text("[run]\nbranch = True\n[report]\nignore_errors = True\n")
    (tmp_path / "gone.py").write_text("def f(x):\n    if x:\n        return 1\n    return 2\n")
    (tmp_path / "kept.py").write_text("def g(x):\n    if x:\n        return 1\n    return 2\n")
    (tmp_path / "main.py").write_text("import gone, kept\ngone.f(1)\nkept.g(0)\n")
    coverage(tmp_path, "run", "--source=.", "main.py")
    (tmp_path / "gone.py").unlink()
    expected = _coverage_py_json_keeping(tmp_path)
    report = coverage(tmp_path, "report", "--precision=2")
    assert "gone.py" not in report
    inputs, files, t = totals_of([Path(".coverage")], tmp_path)
    assert sorted(files) == sorted(_under(p, tmp_path) for p in expected["files"]) == ["kept.py", "main.py"]
    assert t.percent == expected["totals"]["percent_covered"]
    total_line = next(ln for ln in report.splitlines() if ln.startswith("TOTAL"))
    assert display_covered(t.percent, 2) + "%" == total_line.split()[-1]
    (said,) = inputs[0].warnings  # as coverage.py says it, without its link to the docs
    assert said.startswith("Couldn't parse '") and "gone.py" in said and said.endswith("(couldnt-parse)")


def test_branch_and_statement_data_refuse_to_combine(measured: Measured):
    with pytest.raises(InputError) as err:
        read_inputs([measured.parallel[0], measured.statement_data], root=measured.root)
    assert (
        str(measured.parallel[0]) in err.value.message and str(measured.statement_data) in err.value.message
    )


def test_data_file_with_missing_sources(tmp_path):
    (tmp_path / "gone.py").write_text("x = 1\n")
    (tmp_path / "main.py").write_text("import gone\n")
    coverage(tmp_path, "run", "--source=.", "main.py")
    (tmp_path / "gone.py").unlink()
    with pytest.raises(InputError, match="sources are missing") as err:
        read_inputs([Path(".coverage")], root=tmp_path)
    assert "gone.py" in err.value.message
    assert err.value.hint


def test_empty_directory_hints_at_hidden_files(tmp_path):
    (tmp_path / "artifacts").mkdir()
    with pytest.raises(InputError, match="no coverage data files") as err:
        read_inputs([Path("artifacts")], root=tmp_path)
    assert "include-hidden-files" in err.value.hint


def test_remap_and_windows_separators(tmp_path):
    doc = coverage_json(
        {
            "/app/src/admin_service/a.py": {"executed": [1], "missing": [2]},
            "C:\\ci\\src\\admin_service\\b.py": {"executed": [1, 2], "missing": []},
        }
    )
    (tmp_path / "c.json").write_text(json.dumps(doc))
    inputs = read_inputs(
        [Path("c.json")], root=tmp_path, remap=PathMap((("/app/src/", ""), ("C:/ci/src/", "")))
    )
    assert sorted(f.path for f in inputs[0].files) == ["admin_service/a.py", "admin_service/b.py"]


def test_absolute_paths_under_the_root_become_relative(tmp_path):
    doc = coverage_json({str(tmp_path / "pkg" / "m.py"): {"executed": [1], "missing": []}})
    (tmp_path / "c.json").write_text(json.dumps(doc))
    assert read_inputs([tmp_path / "c.json"], root=tmp_path)[0].files[0].path == "pkg/m.py"


def test_regions_are_read_when_asked(measured: Measured):
    inputs = read_inputs([measured.json], root=measured.root, regions=True)
    users = next(f for f in inputs[0].files if f.path == "admin_service/users.py")
    names = {r.name for r in users.regions if r.kind == "function"}
    assert {"Users.add", "Users.purge", "greet", ""} <= names
    assert read_inputs([measured.json], root=measured.root)[0].files[0].regions == ()


# -- bad input -------------------------------------------------------------------------------------
_LINE = (
    '<coverage line-rate="1"><packages><package><classes>\n<class filename="a.py"><lines>\n'
    " <line {}/>\n</lines></class></classes></package></packages></coverage>\n"
)


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ('{"hello": 1}', InputError, "not a coverage.py JSON report"),
        ("[1, 2]", InputError, "not a coverage.py JSON report"),
        ('{"meta": {"format": 9}, "files": {}}', InputError, "format 9 is not supported"),
        ('{"meta": {}, "files": {"a.py": {"executed_lines": "x"}}}', InputError, "malformed coverage.json"),
        ("{oops", InputError, "not valid JSON"),
        ("<html><body/></html>", InputError, "not a Cobertura XML report"),
        ("<coverage><packages/></coverage>", InputError, "no line-rate"),
        ("<coverage", InputError, "line 1, column 1: not well-formed XML: unclosed token"),
        (_LINE.format('hits="1"'), InputError, r"line 3, column 2: malformed Cobertura XML: <line> has no number"),
        (_LINE.format('number="12x" hits="1"'), InputError, "line 3, column 2: .*number '12x' is not an integer"),
        (_LINE.format('number="1" hits="1" branch="true" condition-coverage="50% (1/2)" missing-branches="3,x"'),
         InputError, "line 3, column 2: .*missing-branches '3,x' is not a list of line numbers"),
        ('{"meta": {"branch_coverage": true}, "files": {"a.py": {"executed_branches": [["x", 2]]}}}', InputError,
         "a.py: executed_branches must be a list of \\[from, to\\] line-number pairs"),
        ('{"meta": {"branch_coverage": true}, "files": {"a.py": {"missing_branches": [[1]]}}}', InputError,
         "a.py: missing_branches must be a list"),
        ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><coverage line-rate="1">&a;</coverage>', InputError,
         "DTD"),
        ("hello", InputError, "not coverage data"),
        ("", InputError, "empty file"),
    ],
)  # fmt: skip
def test_bad_inputs(tmp_path, content, error, message):
    (tmp_path / "input").write_text(content)
    with pytest.raises(error, match=message):
        read_inputs([Path("input")], root=tmp_path)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_inputs([Path("nope.json")], root=tmp_path)


def test_corrupt_sqlite(tmp_path):
    (tmp_path / ".coverage").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(InputError, match=r"cannot read coverage data|no coverage data"):
        read_inputs([Path(".coverage")], root=tmp_path)


def test_one_damaged_parallel_data_file_is_named_as_damaged(tmp_path, capfd):
    (tmp_path / ".coverage.ci").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(InputError, match=r"\.coverage\.ci: cannot read coverage data") as caught:
        read_inputs([Path(".coverage.ci")], root=tmp_path)
    assert "upload" not in str(caught.value.hint or "")  # not taken for a file never uploaded
    assert "Warning" not in capfd.readouterr().err  # no raw Python warning either


def test_missing_coverage_library_is_a_config_error(tmp_path, monkeypatch, measured: Measured):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "coverage" or name.startswith("coverage."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"needs coverage\.py"):
        read_inputs([measured.data], root=measured.root)


# -- coverage.py's own precision setting -----------------------------------------------------------
def test_coverage_precision_from_project_config(tmp_path, monkeypatch):
    monkeypatch.delenv("COVERAGE_RCFILE", raising=False)
    assert coverage_precision(tmp_path) == 0
    (tmp_path / "pyproject.toml").write_text("[tool.coverage.report]\nprecision = 2\n")
    assert coverage_precision(tmp_path) == 2
    (tmp_path / "setup.cfg").write_text("[coverage:report]\nprecision = 1\n")
    assert coverage_precision(tmp_path) == 1
    (tmp_path / "setup.cfg").write_text("[coverage:run]\nbranch = true\n")
    assert coverage_precision(tmp_path) == 0  # a setup.cfg with any coverage setting ends the search
    (tmp_path / ".coveragerc.toml").write_text("[report]\nprecision = 3\n")
    assert coverage_precision(tmp_path) == 3
    (tmp_path / ".coveragerc").write_text("[run]\nbranch = true\n")
    assert coverage_precision(tmp_path) == 0  # a .coveragerc wins, as in coverage.py
    (tmp_path / ".coveragerc").write_text("[coverage:report]\nprecision = 2\nbogus = 1\n")
    assert coverage_precision(tmp_path) == 2  # its sections may carry the prefix too
    (tmp_path / "ci.rc").write_text("[report]\nprecision = 1\n")
    monkeypatch.setenv("COVERAGE_RCFILE", "ci.rc")
    assert coverage_precision(tmp_path) == 1
    monkeypatch.setenv("COVERAGE_RCFILE", "missing.rc")
    with pytest.raises(ConfigError, match=r"missing\.rc"):
        coverage_precision(tmp_path)


@pytest.mark.parametrize("precision", [400, 11, -1])
def test_coverage_precision_outside_0_to_10_is_a_configuration_error_naming_the_file(
    tmp_path, monkeypatch, precision
):
    # voke.toml's own precision stops at 10; 400 from .coveragerc was an OverflowError (exit 70)
    monkeypatch.delenv("COVERAGE_RCFILE", raising=False)
    (tmp_path / ".coveragerc").write_text(f"[report]\nprecision = {precision}\n")
    message = f"({tmp_path / '.coveragerc'}): [report] precision = {precision} is outside 0..10"
    with pytest.raises(ConfigError, match=re.escape(message)):
        coverage_precision(tmp_path)
    (tmp_path / ".coveragerc").write_text("[report]\nprecision = 10\n")
    assert coverage_precision(tmp_path) == 10


def test_gate_uses_the_precision_coverage_py_reads(tmp_path, monkeypatch):
    # 79.5 % fails 80 at coverage.py's precision 2 ([coverage:report] in .coveragerc);
    # at precision 0 it would be shown as 80 and pass.
    monkeypatch.delenv("COVERAGE_RCFILE", raising=False)
    from voketag_ops.config import CoverageService, CoverageSettings
    from voketag_ops.workflows import coverage as wf

    summary = {"covered_lines": 795, "num_statements": 1000, "missing_lines": 205, "excluded_lines": 0,
               "percent_covered": 79.5}  # fmt: skip
    report = {
        "meta": {"format": 3, "version": "7.17.4", "branch_coverage": False, "show_contexts": False},
        "files": {
            "admin-service/app.py": {
                "executed_lines": list(range(1, 796)),
                "missing_lines": list(range(796, 1001)),
                "excluded_lines": [],
                "summary": summary,
            }
        },
        "totals": summary,
    }
    (tmp_path / "coverage.json").write_text(json.dumps(report))
    settings = CoverageSettings(services={"admin-service": CoverageService()}, target=80)
    assert wf.report(settings, [tmp_path / "coverage.json"], root=tmp_path).passed
    (tmp_path / ".coveragerc").write_text("[coverage:report]\nprecision = 2\n")
    result = wf.report(settings, [tmp_path / "coverage.json"], root=tmp_path)
    assert result.precision == 2 and not result.passed
