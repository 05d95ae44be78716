"""Coverage use cases on real files: diff coverage from a subdirectory, mixed inputs, history
across a change of branch measurement, step-summary truncation, annotation escaping."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voketag_ops.config import CoverageService, CoverageSettings, default_prefixes
from voketag_ops.core.coverage import Rule
from voketag_ops.coverage_testing import coverage, coverage_json, lines_file
from voketag_ops.errors import ConfigError, InputError, UsageError
from voketag_ops.workflows import coverage as wf

SETTINGS = CoverageSettings(
    services={"admin-service": CoverageService(paths=("admin_service/",), baseline=70.0)},
)
TWO_SERVICES = CoverageSettings(  # one CI job per service
    services={
        "admin-service": CoverageService(paths=("admin_service/",)),
        "factory-service": CoverageService(paths=("factory_service/",)),
    }
)


def history_line(statements: str = "10", **counts: int) -> str:
    """One history entry as `history add` writes it. STATEMENTS is the JSON text of that count,
    the last key of the totals: text after it ('10, "missing": 11') sets the counts before it."""
    totals = {"missing": 0, "branches": 0, "missing_branches": 0, "partial_branches": 0, "files": 1,
              **counts, "statements": 0}  # fmt: skip
    entry = {"at": "2026-01-01T00:00:00Z", "ref": None, "coverage_version": "7.17.4", "branch": False,
             "totals": totals, "services": {}}  # fmt: skip
    return json.dumps(entry).replace('"statements": 0', '"statements": ' + statements) + "\n"


def write(root: Path, name: str, files: dict, **kw) -> Path:
    path = root / name
    path.write_text(json.dumps(coverage_json(files, **kw)))
    return path


def test_resolve_rule_and_default_prefixes():
    assert wf.resolve_rule("auto", ["7.17.4"]) is Rule.COVERAGE
    assert wf.resolve_rule("auto", ["7.16.1", None]) is Rule.COVERAGE_716
    assert wf.resolve_rule("auto", []) is Rule.COVERAGE
    assert wf.resolve_rule("auto", ["7.10.0", "7.17.1"]) is Rule.COVERAGE
    assert wf.resolve_rule("auto", ["7.17.0"]) is Rule.COVERAGE_716  # the new rule came in 7.17.1
    assert wf.resolve_rule("auto", ["7.18"]) is Rule.COVERAGE
    assert wf.resolve_rule("strict", ["7.16.1"]) is Rule.STRICT
    assert default_prefixes("admin-service") == (
        "admin-service/",
        "admin_service/",
        "services/admin-service/",
        "src/admin_service/",
    )


def test_default_services_find_conventional_directories(tmp_path):
    files = {
        "admin_service/a.py": lines_file(7, 3),
        "services/factory-service/b.py": lines_file(1, 1),
        "src/blockchain_service/c.py": lines_file(1, 0),
    }
    write(tmp_path, "c.json", files)
    r = wf.report(CoverageSettings(), [Path("c.json")], root=tmp_path)
    assert [(s.name, s.files, s.baseline) for s in r.services] == [
        ("admin-service", 1, 70.0),
        ("factory-service", 1, 65.0),
        ("blockchain-service", 1, 60.0),
    ]
    assert r.totals.baseline == 68.0 and r.unassigned is None


def test_json_and_cobertura_of_the_same_run_combine_without_double_counting(tmp_path):
    # Cobertura with the same lines as the JSON: the union is the same file, counted once.
    write(tmp_path, "c.json", {"admin_service/a.py": {"executed": [1, 2], "missing": [3, 4]}})
    (tmp_path / "c.xml").write_text(
        f'<coverage line-rate="0.5" lines-valid="4" lines-covered="2"><sources><source>{tmp_path}</source>'
        '</sources><packages><package name="a"><classes><class name="a.py" filename="admin_service/a.py">'
        '<methods/><lines><line number="1" hits="1"/><line number="2" hits="0"/><line number="3" hits="1"/>'
        '<line number="4" hits="0"/></lines></class></classes></package></packages></coverage>'
    )
    r = wf.report(SETTINGS, [Path("c.json"), Path("c.xml")], root=tmp_path)
    assert (r.totals.statements, r.totals.missing, r.totals.files) == (4, 1, 1)
    assert [i.format for i in r.inputs] == ["json", "cobertura"]


def test_branch_and_statement_reports_refuse_to_combine(tmp_path):
    write(tmp_path, "b.json", {"admin_service/a.py": lines_file(1, 0)}, branch=True)
    write(tmp_path, "s.json", {"admin_service/a.py": lines_file(1, 0)})
    with pytest.raises(InputError, match=r"b\.json \(branch data\) with s\.json"):
        wf.report(SETTINGS, [Path("b.json"), Path("s.json")], root=tmp_path)


def test_a_service_without_files_is_a_config_error_naming_its_paths(tmp_path):
    write(tmp_path, "c.json", {"/ci/admin_service/a.py": lines_file(1, 0)})
    with pytest.raises(ConfigError, match="admin_service/") as err:
        wf.report(SETTINGS, [Path("c.json")], root=tmp_path)
    assert "/ci/admin_service/a.py" in err.value.message and "remap" in err.value.hint
    ok = wf.report(SETTINGS, [Path("c.json")], root=tmp_path, options=wf.Options(remap=(("/ci/", ""),)))
    assert ok.services[0].files == 1


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root, check=True,
                   capture_output=True)  # fmt: skip


def test_diff_from_a_subdirectory_of_the_repository(tmp_path):
    repo = tmp_path / "repo"
    proj = repo / "services" / "admin"
    (proj / "admin_service").mkdir(parents=True)
    (proj / "admin_service" / "__init__.py").write_text("")
    (proj / "admin_service" / "m.py").write_text("def f():\n    return 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    (proj / "admin_service" / "m.py").write_text(
        "def f():\n    return 1\n\n\ndef g(x):\n    if x:\n        return 2\n    return 3\n"
    )
    (proj / "run.py").write_text("from admin_service.m import g\ng(1)\n")
    coverage(proj, "run", "--source=admin_service", "run.py")
    coverage(proj, "xml", "-q", "-o", "coverage.xml")  # absolute <source>, relative filenames
    out = []
    r = wf.diff(SETTINGS, [Path("coverage.xml")], root=proj, base="main", annotations=True, emit=out.append)
    assert (r.measured, r.covered) == (4, 3)
    assert r.files[0].path == "services/admin/admin_service/m.py"  # repository-relative, as GitHub wants
    assert out == [
        "::warning file=services/admin/admin_service/m.py,line=8,endLine=8,title=Uncovered change::"
        "Line 8 is changed but not covered by tests"
    ]
    git(repo, "config", "diff.relative", "true")  # git would name paths from the subdirectory
    r = wf.diff(SETTINGS, [Path("coverage.xml")], root=proj, base="main")
    assert (r.measured, r.covered) == (4, 3)
    git(repo, "config", "--unset", "diff.relative")
    # The same change saved as a diff file: from the repository's top (what `git diff` writes,
    # wherever it runs), relative to the project, and with diff.mnemonicPrefix's i/ and w/.
    saved = {
        "top.diff": ["diff"],
        "relative.diff": ["diff", "--relative"],
        "mnemonic.diff": ["-c", "diff.mnemonicPrefix=true", "diff"],
    }
    for name, args in saved.items():
        text = subprocess.run(
            ["git", *args, "main"], cwd=proj, capture_output=True, text=True, check=True
        ).stdout
        (tmp_path / name).write_text(text)
        notes: list[str] = []
        r = wf.diff(SETTINGS, [Path("coverage.xml")], root=proj, base=None, diff_file=tmp_path / name,
                    annotations=True, emit=notes.append)  # fmt: skip
        assert (r.measured, r.covered) == (4, 3), name
        assert notes == out, name  # the annotation's path from the repository's top, whichever diff


def test_diff_without_a_merge_base_says_to_fetch_the_history_of_a_shallow_clone(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "m.py").write_text("X = 1\n")
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "one")
    git(origin, "commit", "-q", "--allow-empty", "-m", "two")
    git(origin, "checkout", "-q", "-b", "feature")
    (origin / "m.py").write_text("X = 2\n")
    git(origin, "commit", "-q", "-am", "three")
    clone = tmp_path / "clone"  # actions/checkout's default: depth 1, and main fetched as deep
    git(tmp_path, "clone", "-q", "--depth", "1", "--branch", "feature", origin.as_uri(), "clone")
    git(clone, "fetch", "-q", "--depth", "1", "origin", "main:refs/remotes/origin/main")
    write(clone, "c.json", {"m.py": lines_file(1, 0)})
    with pytest.raises(
        UsageError, match="no merge base of 'origin/main' and HEAD in this shallow clone"
    ) as err:
        wf.diff(SETTINGS, [Path("c.json")], root=clone, base="origin/main")
    assert "git fetch --unshallow" in (err.value.hint or "") and "fetch-depth: 0" in (err.value.hint or "")
    git(clone, "fetch", "-q", "--unshallow")
    assert wf.diff(SETTINGS, [Path("c.json")], root=clone, base="origin/main").measured == 1
    git(clone, "checkout", "-q", "--orphan", "other")  # a complete history that never met main
    git(clone, "commit", "-q", "-m", "unrelated")
    with pytest.raises(UsageError, match="'origin/main' and HEAD share no history"):
        wf.diff(SETTINGS, [Path("c.json")], root=clone, base="origin/main")


def test_diff_places_a_relative_path_only_where_its_file_is_or_the_diff_names_it(tmp_path):
    # A monorepo's CI runs voke at the top on the coverage.json its sub-project wrote: the data's
    # admin_service/m.py is platform/admin_service/m.py there, and n/a passed any --fail-under.
    repo = tmp_path / "repo"
    proj = repo / "platform"
    pkg = proj / "admin_service"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text("def f():\n    return 1\n")
    (pkg / "old.py").write_text("X = 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    (pkg / "m.py").write_text(
        "def f():\n    return 1\n\n\ndef g(x):\n    if x:\n        return 2\n    return 3\n"
    )
    (pkg / "new.py").write_text("Y = 2\n")
    (proj / "run.py").write_text(
        "import admin_service.old, admin_service.new\nfrom admin_service.m import g\ng(1)\n"
    )
    coverage(proj, "run", "--source=admin_service", "run.py")
    coverage(proj, "json", "-q")
    git(repo, "add", "-N", ".")
    (tmp_path / "top.diff").write_text(
        subprocess.run(["git", "diff", "main"], cwd=repo, capture_output=True, text=True, check=True).stdout
    )
    gate = wf.Options(fail_under=90)
    data = [Path("platform/coverage.json")]
    for how in ({"base": "main"}, {"base": None, "diff_file": tmp_path / "top.diff"}):
        with pytest.raises(ConfigError, match="no file of the coverage data lies in the") as err:
            wf.diff(SETTINGS, data, root=repo, options=gate, **how)  # type: ignore[arg-type]
        assert "admin_service/m.py" in str(err.value) and "run voke where" in (err.value.hint or "")
        mapped = replace(gate, remap=(("admin_service/", "platform/admin_service/"),))
        r = wf.diff(SETTINGS, data, root=repo, options=mapped, **how)  # type: ignore[arg-type]
        assert (r.measured, r.covered, r.passed) == (5, 4, False)
    # From the sub-project: old.py, deleted since it was measured, is named, not judged; new.py,
    # which this checkout lacks, is judged where the diff names it.
    (pkg / "old.py").unlink()
    (pkg / "new.py").unlink()
    r = wf.diff(
        SETTINGS, [Path("coverage.json")], root=proj, base=None, diff_file=tmp_path / "top.diff", options=gate
    )
    assert (r.measured, r.covered) == (5, 4)
    assert {f.path for f in r.files} == {"platform/admin_service/m.py", "platform/admin_service/new.py"}
    (warning,) = r.warnings
    assert warning.startswith(
        "not judged: 1 file of the coverage data not found in the project (deleted since"
    )
    assert warning.endswith(": admin_service/old.py")


def test_annotation_values_are_escaped():
    line = wf.github_annotation("dir,with:odd%name.py", 3, 3)
    assert line.startswith("::warning file=dir%2Cwith%3Aodd%25name.py,line=3,endLine=3,")


def test_step_summary_rows_are_cut_to_fit(tmp_path):
    md = wf._Markdown(head=["# h"], rows=[f"| row {i} | {'x' * 100} |" for i in range(100)], tail=["end"])
    text = md.fit(3000)
    assert len(text.encode()) <= 3000
    assert "more rows not shown" in text and text.rstrip().endswith("end")
    assert md.fit(100) == ""  # not even the heading fits: write nothing


def test_history_notes_a_change_of_branch_measurement(tmp_path):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    write(tmp_path, "s.json", {"admin_service/a.py": lines_file(60, 40)})
    write(tmp_path, "b.json", {"admin_service/a.py": {**lines_file(70, 30), "executed_branches": [[1, 2], [1, 3]]}},
          branch=True)  # fmt: skip
    for name in ("s.json", "s.json", "b.json"):
        wf.history_add(SETTINGS, [Path(name)], root=tmp_path, now=now)
    shown = wf.history_show(SETTINGS, root=tmp_path)
    assert shown.entries == 3
    assert any("branch measurement started" in n for n in shown.notes)
    admin = next(t for t in shown.series if t.name == "admin-service")
    assert admin.change is None  # the only comparable run is the last one
    entry = json.loads((tmp_path / ".voke" / "coverage-history.jsonl").read_text().splitlines()[-1])
    assert entry["branch"] is True and entry["coverage_version"] == "7.17.4"
    assert entry["services"]["admin-service"]["branches"] == 2


def test_history_add_keeps_a_last_line_saved_without_its_line_break(tmp_path):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    write(tmp_path, "s.json", {"admin_service/a.py": lines_file(60, 40)})
    wf.history_add(SETTINGS, [Path("s.json")], root=tmp_path, now=now, file=Path("h.jsonl"))
    history = tmp_path / "h.jsonl"
    history.write_text(history.read_text().rstrip("\n"))  # an editor saved it so
    wf.history_add(SETTINGS, [Path("s.json")], root=tmp_path, now=now, file=Path("h.jsonl"))
    assert len(wf.read_history(history)) == 2


def test_a_history_add_the_disk_has_no_room_for_does_not_cut_off_another_jobs_line(tmp_path, monkeypatch):
    # Its cut-back went to the size it measured: a line another CI job appended in between was
    # erased with the torn one. The append now holds the file's lock from the size to the cut.
    import errno
    import fcntl
    import os
    import threading

    from voketag_ops import files

    now = datetime(2026, 1, 1, tzinfo=UTC)
    write(tmp_path, "a.json", {"admin_service/a.py": lines_file(60, 40)})
    write(tmp_path, "b.json", {"admin_service/a.py": lines_file(90, 10)})
    history = tmp_path / "h.jsonl"

    def add(name, ref):
        return wf.history_add(SETTINGS, [Path(name)], root=tmp_path, now=now, file=Path("h.jsonl"), ref=ref)

    add("a.json", "first")
    before = history.read_bytes()
    other_job = threading.Thread(target=add, args=("b.json", "other-job"))
    waiting_or_done = threading.Event()  # the other job waits for the lock, or has appended
    flock, write_all = fcntl.flock, files.write_all

    def signalling_flock(fd, operation):
        if threading.current_thread() is other_job:
            waiting_or_done.set()
        return flock(fd, operation)

    def other_job_then_full(fd, data):
        if threading.current_thread() is other_job:
            write_all(fd, data)
            waiting_or_done.set()
            return
        other_job.start()  # after this job measured the size, before it writes
        waiting_or_done.wait()
        os.write(fd, data[:40])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fcntl, "flock", signalling_flock)
    monkeypatch.setattr(files, "write_all", other_job_then_full)
    with pytest.raises(OSError, match="No space left on device"):
        add("a.json", "full")
    other_job.join()
    assert history.read_bytes().startswith(before)
    assert [e["ref"] for e in wf.read_history(history)] == ["first", "other-job"]


def test_history_add_rerun_for_the_same_ref_replaces_its_entry(tmp_path):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    write(tmp_path, "a.json", {"admin_service/a.py": lines_file(70, 30)})
    write(tmp_path, "b.json", {"admin_service/a.py": lines_file(80, 20)})
    add = lambda name, ref: wf.history_add(  # noqa: E731
        SETTINGS, [Path(name)], root=tmp_path, now=now, file=Path("h.jsonl"), ref=ref
    )
    add("a.json", "A")
    first = add("b.json", "B")
    again = add("b.json", "B")  # the CI job run again on commit B
    assert (first.replaced, again.replaced, again.entries) == (False, True, 2)
    assert [e["ref"] for e in wf.read_history(tmp_path / "h.jsonl")] == ["A", "B"]
    overall = next(t for t in wf.history_show(SETTINGS, root=tmp_path, file=Path("h.jsonl")).series)
    assert overall.change == 10.0  # not +0 against a copy of itself
    write(tmp_path, "f.json", {"factory_service/f.py": lines_file(5, 5)})
    assert add("f.json", "B").replaced is False  # another service's data under the same ref: kept
    assert [sorted(e["services"]) for e in wf.read_history(tmp_path / "h.jsonl")][-2:] == [
        ["admin-service"],
        ["unassigned"],
    ]
    assert add("f.json", None).replaced is False  # without a ref, every run is its own


def test_history_of_one_job_per_service_keeps_the_overall_trend_and_replaces_each_rerun(tmp_path):
    settings = TWO_SERVICES
    now = datetime(2026, 1, 1, tzinfo=UTC)
    write(
        tmp_path,
        "all.json",
        {"admin_service/a.py": lines_file(50, 50), "factory_service/f.py": lines_file(50, 50)},
    )
    write(tmp_path, "a.json", {"admin_service/a.py": lines_file(90, 10)})
    write(tmp_path, "f.json", {"factory_service/f.py": lines_file(10, 90)})

    def add(name, ref, *services):
        return wf.history_add(settings, [Path(name)], root=tmp_path, now=now, file=Path("h.jsonl"), ref=ref,
                              options=wf.Options(services=services))  # fmt: skip

    add("all.json", "A")
    add("a.json", "B", "admin-service")
    add("f.json", "B", "factory-service")
    again = add("a.json", "B", "admin-service")  # the admin job run again on B: not the last entry
    assert again.replaced is True and again.entries == 3
    series = {t.name: t for t in wf.history_show(settings, root=tmp_path, file=Path("h.jsonl")).series}
    assert series["admin-service"].change == 40.0  # 50 -> 90, not +0 against a copy of itself
    # a per-service job's totals are its service's, not the repository's: no overall point
    assert [p.percent for p in series["overall"].points] == [50.0, None, None]


def test_per_service_jobs_measuring_everything_record_and_compare_their_own_service(tmp_path):
    # Each job measures with `source = .`: its data lists the other service's files, unrun.
    settings = TWO_SERVICES
    now = datetime(2026, 1, 1, tzinfo=UTC)
    write(
        tmp_path,
        "a.json",
        {"admin_service/a.py": lines_file(90, 10), "factory_service/f.py": lines_file(0, 100)},
    )
    write(
        tmp_path,
        "f.json",
        {"admin_service/a.py": lines_file(0, 100), "factory_service/f.py": lines_file(60, 40)},
    )
    for name, service in (("a.json", "admin-service"), ("f.json", "factory-service")):
        added = wf.history_add(settings, [Path(name)], root=tmp_path, now=now, file=Path("h.jsonl"), ref="B",
                               options=wf.Options(services=(service,)))  # fmt: skip
        assert added.replaced is False and list(added.entry["services"]) == [service]
    entries = wf.read_history(tmp_path / "h.jsonl")
    assert [(e["totals"]["statements"], e["totals"]["missing"]) for e in entries] == [(100, 10), (100, 40)]
    series = {t.name: t for t in wf.history_show(settings, root=tmp_path, file=Path("h.jsonl")).series}
    assert (series["admin-service"].latest, series["factory-service"].latest) == (90.0, 60.0)
    # A report against that run: each service's baseline from its job's entry, no overall one
    write(
        tmp_path,
        "all.json",
        {"admin_service/a.py": lines_file(95, 5), "factory_service/f.py": lines_file(70, 30)},
    )
    r = wf.report(
        settings, [Path("all.json")], root=tmp_path, options=wf.Options(baseline_from=Path("h.jsonl"))
    )
    assert {s.name: s.baseline for s in r.services} == {"admin-service": 90.0, "factory-service": 60.0}
    assert r.totals.baseline is None


def test_history_show_judges_at_coverage_pys_own_precision(tmp_path):
    (tmp_path / ".coveragerc").write_text("[report]\nprecision = 2\n")
    write(tmp_path, "a.json", {"admin_service/a.py": lines_file(795, 205)})
    wf.history_add(SETTINGS, [Path("a.json")], root=tmp_path, now=datetime(2026, 1, 1, tzinfo=UTC))
    shown = wf.history_show(SETTINGS, root=tmp_path)
    overall = shown.series[0]
    assert shown.precision == 2 and overall.latest_display == "79.50" and overall.passed is False


def test_history_chart_legend_shows_the_latest_value_as_the_table_does(tmp_path):
    (tmp_path / "h.jsonl").write_text(history_line("20000", missing=1))
    shown = wf.history_show(SETTINGS, root=tmp_path, file=Path("h.jsonl"), precision=1, out=Path("h.svg"))
    assert shown.series[0].latest_display == "99.9"
    assert "overall 99.9%" in (tmp_path / "h.svg").read_text()  # not 100.0 %, which it is not


def test_history_rejects_a_damaged_file(tmp_path):
    (tmp_path / "h.jsonl").write_text(history_line() + "not json\n")
    with pytest.raises(InputError, match=r"h\.jsonl:2:1: not a voke coverage history entry \(not JSON"):
        wf.history_show(SETTINGS, root=tmp_path, file=Path("h.jsonl"))


@pytest.mark.parametrize(
    "value",
    [
        "1e400",
        "-1e400",
        "NaN",
        "-5",
        "12.5",
        '"12"',
        '10, "missing": 11',
        '10, "branches": 2, "missing_branches": 3',
        '10, "partial_branches": 3',
    ],
)
def test_history_with_a_count_that_is_no_count_is_refused_with_its_line(tmp_path, value):
    path = tmp_path / "h.jsonl"
    path.write_text(history_line() + history_line(value))
    with pytest.raises(InputError, match=r"h\.jsonl:2: not a voke coverage history entry"):
        wf.read_history(path)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"at": ...}, "at must be an ISO 8601 UTC time"),  # ...: the key left out
        ({"at": "None"}, "at must be an ISO 8601 UTC time"),
        ({"at": "2026-01-01T00:00:00+02:00"}, "at must be an ISO 8601 UTC time"),
        ({"at": "2026-13-01T00:00:00Z"}, "at must be an ISO 8601 UTC time"),
        ({"at": 1767225600}, "at must be an ISO 8601 UTC time"),
        ({"ref": 7}, "ref must be a string or null"),
        ({"coverage_version": ["7"]}, "coverage_version must be a string or null"),
        ({"ref": ...}, "ref must be a string or null"),
        ({"branch": ...}, "branch must be true or false"),
        ({"branch": None}, "branch must be true or false"),
        ({"partial": "yes"}, "partial must be true or false"),
        ({"services": []}, "services must be an object"),
        ({"totals": ...}, "counts must be an object"),
        ({"services": {"admin-service": {"statements": 1}}}, "counts have no missing"),
        ({"totals": {"statements": 1, "missing": 0}}, "counts have no branches"),
    ],
)
def test_history_entry_not_as_history_add_writes_it_is_refused_with_its_line(tmp_path, change, reason):
    entry = {k: v for k, v in {**json.loads(history_line()), **change}.items() if v is not ...}
    path = tmp_path / "h.jsonl"
    path.write_text(history_line() + json.dumps(entry) + "\n")
    with pytest.raises(
        InputError, match=r"h\.jsonl:2: not a voke coverage history entry \(" + re.escape(reason)
    ):
        wf.read_history(path)


@pytest.mark.parametrize("indent", [None, 2])  # `coverage json`, `coverage json --pretty-print`
def test_a_coverage_report_given_as_the_history_is_named_and_left_as_it_was(tmp_path, indent):
    report = tmp_path / "coverage.json"
    report.write_text(json.dumps(coverage_json({"admin_service/a.py": lines_file(60, 40)}), indent=indent))
    before = report.read_bytes()
    refused = "coverage.json: a coverage.py JSON report, not a voke coverage history file"
    with pytest.raises(InputError, match=refused):  # it appended an entry line to the report
        wf.history_add(SETTINGS, [Path("coverage.json")], root=tmp_path, now=datetime(2026, 1, 1, tzinfo=UTC),
                       file=Path("coverage.json"))  # fmt: skip
    assert report.read_bytes() == before
    with pytest.raises(InputError, match=refused):  # it showed the report as a run at "None"
        wf.history_show(SETTINGS, root=tmp_path, file=Path("coverage.json"))
    with pytest.raises(InputError, match=refused):
        wf.report(SETTINGS, [report], root=tmp_path, options=wf.Options(baseline_from=Path("coverage.json")))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.xml", '<coverage lines-valid="1000" lines-covered="100" version="7"><packages/></coverage>'),
        ("c.json", '{"meta": {"format": 3, "version": "7.17.4"}, "files": {}, "totals": {}}'),
    ],
)
def test_data_that_measures_no_file_is_no_data_not_100_percent(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match="no data to report"):
        wf.report(CoverageSettings(services={}), [tmp_path / name], root=tmp_path)


def test_a_service_gate_judges_that_service_alone(tmp_path):
    settings = CoverageSettings(
        services={"admin-service": CoverageService(), "factory-service": CoverageService()}
    )
    path = write(
        tmp_path,
        "c.json",
        {"admin_service/a.py": lines_file(92, 8), "factory_service/b.py": lines_file(10, 90)},
    )
    one = wf.report(
        settings, [path], root=tmp_path, options=wf.Options(services=("admin-service",), fail_under=85)
    )
    assert one.passed and [s.name for s in one.services] == ["admin-service"]
    assert one.totals.target is None and one.totals.passed is None  # shown, not gated
    both = wf.report(settings, [path], root=tmp_path, options=wf.Options(fail_under=85))
    assert not both.passed


# -- reading only the end of a history -------------------------------------------------------------
def _run(ref: str | None, services: tuple[str, ...], statements: int, partial: bool) -> dict:
    counts = {"statements": statements, "missing": 1, "branches": 0, "missing_branches": 0,
              "partial_branches": 0, "files": 1}  # fmt: skip
    entry = {"at": "2026-01-01T00:00:00Z", "ref": ref, "coverage_version": "7.17.4", "branch": False,
             "totals": counts, "services": dict.fromkeys(services, counts)}  # fmt: skip
    return {**entry, "partial": True} if partial else entry


_runs = st.lists(
    st.builds(
        _run,
        st.sampled_from([None, "", "A", "B"]),
        st.sampled_from([(), ("admin-service",), ("factory-service",), ("admin-service", "factory-service")]),
        st.integers(2, 9),
        st.booleans(),
    ),
    max_size=8,
)


def _history(path: Path, runs: list[dict], blanks: list[int], newline: bool) -> None:
    lines = [json.dumps(e, sort_keys=True) for e in runs]
    for at in blanks:
        lines.insert(min(at, len(lines)), "  ")
    path.write_text("\n".join(lines) + ("\n" if newline and lines else ""))


@settings(max_examples=150, deadline=None)
@given(
    runs=_runs,
    blanks=st.lists(st.integers(0, 8), max_size=2),
    newline=st.booleans(),
    ref=st.sampled_from([None, "A", "B"]),
    job=st.sampled_from(["a.json", "ab.json"]),
)
def test_history_add_read_from_the_end_does_what_reading_it_whole_did(
    tmp_path_factory, runs, blanks, newline, ref, job
):
    tmp = tmp_path_factory.mktemp("h")
    write(tmp, "a.json", {"admin_service/a.py": lines_file(7, 3)})
    write(tmp, "ab.json", {"admin_service/a.py": lines_file(7, 3), "factory_service/f.py": lines_file(1, 1)})
    path = tmp / "h.jsonl"
    _history(path, runs, blanks, newline)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    added = wf.history_add(SETTINGS, [Path(job)], root=tmp, now=now, file=Path("h.jsonl"), ref=ref)
    # what `history add` did when it read the history whole
    expected, same = list(runs), None
    if ref:
        for index in range(len(runs) - 1, -1, -1):
            if runs[index].get("ref") != ref:
                break
            if set(runs[index]["services"]) == set(added.entry["services"]):
                same = index
                break
    if same is None:
        expected.append(added.entry)
    else:
        expected[same] = added.entry
    assert (added.replaced, added.entries) == (same is not None, len(expected))
    assert wf.read_history(path) == expected


@settings(max_examples=150, deadline=None)
@given(
    runs=_runs, blanks=st.lists(st.integers(0, 8), max_size=2), newline=st.booleans(), last=st.integers(0, 9)
)
def test_baseline_and_show_last_read_from_the_end_see_what_reading_it_whole_did(
    tmp_path_factory, runs, blanks, newline, last
):
    tmp = tmp_path_factory.mktemp("h")
    write(tmp, "ab.json", {"admin_service/a.py": lines_file(7, 3), "factory_service/f.py": lines_file(1, 1)})
    _history(tmp / "h.jsonl", runs, blanks, newline)
    # --last N: as `history show` of a history holding only the last N runs
    (tmp / "only.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (runs[-last:] if last else [])))
    shown = replace(wf.history_show(SETTINGS, root=tmp, file=Path("h.jsonl"), last=last), file="")
    assert shown == replace(wf.history_show(SETTINGS, root=tmp, file=Path("only.jsonl")), file="")
    if not runs:
        with pytest.raises(InputError, match="the history is empty"):
            wf.report(
                SETTINGS, [Path("ab.json")], root=tmp, options=wf.Options(baseline_from=Path("h.jsonl"))
            )
        return
    r = wf.report(SETTINGS, [Path("ab.json")], root=tmp, options=wf.Options(baseline_from=Path("h.jsonl")))
    # the last run as reading it whole found it: the entries of the last one's ref at the end
    run = [runs[-1]]
    if runs[-1]["ref"]:
        for e in reversed(runs[:-1]):
            if e["ref"] != runs[-1]["ref"]:
                break
            run.append(e)
    pct = lambda c: 100 * (c["statements"] - c["missing"]) / c["statements"]  # noqa: E731
    for service in r.services:
        found = next((e["services"][service.name] for e in run if service.name in e["services"]), None)
        assert service.baseline == (None if found is None else pct(found))
    whole = next((e for e in run if not e.get("partial")), None)
    assert r.totals.baseline == (None if whole is None else pct(whole["totals"]))


def test_a_ci_job_reads_only_the_end_of_a_long_history(tmp_path, monkeypatch):
    """`history add`, --baseline-from and `show --last` parse the last run, not years of them:
    the lines checked are counted (and the bytes read, where no run is counted)."""
    write(tmp_path, "a.json", {"admin_service/a.py": lines_file(7, 3)})
    path = tmp_path / "h.jsonl"
    runs = [_run(f"{i:040x}", ("admin-service",), 10, False) for i in range(5000)]
    _history(path, runs, [], True)
    size = path.stat().st_size
    checked, read = [], []
    entry, pread = wf._entry, os.pread
    monkeypatch.setattr(wf, "_entry", lambda line: checked.append(line) or entry(line))
    monkeypatch.setattr(os, "pread", lambda fd, n, at: read.append(n) or pread(fd, n, at))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    added = wf.history_add(
        SETTINGS, [Path("a.json")], root=tmp_path, now=now, file=Path("h.jsonl"), ref="f" * 40
    )
    assert added.entries == 5001 and len(checked) == 1  # the last run's, another ref: appended
    again = wf.history_add(
        SETTINGS, [Path("a.json")], root=tmp_path, now=now, file=Path("h.jsonl"), ref="f" * 40
    )
    assert again.replaced and again.entries == 5001 and len(checked) == 2
    assert wf.read_history(path)[:-1] == runs  # (the lines before it copied as they were)
    checked.clear(), read.clear()
    r = wf.report(
        SETTINGS, [Path("a.json")], root=tmp_path, options=wf.Options(baseline_from=Path("h.jsonl"))
    )
    assert r.services[0].baseline == 70.0 and len(checked) == 2  # the run, and the one before it
    assert sum(read) < 2 * 64 * 1024 < size
    checked.clear(), read.clear()
    assert wf.history_show(SETTINGS, root=tmp_path, file=Path("h.jsonl"), last=3).entries == 3
    assert len(checked) == 3 and sum(read) < 2 * 64 * 1024


def test_a_damaged_line_in_the_part_read_is_named_by_its_line_number(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(history_line() * 3 + "  \n" + '{"at": \n' + history_line())
    with pytest.raises(InputError, match=r"h\.jsonl:5:8: not a voke coverage history entry \(not JSON"):
        wf.history_show(SETTINGS, root=tmp_path, file=Path("h.jsonl"), last=2)
    path.write_bytes(history_line().encode() * 2 + b'{"ref": "\xff"}\n')
    at = 2 * len(history_line()) + len('{"ref": "')  # counted from the start of the file
    with pytest.raises(
        InputError, match=f"can't decode byte 0xff in position {at}: invalid start byte"
    ) as whole:
        wf.read_history(path)
    with pytest.raises(InputError) as tail:
        wf.history_show(SETTINGS, root=tmp_path, file=Path("h.jsonl"), last=1)
    assert str(tail.value) == str(whole.value)
