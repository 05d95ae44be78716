"""`voke coverage` end to end: exit codes, the JSON envelope, stderr messages, files written."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from voketag_ops import files
from voketag_ops.coverage_testing import (
    SOURCE_ARG,
    Measured,
    coverage,
    coverage_json,
    lines_file,
    measured_once,
    write_project,
)
from voketag_ops.testing.imports import loaded_of

TWO_SERVICES = """
[coverage]
target = 80
baseline = 50
[coverage.services.admin-service]
paths = ["admin_service/"]
baseline = 70
[coverage.services.factory-service]
paths = ["factory_service/"]
baseline = 65
"""


@pytest.fixture
def measured(tmp_path_factory: pytest.TempPathFactory) -> Measured:
    return measured_once(lambda: tmp_path_factory.mktemp("measured"))


@pytest.fixture
def env(make_environ, tmp_path):
    """A clean environment without GitHub Actions variables leaking in from a CI runner."""
    base = make_environ(tmp_path / "home")
    return {k: v for k, v in base.items() if not k.startswith("GITHUB_")}


@pytest.fixture
def project(tmp_path):
    """A working directory with a two-service voke.toml."""
    root = tmp_path / "work"
    root.mkdir()
    (root / "voke.toml").write_text(TWO_SERVICES)
    return root


def write_json(root: Path, files: dict, name: str = "coverage.json", **kw) -> Path:
    path = root / name
    path.write_text(json.dumps(coverage_json(files, **kw)))
    return path


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


# -- report: parity with coverage.py on real data ---------------------------------------------------
def test_report_matches_coverage_on_a_real_project(voke, env, measured: Measured, tmp_path):
    (tmp_path / "cfg.toml").write_text(TWO_SERVICES)
    for source in (measured.json, measured.xml, measured.data):
        r = voke(
            "coverage", "report", str(source), "--json", "--precision", "3",
            "--config", str(tmp_path / "cfg.toml"), environ=env, cwd=measured.root,
        )  # fmt: skip
        assert r.exit_code == 0, r.stderr
        doc = r.json
        assert doc["ok"] is True and doc["command"] == "coverage report"
        totals = doc["result"]["totals"]
        assert totals["percent"] == measured.totals["percent_covered"]
        assert totals["display"] == measured.report_total  # `coverage report --precision=3`
        assert (totals["statements"], totals["covered"], totals["branches"], totals["covered_branches"]) == (
            measured.totals["num_statements"],
            measured.totals["covered_lines"],
            measured.totals["num_branches"],
            measured.totals["covered_branches"],
        )
        names = [s["name"] for s in doc["result"]["services"]]
        assert names == ["admin-service", "factory-service"]
        assert doc["result"]["unassigned"]["files"] == 2  # tools/ is counted in the total, with a warning
        assert "match no service" in r.stderr


def test_report_human_table(voke, env, project):
    write_json(
        project, {"admin_service/a.py": lines_file(90, 10), "factory_service/b.py": lines_file(70, 30)}
    )
    r = voke("coverage", "report", "coverage.json", environ=env, cwd=project)
    assert r.exit_code == 0
    assert re.search(r"admin-service\s+1\s+100\s+10\s+90%\s+80\s+70\s+\+20\s+pass", r.stdout)
    assert "factory-service" in r.stdout and "FAIL" in r.stdout
    assert "cover 10 more statements" in r.stdout  # 70 -> 80 of 100


@pytest.mark.parametrize("branch", [False, True])
def test_report_on_an_80_column_terminal_keeps_service_names_and_cover_whole(
    env, project, monkeypatch, branch
):
    import io

    from voketag_ops.cli.app import run

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    admin = lines_file(90, 10) | (
        {"executed_branches": [[1, 2], [3, 4]], "missing_branches": [[5, 6]]} if branch else {}
    )
    write_json(
        project, {"admin_service/a.py": admin, "factory_service/b.py": lines_file(70, 30)}, branch=branch
    )
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    assert (
        run(["coverage", "report", "coverage.json"], stdout=out, stderr=Terminal(), environ=env, cwd=project)
        == 0
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert max(len(line) for line in text.splitlines()) <= 80
    for name, cover in (
        ("admin-service", "89%" if branch else "90%"),
        ("factory-service", "70%"),
        ("overall", "80%"),
    ):
        assert re.search(rf"^ *{name} .* {cover} ", text, re.M), text
    assert ("brm" in text) is branch  # no empty branch columns without branch data (brmiss, brmi…)


@pytest.mark.parametrize("columns", [60, 50, 40])
def test_report_on_a_narrow_terminal_drops_baseline_first_then_prints_one_value_a_line(
    env, project, monkeypatch, columns
):
    import io

    from voketag_ops.cli.app import run

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    write_json(
        project, {"admin_service/a.py": lines_file(90, 10), "factory_service/b.py": lines_file(70, 30)}
    )
    monkeypatch.setenv("COLUMNS", str(columns))
    out = Terminal()
    run(["coverage", "report", "coverage.json"], stdout=out, stderr=Terminal(), environ=env, cwd=project)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert max(len(line) for line in text.splitlines()) <= columns
    assert "…" not in text  # no value nor header cut
    if columns == 60:  # baseline and Δ went first, so that the rest stays a table, whole
        assert "baseline" not in text and "Δ" not in text
        for name, cover, status in (("admin-service", "90%", "pass"), ("factory-service", "70%", "FAIL")):
            assert re.search(rf"^ *{name} .* {cover} .*{status} *$", text, re.M), text
        assert re.search(r"^ *overall .* 200 .* 80% .* 80 .*pass *$", text, re.M), text
    else:  # no table fits whole: each service, then its values one a line
        factory = text[text.index("\nfactory-service\n") :]
        for line in ("stmts: 100", "miss: 30", "cover: 70%", "target: 80", "baseline: 65", "FAIL"):
            assert re.search(rf"^  {re.escape(line)}$", factory, re.M), text


# -- the gate -------------------------------------------------------------------------------------
def test_gate_passes_79_5_by_rounding_and_strict_fails_it(voke, env, project):
    write_json(
        project, {"admin_service/a.py": lines_file(795, 205), "factory_service/b.py": lines_file(1, 0)}
    )
    r = voke("coverage", "gate", "coverage.json", "--service", "admin-service", environ=env, cwd=project)
    assert r.exit_code == 0, r.stderr
    assert "admin-service: 80% passes 80 by rounding (exact 79.50%" in r.stdout
    strict = voke(
        "coverage",
        "gate",
        "coverage.json",
        "-s",
        "admin-service",
        "--strict",
        "--json",
        environ=env,
        cwd=project,
    )
    assert strict.exit_code == 1
    doc = strict.json
    assert doc["ok"] is False and doc["error"]["exit_code"] == 1
    assert "admin-service" in doc["error"]["message"]
    admin = doc["result"]["services"][0]
    assert admin["passed"] is False and admin["lines_needed"] == 5 and doc["result"]["rule"] == "strict"


def test_gate_80_5_fails_81(voke, env, project):
    write_json(
        project, {"admin_service/a.py": lines_file(805, 195), "factory_service/b.py": lines_file(1, 0)}
    )
    r = voke("coverage", "gate", "coverage.json", "--fail-under", "81", environ=env, cwd=project)
    assert r.exit_code == 1
    assert (
        "admin-service: 80% fails target 81: 80% < 81; cover 1 more statement\n" in r.stdout
    )  # 80.6 rounds to 81
    assert r.stderr.strip().splitlines()[-1].startswith("✗ coverage gate failed: admin-service")


OLD_JSON = Path(__file__).parents[1] / "adapters" / "old_coverage_json"


def test_gate_on_old_coverage_json_judges_coverage_py_s_own_numbers(voke, env, project):
    # coverage.py 7.10.7's `coverage report`: admin 73.684 %, factory 87.500 %, TOTAL 80.000 %
    # (25 statements); from its lists voke counted 28 statements and 81.579 %, and passed 81.
    r = voke("coverage", "gate", str(OLD_JSON / "7.10.7.json"), "--fail-under", "81", "--precision", "3",
             "--json", environ=env, cwd=project)  # fmt: skip
    assert r.exit_code == 1, r.stdout + r.stderr
    res = r.json["result"]
    assert (res["totals"]["statements"], res["totals"]["display"]) == (25, "80.000")
    assert [(s["name"], s["display"]) for s in res["services"]] == [
        ("admin-service", "73.684"),
        ("factory-service", "87.500"),
    ]


def test_two_old_coverage_json_that_cannot_be_combined_exactly_are_refused(voke, env, project):
    first, second = OLD_JSON / "7.5.4.json", OLD_JSON / "7.5.4-second-run.json"
    r = voke("coverage", "gate", str(first), str(second), environ=env, cwd=project)
    assert r.exit_code == 1 and r.stdout == ""
    no_traceback(r)
    assert r.stderr.splitlines()[0] == (
        f"error: factory_service/batch.py is in several inputs ({first}, {second}), and {first} "
        "(coverage.py 7.5.4) gives counts for it that its line and branch lists do not reproduce, "
        "so voke cannot combine them exactly"
    )
    assert "`coverage combine`" in r.stderr


# A factory file whose `with` line coverage.py 6.5 counts as a branch of 2 exits and 7.x does not,
# after an excluded function whose `def` ran (6.5 lists line 9 among executed_lines).
WITH_SOURCE = """def load(path):
    with open(path) as fh:
        data = fh.read()
    if not data:
        return None
    return data


def never():  # pragma: no cover
    return 1
"""
# its coverage.json as coverage.py 6.5.0 writes it (by hand: 6.5 is not installed here); 6.5's own
# `coverage report` counts 6 statements, 1 missed, 4 branch exits, 1 missed: 80.0 %
C65 = {
    "meta": {"version": "6.5.0", "timestamp": "2026-01-01T00:00:00", "branch_coverage": True,
             "show_contexts": False},
    "files": {"factory_service/batch.py": {
        "executed_lines": [1, 2, 3, 4, 6, 9],
        "summary": {"covered_lines": 5, "num_statements": 6, "percent_covered": 80.0,
                    "percent_covered_display": "80", "missing_lines": 1, "excluded_lines": 2,
                    "num_branches": 4, "num_partial_branches": 1, "covered_branches": 3, "missing_branches": 1},
        "missing_lines": [5],
        "excluded_lines": [9, 10],
        "executed_branches": [[2, 3], [2, 4], [4, 6]],
        "missing_branches": [[4, 5]],
    }},
    "totals": {"covered_lines": 5, "num_statements": 6, "percent_covered": 80.0,
               "percent_covered_display": "80", "missing_lines": 1, "excluded_lines": 2, "num_branches": 4,
               "num_partial_branches": 1, "covered_branches": 3, "missing_branches": 1},
}  # fmt: skip


def test_json_reports_of_different_coverage_versions_are_refused_not_combined(voke, env, project):
    # The union of 7.17's and 6.5's lists counted the `with` line's exits from 6.5 (80 %, under
    # 7.17's rule, no warning) where `coverage combine` of the same runs gives 7.x's 75 %.
    (project / "factory_service").mkdir()
    (project / "factory_service" / "batch.py").write_text(WITH_SOURCE)
    (project / "run.py").write_text("from factory_service.batch import load\nload(__file__)\n")
    coverage(project, "run", "--branch", "--source=factory_service", "run.py")
    coverage(project, "json", "-q", "-o", "a.json")
    (project / "c65.json").write_text(json.dumps(C65))
    r = voke(
        "coverage",
        "report",
        "a.json",
        "c65.json",
        "-s",
        "factory-service",
        "--json",
        environ=env,
        cwd=project,
    )
    assert r.exit_code == 1, r.stdout
    from coverage import __version__ as installed

    error = r.json["error"]
    assert error["message"] == (
        f"cannot combine reports of different coverage.py versions: a.json (coverage.py {installed}), "
        "c65.json (coverage.py 6.5.0)"
    )
    assert "`coverage combine`" in error["hint"]
    # each alone is its own version's `coverage report`: 6.5's lists an excluded line that ran
    # (6 executed_lines, covered_lines 5), which is no statement of its count
    for name, percent, statements in (("a.json", 75.0, 6), ("c65.json", 80.0, 6)):
        alone = voke("coverage", "report", name, "-s", "factory-service", "--json", environ=env, cwd=project)
        assert alone.exit_code == 0, alone.stderr
        totals = alone.json["result"]["totals"]
        assert (totals["percent"], totals["statements"]) == (percent, statements), name


@pytest.mark.parametrize(
    ("versions", "formats", "message"),
    [
        (("7.17.4", "7.17.5"), (3, 3), None),  # a CI matrix that resolved two patch releases
        (("7.17.4", "7.17.5"), (3, None), None),  # a report without `meta.format` states none
        (
            ("7.16.0", "7.17.4"),
            (3, 3),
            "cannot combine reports of different coverage.py versions: "
            "a.json (coverage.py 7.16.0), b.json (coverage.py 7.17.4)",
        ),
        (
            ("7.17.4", "7.17.5"),
            (3, 2),
            "cannot combine reports of different coverage.json formats: "
            "a.json (coverage.py 7.17.4, format 3), b.json (coverage.py 7.17.5, format 2)",
        ),
    ],
)
def test_reports_of_one_coverage_minor_combine_and_other_counting_rules_are_refused(
    voke, env, project, versions, formats, message
):
    # the same file in both (each job ran part of its tests) and one only in the second
    write_json(
        project, {"admin_service/a.py": lines_file(6, 4)}, "a.json", version=versions[0], fmt=formats[0]
    )
    b = {"admin_service/a.py": {"executed": [1, 2, 3, 4, 7, 8], "missing": [5, 6, 9, 10]},
         "factory_service/b.py": lines_file(8, 2)}  # fmt: skip
    write_json(project, b, "b.json", version=versions[1], fmt=formats[1])
    for verb in ("report", "gate", "gaps"):
        r = voke(
            "coverage", verb, "a.json", "b.json", "--fail-under", "80", "--json", environ=env, cwd=project
        )
        no_traceback(r)
        if message is None:
            assert r.exit_code == 0, r.stdout + r.stderr
            totals = r.json["result"]["totals"]
            assert (totals["percent"], totals["missing"]) == (80.0, 4)  # 9 and 10 of a.py, two of b.py
        else:
            assert r.exit_code == 1, r.stdout
            assert r.json["error"]["message"] == message
            assert "`coverage combine`" in r.json["error"]["hint"]


@pytest.mark.parametrize(
    ("version", "extra", "code"),
    [
        ("7.17.4", (), 0),
        ("7.16.0", (), 1),
        ("7.16.0", ("--rule", "coverage"), 0),
        ("7.17.4", ("--strict",), 1),
    ],
)
def test_target_decimals_follow_the_coverage_version(voke, env, project, version, extra, code):
    write_json(project, {"admin_service/a.py": lines_file(8016, 1984)}, version=version)
    r = voke(
        "coverage", "gate", "coverage.json", "-s", "admin-service", "--fail-under", "80.2", *extra,
        environ=env, cwd=project,
    )  # fmt: skip
    assert r.exit_code == code, r.stdout + r.stderr


def test_rule_auto_on_the_command_line_overrides_a_configured_rule(voke, env, project):
    # `auto` is a value of coverage.rule (voke.toml, VOKE_COVERAGE__RULE): --rule auto was exit 2 (review)
    write_json(project, {"admin_service/a.py": lines_file(8016, 1984)}, version="7.16.0")
    configured = {**env, "VOKE_COVERAGE__RULE": "coverage"}
    gate = ("coverage", "gate", "coverage.json", "-s", "admin-service", "--fail-under", "80.2", "--json")
    assert voke(*gate, environ=configured, cwd=project).json["result"]["rule"] == "coverage"
    r = voke(*gate, "--rule", "AUTO", environ=configured, cwd=project)
    assert r.exit_code == 1 and r.json["result"]["rule"] == "coverage-7.16", r.stdout + r.stderr
    bad = voke(*gate, "--rule", "sometimes", environ=env, cwd=project)
    assert bad.exit_code == 2
    assert "expected one of auto, coverage, coverage-7.16, strict" in bad.json["error"]["message"]


def test_every_service_is_judged_against_its_own_target(voke, env, project):
    write_json(
        project, {"admin_service/a.py": lines_file(90, 10), "factory_service/b.py": lines_file(10, 90)}
    )
    r = voke("coverage", "gate", "coverage.json", "--json", environ=env, cwd=project)
    assert r.exit_code == 1
    res = r.json["result"]
    assert res["totals"]["percent"] == 50.0
    assert [(s["name"], s["passed"]) for s in res["services"]] == [
        ("admin-service", True),
        ("factory-service", False),
    ]
    assert len(res["failures"]) == 2  # factory-service and overall
    human = voke("coverage", "gate", "coverage.json", environ=env, cwd=project)
    assert [line.split(":")[0] for line in human.stdout.splitlines()[:3]] == [
        "admin-service",
        "factory-service",
        "overall",
    ]


def test_longest_prefix_wins(voke, env, tmp_path):
    (tmp_path / "voke.toml").write_text(
        '[coverage.services.platform]\npaths = ["services/"]\ntarget = 50\n'
        '[coverage.services.admin]\npaths = ["services/admin/"]\ntarget = 95\n'
    )
    write_json(tmp_path, {"services/admin/x.py": lines_file(9, 1), "services/other/y.py": lines_file(6, 4)})
    r = voke("coverage", "gate", "coverage.json", "--json", environ=env, cwd=tmp_path)
    services = {s["name"]: s for s in r.json["result"]["services"]}
    assert services["admin"]["statements"] == 10 and services["admin"]["target"] == 95.0
    assert services["platform"]["statements"] == 10 and services["platform"]["passed"] is True
    assert r.exit_code == 1  # admin 90 < 95


def test_services_giving_one_prefix_are_a_configuration_error(voke, env, tmp_path):
    (tmp_path / "voke.toml").write_text(
        '[coverage.services.b]\npaths = ["admin_service", "factory_service/"]\n'
        '[coverage.services.a]\npaths = ["admin_service/"]\n'
    )
    write_json(tmp_path, {"admin_service/x.py": lines_file(9, 1), "factory_service/y.py": lines_file(6, 4)})
    r = voke("coverage", "gate", "coverage.json", environ=env, cwd=tmp_path)
    assert r.exit_code == 3 and r.stdout == ""
    assert r.stderr.startswith(
        f"error: {tmp_path / 'voke.toml'}: coverage.services.a.paths: prefix 'admin_service/' is also "
        "service b's ('admin_service'): a file under it would belong to both services b and a (at line 4, column 9)\n"
    )
    # a service whose files all go to longer prefixes is told so, not that nothing matches it
    (tmp_path / "voke.toml").write_text(
        '[coverage.services.b]\npaths = ["admin_service/"]\n'
        '[coverage.services.a]\npaths = ["admin_service/x.py", "factory_service/"]\n'
    )
    r = voke("coverage", "gate", "coverage.json", environ=env, cwd=tmp_path)
    assert r.exit_code == 3
    assert r.stderr.startswith(
        "error: service b: every file under its paths (admin_service/) goes to service a, whose prefix "
        "is longer (e.g. 'admin_service/x.py')\n"
    )


def _multi_source_xml(project: Path) -> None:
    """Cobertura XML as `[run] source = a, b` writes it, made in /ci/proj (not here): each
    filename relative to one of the two <source> entries."""

    def cls(name: str, hits: str) -> str:
        lines = "".join(f'<line number="{i}" hits="{h}"/>' for i, h in enumerate(hits, 1))
        return f'<class name="{name}" filename="{name}"><lines>{lines}</lines></class>'

    (project / "multi.xml").write_text(
        '<coverage version="7.6" line-rate="0.5" lines-valid="6" lines-covered="3"><sources>'
        "<source>/ci/proj/services/admin</source><source>/ci/proj/services/factory</source></sources>"
        f'<packages><package name="p"><classes>{cls("admin_service/a.py", "111")}'
        f"{cls('factory_service/b.py', '000')}</classes></package></packages></coverage>"
    )


def test_a_report_with_several_sources_made_elsewhere_is_placed_by_mapping_not_guessed(voke, env, project):
    _multi_source_xml(project)
    (project / "voke.toml").write_text(TWO_SERVICES.replace('"admin_service/"', '"services/admin/"')
                                       .replace('"factory_service/"', '"services/factory/"'))  # fmt: skip
    for d in ("services/admin/admin_service", "services/factory/factory_service"):
        (project / d).mkdir(parents=True)
    (project / "services/admin/admin_service/a.py").write_text("a = 1\nb = 2\nc = 3\n")
    (project / "services/factory/factory_service/b.py").write_text("a = 1\nb = 2\nc = 3\n")
    mapped = voke(
        "coverage", "report", "multi.xml", "--map", "/ci/proj/=", "--json", environ=env, cwd=project
    )
    assert mapped.exit_code == 0, mapped.stderr
    percents = {s["name"]: s["percent"] for s in mapped.json["result"]["services"]}
    assert percents == {"admin-service": 100.0, "factory-service": 0.0}  # each file in its own service
    # Without the mapping nothing says which source a file is under: refused, not put under the first.
    unmapped = voke("coverage", "report", "multi.xml", "--json", environ=env, cwd=project)
    assert unmapped.exit_code == 1 and "none of its 2 <source> entries" in unmapped.json["error"]["message"]
    no_traceback(unmapped)
    # a file that exists under both sources (app/main.py in every service): which one was measured?
    (project / "services/factory/admin_service").mkdir()
    (project / "services/factory/admin_service/a.py").write_text("a = 1\n")
    both = voke("coverage", "report", "multi.xml", "--map", "/ci/proj/=", "--json", environ=env, cwd=project)
    assert both.exit_code == 1 and "exists under 2 of its <source> entries" in both.json["error"]["message"]


def test_path_mapping_from_flag_and_config(voke, env, project):
    write_json(
        project,
        {
            "/app/src/admin_service/a.py": lines_file(1, 0),
            "D:\\a\\src\\factory_service\\b.py": lines_file(1, 1),
        },
    )
    r = voke("coverage", "report", "coverage.json", "--map", "/app/src/=", "--map", "D:/a/src/=", "--json",
             environ=env, cwd=project)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert [s["files"] for s in r.json["result"]["services"]] == [1, 1]
    (project / "voke.toml").write_text(
        TWO_SERVICES + '[coverage.remap]\n"/app/src/" = ""\n"D:\\\\a\\\\src\\\\" = ""\n'
    )
    r = voke("coverage", "report", "coverage.json", "--json", environ=env, cwd=project)
    assert r.exit_code == 0, r.stderr


# -- gaps -----------------------------------------------------------------------------------------
def test_gaps_lines_needed_and_functions(voke, env, project):
    funcs = {
        "big": {"executed_lines": [], "missing_lines": list(range(781, 1000)), "start_line": 781},
        "": {"executed_lines": list(range(1, 781)), "missing_lines": [1000], "start_line": 1},
    }
    files = {
        "admin_service/a.py": {**lines_file(780, 220), "functions": funcs},
        "factory_service/b.py": lines_file(1, 0),
    }
    write_json(project, files)
    r = voke("coverage", "gaps", "coverage.json", "-s", "admin-service", "--json", environ=env, cwd=project)
    assert r.exit_code == 0, r.stderr
    admin = r.json["result"]["services"][0]
    assert admin["lines_needed"] == 15
    assert [f["name"] for f in admin["functions"]] == ["big", "(module level)"]
    strict = voke("coverage", "gaps", "coverage.json", "-s", "admin-service", "--strict", "--json", environ=env,
                  cwd=project)  # fmt: skip
    assert strict.json["result"]["services"][0]["lines_needed"] == 20
    human = voke("coverage", "gaps", "coverage.json", "-s", "admin-service", environ=env, cwd=project)
    assert "cover 15 more statements to reach 80" in human.stdout
    assert "admin_service/a.py:781" in human.stdout
    # with --service the total is shown, not judged, as by `gate -s` and `report -s` (it said "meets 80")
    assert r.json["result"]["totals"]["target"] is None and "overall 78%: no target" in human.stdout
    whole = voke("coverage", "gaps", "coverage.json", "--json", environ=env, cwd=project)
    assert whole.json["result"]["totals"]["target"] == 80


PICK_SOURCE = """def pick(x):
    if x:
        x += 1
    return x


def leave(x):
    if x:
        return 1


def loop(n):
    for i in range(n):
        if i > 5:
            break
    return n
"""


def test_gaps_list_the_missed_branch_exits_coverage_report_lists(voke, env, project):
    # `coverage report -m` says "2->4, 8->exit, 15": the exits whose line ran and whose target is
    # no missed line; gaps listed only the line 15 (brmiss 3, no location for two of them).
    (project / "admin_service").mkdir()
    (project / "admin_service" / "pick.py").write_text(PICK_SOURCE)
    (project / "run.py").write_text(
        "from admin_service.pick import pick, leave, loop\npick(1); leave(1); loop(2)\n"
    )
    coverage(project, "run", "--branch", "--source=admin_service", "run.py")
    coverage(project, "json", "-q", "-o", "c.json")
    coverage(project, "xml", "-q", "-o", "c.xml")
    row = next(
        ln for ln in coverage(project, "report", "-m").splitlines() if ln.startswith("admin_service/pick")
    )
    missing = row.split("%", 1)[1].strip().split(", ")
    assert missing == ["2->4", "8->exit", "15"]  # coverage.py's order: by line
    for given in ("c.json", "c.xml", ".coverage"):
        r = voke("coverage", "gaps", given, "-s", "admin-service", "--json", environ=env, cwd=project)
        assert r.exit_code == 0, r.stderr
        [f] = r.json["result"]["services"][0]["files"]
        assert (f["missing_lines"], f["missing_arcs"]) == ("15", "2->4, 8->exit"), given
    functions = {fn["name"]: fn["missing_arcs"] for fn in r.json["result"]["services"][0]["functions"]}
    assert functions == {"pick": "2->4", "leave": "8->exit", "loop": ""}
    human = voke("coverage", "gaps", "c.json", "-s", "admin-service", environ=env, cwd=project)
    assert re.search(r"admin_service/pick\.py +1 +3 +80% +15 +2->4, 8->exit", human.stdout), human.stdout
    assert re.search(r"leave +admin_service/pick\.py:7 +0 +1 +8->exit", human.stdout), human.stdout


# -- GitHub step summary --------------------------------------------------------------------------
def test_step_summary_written_only_when_set_and_kept_under_1_mib(voke, env, project, tmp_path):
    write_json(
        project, {"admin_service/a.py": lines_file(795, 205), "factory_service/b.py": lines_file(6, 4)}
    )
    r = voke("coverage", "gate", "coverage.json", environ=env, cwd=project)
    assert r.exit_code == 1
    assert not list(tmp_path.glob("**/summary*.md"))
    summary = tmp_path / "summary.md"
    gh = {**env, "GITHUB_STEP_SUMMARY": str(summary)}
    r = voke("coverage", "gate", "coverage.json", environ=gh, cwd=project)
    text = summary.read_text()
    assert "| service | coverage | target | Δ baseline | status |" in text
    assert "| admin-service | 80% | 80% | +10% | ✅ pass (by rounding; exact 79.50%) |" in text
    assert "| factory-service | 60% | 80% | -5% | ❌ fail |" in text
    assert "### voke coverage gate: ❌ failed" in text
    # nearly full: what is appended keeps the file within GitHub's limit
    summary.write_text("x" * (1024 * 1024 - 600))
    voke("coverage", "report", "coverage.json", environ=gh, cwd=project)
    assert summary.stat().st_size <= 1024 * 1024
    # the runner's file cannot be written: a warning; the gate's own verdict and exit code stand
    lost = {**env, "GITHUB_STEP_SUMMARY": str(tmp_path)}
    r = voke("coverage", "gate", "coverage.json", environ=lost, cwd=project)
    assert r.exit_code == 1 and "factory-service" in r.stdout, r.stdout + r.stderr
    assert "cannot write" in r.stderr and "no step summary" in r.stderr


# -- diff coverage on a real git repository -------------------------------------------------------
def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


MODULE_V1 = "def f(x):\n    return x + 1\n"
MODULE_V2 = (
    "def f(x):\n    return x + 1\n\n\n"
    "def g(x):\n    if x > 0:\n        return 'pos'\n    y = -x\n    return y\n\n\n"
    "def h():\n    a = 1\n    b = 2\n    return a + b\n"
)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "m.py").write_text(MODULE_V1)
    (root / "README.md").write_text("hello\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "base")
    git(root, "checkout", "-q", "-b", "feature")
    (root / "pkg" / "m.py").write_text(MODULE_V2)
    git(root, "commit", "-q", "-am", "add g and h")
    (root / "README.md").write_text("hello\nworld\n")  # unstaged, not measured
    (root / "run.py").write_text("from pkg.m import f, g\nf(1)\ng(1)\n")
    coverage(root, "run", "--source=pkg", "run.py")
    coverage(root, "json", "-q", "-o", "coverage.json")
    return root


def test_diff_coverage_against_a_git_ref(voke, env, repo):
    r = voke("coverage", "diff", "coverage.json", "--base", "main", "--json", environ=env, cwd=repo)
    assert r.exit_code == 0, r.stderr
    res = r.json["result"]
    # changed statements: def g, if, return 'pos', y = -x, return y, def h, a, b, return -> 9 measured
    assert (res["measured"], res["covered"]) == (9, 4)
    assert res["display"] == "44"
    assert res["files"][0]["path"] == "pkg/m.py"
    assert res["files"][0]["uncovered_ranges"] == [[8, 9], [13, 15]]
    human = voke(
        "coverage", "diff", "coverage.json", "--base", "main", "--fail-under", "50", environ=env, cwd=repo
    )
    assert human.exit_code == 1
    assert "pkg/m.py" in human.stdout and "8-9, 13-15" in human.stdout
    assert "14 changed lines in 2 files)" in " ".join(human.stdout.split())


def test_a_form_feed_in_a_changed_line_does_not_shift_the_lines_after_it(voke, env, project):
    write_json(project, {"admin_service/a.py": {"executed": [1, 2, 4, 5, 6, 10], "missing": [7, 11]}})
    hunk = "+x = 1\n+\f\n+a\n+b\n+c\n+d\n+e\n+f\n+g\n"  # lines 3-11; line 4 is a form feed
    (project / "ff.diff").write_text(
        "--- a/admin_service/a.py\n+++ b/admin_service/a.py\n@@ -2,0 +3,9 @@\n" + hunk
    )
    r = voke(
        "coverage", "diff", "coverage.json", "--diff-file", "ff.diff", "--json", environ=env, cwd=project
    )
    assert r.exit_code == 0, r.stderr
    assert (r.json["result"]["measured"], r.json["result"]["covered"]) == (6, 4)  # 4, 5, 6, 7, 10, 11
    human = voke("coverage", "diff", "coverage.json", "--diff-file", "ff.diff", environ=env, cwd=project)
    assert "9 changed lines in 1 file)" in " ".join(human.stdout.split())


def test_a_failed_diff_gate_says_it_in_the_numbers_compared(voke, env, project):
    covered = list(range(1, 200))  # 199 of 250 changed lines covered: 79.6 %, shown as 80
    write_json(project, {"admin_service/a.py": {"executed": covered, "missing": list(range(200, 251))}})
    hunk = "".join(f"+l{i}\n" for i in range(1, 251))
    (project / "c.diff").write_text(
        "--- a/admin_service/a.py\n+++ b/admin_service/a.py\n@@ -0,0 +1,250 @@\n" + hunk
    )
    r = voke("coverage", "diff", "coverage.json", "--diff-file", "c.diff", "--fail-under", "80", "--strict",
             "--json", environ=env, cwd=project)  # fmt: skip
    assert r.exit_code == 1
    assert r.json["error"]["message"] == "diff coverage exact 79.60% < 80 (strict)"


def test_diff_annotations_in_github_actions(voke, env, repo):
    gh = {**env, "GITHUB_ACTIONS": "true"}
    r = voke("coverage", "diff", "coverage.json", "--base", "main", "--json", environ=gh, cwd=repo)
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("::warning")]
    assert warnings == [
        "::warning file=pkg/m.py,line=8,endLine=9,title=Uncovered change::Lines 8-9 are changed but not covered by tests",
        "::warning file=pkg/m.py,line=13,endLine=15,title=Uncovered change::Lines 13-15 are changed but not covered by tests",
    ]
    json.loads(r.stdout)  # stdout stays one JSON document
    quiet = voke(
        "coverage",
        "diff",
        "coverage.json",
        "--base",
        "main",
        environ=gh,
        cwd=repo,
    )
    assert "::warning" in quiet.stderr
    off = voke(
        "coverage", "diff", "coverage.json", "--base", "main", "--no-annotations", environ=gh, cwd=repo
    )
    assert "::warning" not in off.stderr


def test_diff_annotations_are_capped(voke, env, project):
    executed = list(range(1, 101, 2))  # odd lines covered, even lines missed: 50 one-line gaps
    missing = list(range(2, 101, 2))
    write_json(project, {"admin_service/a.py": {"executed": executed, "missing": missing}})
    hunk = "".join(f"+l{i}\n" for i in range(1, 51))
    (project / "change.diff").write_text(
        "--- a/admin_service/a.py\n+++ b/admin_service/a.py\n@@ -0,0 +1,50 @@\n" + hunk
    )
    r = voke("coverage", "diff", "coverage.json", "--diff-file", "change.diff", "--annotations", environ=env,
             cwd=project)  # fmt: skip
    lines = r.stderr.splitlines()
    assert len([ln for ln in lines if ln.startswith("::warning")]) == 10
    notices = [ln for ln in lines if ln.startswith("::notice")]
    assert len(notices) == 1 and "15 more uncovered changed ranges" in notices[0]
    assert "job summary" not in notices[0]  # there is none without GITHUB_STEP_SUMMARY
    summary = project / "summary.md"
    r = voke("coverage", "diff", "coverage.json", "--diff-file", "change.diff", "--annotations",
             environ={**env, "GITHUB_STEP_SUMMARY": str(summary)}, cwd=project)  # fmt: skip
    assert "see the job summary" in r.stderr and "admin_service/a.py" in summary.read_text()


def test_diff_with_nothing_measurable_is_na(voke, env, repo):
    git(repo, "commit", "-q", "-am", "wip")  # README change committed; compare with HEAD
    (repo / "README.md").write_text("changed again\n")
    r = voke("coverage", "diff", "coverage.json", "--base", "HEAD", "--fail-under", "90", "--json", environ=env,
             cwd=repo)  # fmt: skip
    assert r.exit_code == 0
    assert r.json["result"]["display"] == "n/a" and r.json["result"]["percent"] is None


def test_a_cut_or_corrupt_diff_file_is_rejected_not_passed(voke, env, repo):
    full = git(repo, "diff", "main", "--", "README.md", "pkg/m.py")
    (repo / "full.diff").write_text(full)
    ok = voke("coverage", "diff", "coverage.json", "--diff-file", "full.diff", "--fail-under", "90", "--json",
              environ=env, cwd=repo)  # fmt: skip
    assert ok.exit_code == 1 and ok.json["error"]["message"].startswith("diff coverage 44% < 90"), ok.stdout
    lines = full.splitlines(keepends=True)
    hunk = next(i for i, ln in enumerate(lines) if ln.startswith("@@ -1 +1,2 @@"))  # README.md's
    # `git diff | head -19`: pkg/m.py's hunk ends early, and only covered lines are left in it: 100 %
    (repo / "cut.diff").write_text("".join(lines[:19]))
    # a README hunk counting two lines more took pkg/m.py's header and lines as its own: n/a
    short = [*lines[:hunk], "@@ -1,3 +1,4 @@\n", *lines[hunk + 1 :]]
    (repo / "short.diff").write_text("".join(short))
    for name, at, why in (
        (
            "cut.diff",
            "line 20, column 1",
            "0 old and 8 new lines short of its header at the end of the input",
        ),
        ("short.diff", f"line {hunk + 4}, column 1", "2 old and 2 new lines short of its header: this line"),
    ):
        r = voke("coverage", "diff", "coverage.json", "--diff-file", name, "--fail-under", "90", "--json",
                 environ=env, cwd=repo)  # fmt: skip
        assert r.exit_code == 1, r.stdout  # was exit 0: 100 % and n/a
        assert r.json["error"]["message"].startswith(f"{repo / name}: {at}: the hunk of line "), r.stdout
        assert why in r.json["error"]["message"]
        no_traceback(r)


def test_a_diff_file_with_empty_context_lines_and_no_final_newline_is_read(voke, env, repo):
    git(repo, "commit", "-q", "-am", "wip")
    text = MODULE_V2.replace("def g(x):", "def g(x):  # g").removesuffix("\n")  # lines 5 and 15
    (repo / "pkg" / "m.py").write_text(text)
    diff = git(repo, "-c", "diff.suppressBlankEmpty=true", "diff", "HEAD")
    assert "\n\n" in diff and "\\ No newline at end of file" in diff  # empty context lines, as GNU diff
    (repo / "blank.diff").write_text(diff)
    by_file = voke("coverage", "diff", "coverage.json", "--diff-file", "blank.diff", "--json", environ=env,
                   cwd=repo)  # fmt: skip
    by_git = voke("coverage", "diff", "coverage.json", "--base", "HEAD", "--json", environ=env, cwd=repo)
    assert by_file.exit_code == by_git.exit_code == 0, by_file.stdout
    assert (by_file.json["result"]["measured"], by_file.json["result"]["covered"]) == (2, 1)
    assert by_file.json["result"]["files"] == by_git.json["result"]["files"]
    (repo / "README.md").write_text("hello\nwor\rld\nagain\n")  # a lone CR is no line end for git
    cr = voke("coverage", "diff", "coverage.json", "--base", "HEAD", "--json", environ=env, cwd=repo)
    assert cr.exit_code == 0 and cr.json["result"]["changed_lines"] == 4, cr.stdout


def test_diff_refuses_data_that_does_not_map_into_the_repository(voke, env, repo):
    data = json.loads((repo / "coverage.json").read_text())
    ci = "/home/runner/work/x/x/"
    files = data["files"]
    (repo / "ci.json").write_text(json.dumps({**data, "files": {ci + k: v for k, v in files.items()}}))
    for args in (("--base", "main"), ("--diff-file", "full.diff")):
        (repo / "full.diff").write_text(git(repo, "diff", "main"))
        r = voke("coverage", "diff", "ci.json", *args, "--fail-under", "90", "--json", environ=env, cwd=repo)
        assert r.exit_code == 3, r.stdout  # was n/a, exit 0
        error = r.json["error"]
        assert "no file of the coverage data lies in the" in error["message"]
        assert ci + "pkg/m.py" in error["message"]
        mapped = voke(
            "coverage", "diff", "ci.json", *args, "--map", f"{ci}=", "--json", environ=env, cwd=repo
        )
        assert mapped.exit_code == 0, mapped.stdout
        assert (mapped.json["result"]["measured"], mapped.json["result"]["covered"]) == (9, 4)
    report = voke("coverage", "report", "ci.json", "--json", environ=env, cwd=repo)  # the same hint
    hint = "map CI paths with coverage.remap (or --map FROM=TO)"
    assert report.exit_code == 3 and error["hint"] == hint and hint in report.json["error"]["hint"]
    # some files placed: judged, the others named in a warning
    some = {**files, ci + "pkg/__init__.py": files.pop("pkg/__init__.py")}
    (repo / "some.json").write_text(json.dumps({**data, "files": some}))
    r = voke("coverage", "diff", "some.json", "--base", "main", "--json", environ=env, cwd=repo)
    assert r.exit_code == 0 and (r.json["result"]["measured"], r.json["result"]["covered"]) == (9, 4)
    (warning,) = r.json["result"]["warnings"]
    assert warning.startswith("not judged: 1 file of the coverage data outside the repository (map CI paths")
    assert warning.endswith(f": {ci}pkg/__init__.py")
    # measured, mapped and unchanged statements stay n/a (test_diff_with_nothing_measurable_is_na)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--base", "no-such-ref"), 2, "unknown git ref 'no-such-ref'"),
        ((), 2, "exactly one of --base"),
    ],
)
def test_diff_usage_errors(voke, env, repo, args, code, message):
    r = voke("coverage", "diff", "coverage.json", *args, environ=env, cwd=repo)
    assert r.exit_code == code
    assert message in r.stderr
    no_traceback(r)


# -- badge ----------------------------------------------------------------------------------------
def test_badge_is_offline_and_byte_deterministic(voke, env, project):
    write_json(project, {"admin_service/a.py": lines_file(75, 25), "factory_service/b.py": lines_file(0, 0)})
    r1 = voke("coverage", "badge", "coverage.json", "--out", "b1.svg", "--json", environ=env, cwd=project)
    r2 = voke("coverage", "badge", "coverage.json", "--out", "out/b2.svg", environ=env, cwd=project)
    assert r1.exit_code == r2.exit_code == 0, r1.stderr
    svg = (project / "b1.svg").read_bytes()
    assert svg == (project / "out" / "b2.svg").read_bytes()
    assert b">75%</text>" in svg and b"#a4a61d" in svg  # yellowgreen: 70 <= 75 < 80
    assert r1.json["result"]["value"] == "75%"
    custom = voke("coverage", "badge", "coverage.json", "--out", "c.svg", "--colors", "70:#123456,0:red",
                  environ=env, cwd=project)  # fmt: skip
    assert custom.exit_code == 0 and b"#123456" in (project / "c.svg").read_bytes()
    one = voke("coverage", "badge", "coverage.json", "--out", "a.svg", "-s", "admin-service", "--label", "admin",
               environ=env, cwd=project)  # fmt: skip
    assert one.exit_code == 0 and b"admin: 75%" in (project / "a.svg").read_bytes()
    bad = voke("coverage", "badge", "coverage.json", "--out", "x.svg", "--colors", "80-green", environ=env,
               cwd=project)  # fmt: skip
    assert bad.exit_code == 2 and "--colors" in bad.stderr
    os.mkfifo(project / "fifo.svg")  # as a device would be: never replaced by a regular file
    piped = voke("coverage", "badge", "coverage.json", "--out", "fifo.svg", environ=env, cwd=project)
    assert piped.exit_code == 2 and "not a regular file" in piped.stderr


def test_text_options_written_to_files_must_be_utf8_and_a_historys_lone_surrogate_is_shown_replaced(
    voke, env, project
):
    # bytes a, 0xff, b: argv hands them in as a lone surrogate, which a UTF-8 file cannot hold (was exit 70)
    write_json(project, {"admin_service/a.py": lines_file(75, 25)})
    for args, option in (
        (("badge", "coverage.json", "--out", "out/b.svg", "--label"), "--label"),
        (("history", "add", "coverage.json", "--ref"), "--ref"),
    ):
        r = voke("coverage", *args, "a\udcffb", "--json", environ=env, cwd=project)
        assert r.exit_code == 2 and r.json["error"]["message"] == f"{option} must be UTF-8 text", r.stdout
    # $GITHUB_SHA, --ref's default, is held to the same rule (it was written as "a\udcffb")
    r = voke("coverage", "history", "add", "coverage.json", "--json", environ={**env, "GITHUB_SHA": "a\udcffb"},
             cwd=project)  # fmt: skip
    assert r.exit_code == 2, r.stdout
    assert r.json["error"]["message"] == "$GITHUB_SHA (the default of --ref) must be UTF-8 text"
    assert not (project / "out").exists() and not (project / ".voke" / "coverage-history.jsonl").exists()
    # a history is any JSON-lines file, and JSON's "\udcff" escape is such a surrogate
    assert voke("coverage", "history", "add", "coverage.json", environ=env, cwd=project).exit_code == 0
    hist = project / ".voke" / "coverage-history.jsonl"
    hist.write_text(hist.read_text().replace('"admin-service"', '"x\\udcffy"'))
    shown = voke("coverage", "history", "show", "--out", "trend.svg", environ=env, cwd=project)
    assert shown.exit_code == 0, shown.stderr
    assert "x\ufffdy 75%" in (project / "trend.svg").read_text(encoding="utf-8")


def test_a_badge_the_filesystem_refuses_is_exit_4_whether_or_not_its_directory_exists(
    voke, env, project, monkeypatch
):
    # On a read-only mount a new directory for --out was a usage error (exit 2), an existing one exit 4
    write_json(project, {"admin_service/a.py": lines_file(75, 25)})
    (project / "out").mkdir()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    for out, seam in (("new/b.svg", (Path, "mkdir")), ("out/b.svg", (files.tempfile, "mkstemp"))):
        with monkeypatch.context() as mounted:
            mounted.setattr(*seam, read_only)
            r = voke("coverage", "badge", "coverage.json", "--out", out, environ=env, cwd=project)
        assert r.exit_code == 4, (out, r.stderr)
        assert f"Read-only file system: {project / out}" in r.stderr, r.stderr


def test_badge_colour_is_the_band_of_the_number_it_shows(voke, env, project):
    write_json(project, {"admin_service/a.py": lines_file(796, 204)})  # 79.6 %, shown as 80
    r = voke("coverage", "badge", "coverage.json", "--out", "b.svg", "--json", environ=env, cwd=project)
    assert r.exit_code == 0 and r.json["result"]["value"] == "80%"
    assert r.json["result"]["color"] == "#97ca00"  # green, as any other "80%"


def test_coverage_pys_fail_under_is_the_target_unless_voke_sets_one(voke, env, project):
    write_json(
        project, {"admin_service/a.py": lines_file(90, 10), "factory_service/b.py": lines_file(90, 10)}
    )
    (project / ".coveragerc").write_text("[report]\nfail_under = 95\n")
    (project / "voke.toml").write_text(TWO_SERVICES.replace("target = 80\n", ""))

    def gate(*extra):
        return voke("coverage", "gate", "coverage.json", "--json", *extra, environ=env, cwd=project)

    strict = gate()  # `coverage report` fails this project at 95: so does voke
    assert strict.exit_code == 1 and strict.json["result"]["totals"]["target"] == 95.0
    assert {s["target"] for s in strict.json["result"]["services"]} == {95.0}
    assert gate("--fail-under", "85").exit_code == 0  # the flag still wins
    (project / "voke.toml").write_text(TWO_SERVICES)  # voke's own target = 80 wins over coverage.py's
    assert gate().exit_code == 0
    (project / ".coveragerc").write_text("[report]\nfail_under = 150\n")
    (project / "voke.toml").write_text(TWO_SERVICES.replace("target = 80\n", ""))
    bad = gate()
    assert bad.exit_code == 3 and "fail_under = 150" in bad.json["error"]["message"]
    (project / ".coveragerc").write_text("[report]\nprecision = 400\n")
    for command in (gate(), voke("coverage", "report", "coverage.json", "--json", environ=env, cwd=project)):
        assert command.exit_code == 3, command.stdout  # was 70: OverflowError
        assert f"({project / '.coveragerc'}): [report] precision = 400" in command.json["error"]["message"]


# -- history --------------------------------------------------------------------------------------
def test_history_add_show_and_chart(voke, env, project):
    for i, (a, f) in enumerate([(60, 50), (70, 60), (85, 70)]):
        write_json(
            project,
            {"admin_service/a.py": lines_file(a, 100 - a), "factory_service/b.py": lines_file(f, 100 - f)},
        )
        r = voke("coverage", "history", "add", "coverage.json", "--ref", f"c{i}", environ=env, cwd=project)
        assert r.exit_code == 0, r.stderr
    dry = voke("coverage", "history", "add", "coverage.json", "--dry-run", "--json", environ=env, cwd=project)
    assert dry.json["result"]["dry_run"] is True and dry.json["result"]["entries"] == 3
    for lost in ("/dev/null", str(project)):  # appended to, the run would be lost: exit 2
        bad = voke("coverage", "history", "add", "coverage.json", "--file", lost, environ=env, cwd=project)
        assert bad.exit_code == 2, (lost, bad.stderr)
    hist = project / ".voke" / "coverage-history.jsonl"
    assert len(hist.read_text().splitlines()) == 3
    r = voke("coverage", "history", "show", "--out", "trend.svg", "--json", environ=env, cwd=project)
    assert r.exit_code == 0, r.stderr
    series = {s["name"]: s for s in r.json["result"]["series"]}
    assert series["admin-service"]["sparkline"] == "▁▄█"
    assert series["admin-service"]["change"] == pytest.approx(15.0)
    assert series["admin-service"]["baseline"] == 70.0
    assert series["overall"]["latest"] == 77.5
    svg = (project / "trend.svg").read_text()
    assert svg.startswith("<svg") and "admin-service 85%" in svg
    human = voke("coverage", "history", "show", environ=env, cwd=project)
    assert "▁▄█" in human.stdout and "admin-service" in human.stdout
    audit = voke("audit", "show", "--json", "--event-type", "coverage.history_add", environ=env, cwd=project)
    assert [e["result"] for e in audit.json["result"]["entries"]] == ["success"] * 3 + ["dry-run"] + [
        "failure"
    ] * 2


def test_history_add_says_the_overall_as_report_shows_it_and_counts_configured_services(voke, env, project):
    # 229 of 300 lines: 76.33 %, which `coverage report` (precision 0) shows as 76; other/ is no service
    files = {
        "admin_service/a.py": lines_file(80, 20),
        "factory_service/b.py": lines_file(70, 30),
        "other/c.py": lines_file(79, 21),
    }
    write_json(project, files)
    report = voke("coverage", "report", "coverage.json", "--json", environ=env, cwd=project)
    assert report.json["result"]["totals"]["display"] == "76"
    first = voke("coverage", "history", "add", "coverage.json", environ=env, cwd=project)
    assert first.exit_code == 0, first.stderr
    assert ": overall 76%, 2 services (+ unassigned) -> " in first.stdout, first.stdout
    assert first.stdout.endswith("(1 run)\n")
    (project / "voke.toml").write_text(TWO_SERVICES.replace("baseline = 50", "baseline = 50\nprecision = 1"))
    del files["other/c.py"]
    write_json(project, files)  # 150 of 200: 75.0 at precision 1
    second = voke("coverage", "history", "add", "coverage.json", "--json", environ=env, cwd=project)
    assert second.json["result"]["precision"] == 1
    human = voke("coverage", "history", "add", "coverage.json", environ=env, cwd=project)
    assert ": overall 75.0%, 2 services -> " in human.stdout and human.stdout.endswith("(3 runs)\n")
    one = voke(
        "coverage", "history", "add", "coverage.json", "--service", "admin-service", environ=env, cwd=project
    )
    assert ": overall 80.0%, 1 service -> " in one.stdout, one.stdout


def test_history_add_on_a_full_disk_is_exit_4_and_leaves_no_torn_line(voke, env, project, monkeypatch):
    # The line cut at the disk's last byte made every later add, show and --baseline-from fail
    # ("not a voke coverage history entry"), and the full disk was a usage error (exit 2).
    write_json(
        project, {"admin_service/a.py": lines_file(60, 40), "factory_service/b.py": lines_file(50, 50)}
    )
    hist = project / ".voke" / "coverage-history.jsonl"

    def add(ref):
        return voke("coverage", "history", "add", "coverage.json", "--ref", ref, environ=env, cwd=project)

    assert add("c1").exit_code == 0
    before = hist.read_bytes()

    def full_after_40_bytes(fd, data):
        os.write(fd, data[:40])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as full:
        full.setattr(files, "write_all", full_after_40_bytes)
        failed = add("c2")
    assert failed.exit_code == 4 and f"No space left on device: {hist}" in failed.stderr
    assert hist.read_bytes() == before
    assert add("c3").exit_code == 0
    shown = voke("coverage", "history", "show", "--json", environ=env, cwd=project)
    assert shown.exit_code == 0 and [p["ref"] for p in shown.json["result"]["series"][0]["points"]] == [
        "c1",
        "c3",
    ]


def test_history_add_into_the_coverage_report_itself_is_refused_and_leaves_it_whole(voke, env, project):
    report = write_json(
        project, {"admin_service/a.py": lines_file(60, 40), "factory_service/b.py": lines_file(50, 50)}
    )
    before = report.read_bytes()
    added = voke(
        "coverage", "history", "add", "coverage.json", "--file", "coverage.json", environ=env, cwd=project
    )
    assert added.exit_code == 1 and report.read_bytes() == before  # it appended a line: exit 0
    assert "coverage.json: a coverage.py JSON report, not a voke coverage history file" in added.stderr
    assert voke("coverage", "report", "coverage.json", environ=env, cwd=project).exit_code == 0
    shown = voke("coverage", "history", "show", "--file", "coverage.json", "--json", environ=env, cwd=project)
    assert shown.exit_code == 1 and "not a voke coverage history file" in shown.json["error"]["message"]
    no_traceback(added)
    no_traceback(shown)


def test_baseline_from_history_and_branch_mismatch_refused(voke, env, project):
    write_json(
        project, {"admin_service/a.py": lines_file(60, 40), "factory_service/b.py": lines_file(50, 50)}
    )
    voke("coverage", "history", "add", "coverage.json", environ=env, cwd=project)
    write_json(
        project, {"admin_service/a.py": lines_file(70, 30), "factory_service/b.py": lines_file(50, 50)}
    )
    r = voke("coverage", "report", "coverage.json", "--baseline-from", ".voke/coverage-history.jsonl", "--json",
             environ=env, cwd=project)  # fmt: skip
    assert r.exit_code == 0, r.stderr
    admin = r.json["result"]["services"][0]
    assert admin["baseline"] == 60.0 and admin["delta"] == pytest.approx(10.0)
    write_json(project, {"admin_service/a.py": lines_file(70, 30), "factory_service/b.py": lines_file(50, 50)},
               branch=True)  # fmt: skip
    refused = voke("coverage", "report", "coverage.json", "--baseline-from", ".voke/coverage-history.jsonl",
                   environ=env, cwd=project)  # fmt: skip
    assert refused.exit_code == 1
    assert "cannot compare branch coverage with the statement-only baseline" in refused.stderr
    no_traceback(refused)


def test_a_history_is_read_only_from_a_regular_file_and_whole_only_by_show_within_a_bound(
    voke, env, project, monkeypatch
):
    from voketag_ops.workflows import coverage as wf

    write_json(
        project, {"admin_service/a.py": lines_file(60, 40), "factory_service/b.py": lines_file(50, 50)}
    )
    for _ in range(3):
        assert voke("coverage", "history", "add", "coverage.json", environ=env, cwd=project).exit_code == 0
    hist = project / ".voke" / "coverage-history.jsonl"
    # /dev/zero never ends (it was read whole: out of memory); /dev/null stands for every device
    for args in (
        ("history", "show", "--file", "/dev/null"),
        ("history", "show", "--last", "1", "--file", "/dev/null"),
        ("report", "coverage.json", "--baseline-from", "/dev/null"),
    ):
        r = voke("coverage", *args, environ=env, cwd=project)
        assert r.exit_code == 1 and "/dev/null: not a regular file" in r.stderr, r.stderr
        no_traceback(r)
    # Only `history show` without --last reads it whole, so only it is bounded: a CI job's add
    # and --baseline-from read the last run from the end, and a history grown past the limit
    # (a year of CI) must not fail them (exit 1 is a failed gate).
    limit = hist.stat().st_size - 1
    monkeypatch.setattr(wf, "HISTORY_LIMIT", limit)
    r = voke("coverage", "history", "show", "--json", environ=env, cwd=project)
    assert r.exit_code == 1 and f"larger than {limit:,} bytes" in r.json["error"]["message"]
    assert "--last" in r.json["error"]["hint"]
    added = voke("coverage", "history", "add", "coverage.json", "--json", environ=env, cwd=project)
    assert added.exit_code == 0 and added.json["result"]["entries"] == 4, added.stdout + added.stderr
    shown = voke("coverage", "history", "show", "--last", "2", "--json", environ=env, cwd=project)
    assert shown.exit_code == 0 and shown.json["result"]["entries"] == 2, shown.stdout + shown.stderr
    r = voke(
        "coverage",
        "report",
        "coverage.json",
        "--baseline-from",
        str(hist),
        "--json",
        environ=env,
        cwd=project,
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    assert len(hist.read_text().splitlines()) == 4


# -- bad input: one line, the right exit code, no traceback ---------------------------------------
_COBERTURA = (
    '<coverage lines-valid="1" lines-covered="1" version="7.17.4"><packages><package><classes>\n'
    '<class filename="admin_service/a.py"><lines>\n'
    '  <line number="1" hits="1" branch="true" condition-coverage="{cond}"/>\n'
    "</lines></class></classes></package></packages></coverage>\n"
)


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        (None, ("nope.json",), 2, "error: nope.json: no such file"),
        ('{"a": 1}', ("in.json",), 1, "not a coverage.py JSON report"),
        ('{"meta": {"format": 4}, "files": {}}', ("in.json",), 1, "coverage.json format 4 is not supported"),
        ("<report/>", ("in.json",), 1, "not a Cobertura XML report"),
        ("GOOD", ("in.json", "--rule", "sometimes"), 2, "--rule 'sometimes'"),
        ("GOOD", ("in.json", "--fail-under", "120"), 2, "less than or equal to 100"),
        ("GOOD", ("in.json", "--map", "nothing"), 2, "expected FROM=TO"),
        ("GOOD", ("in.json", "-s", "nosuch"), 2, "unknown service 'nosuch'"),
        ("ADMIN_ONLY", ("in.json",), 3, "service factory-service: no file in the coverage data matches"),
        ("[" * 100_000, ("in.json",), 1, "not valid JSON: nested too deeply"),
        ('{"files": {"a.py": {"executed_lines": [' + "9" * 5000 + "]}}}", ("in.json",), 1, "not valid JSON"),
        (
            _COBERTURA.format(cond="50% (1/99999999999999)"),
            ("in.json",),
            1,
            '<line number="1"> of admin_service/a.py',
        ),
        (_COBERTURA.format(cond="100% (5/2)"), ("in.json",), 1, "is not taken <= exits"),
    ],
)
def test_bad_input(voke, env, project, setup, args, code, message):
    if setup == "GOOD":
        write_json(
            project,
            {"admin_service/a.py": lines_file(1, 0), "factory_service/b.py": lines_file(1, 0)},
            "in.json",
        )
    elif setup == "ADMIN_ONLY":
        write_json(project, {"admin_service/a.py": lines_file(1, 0)}, "in.json")
    elif setup is not None:
        (project / "in.json").write_text(setup)
    r = voke("coverage", "gate", *args, environ=env, cwd=project)
    assert r.exit_code == code, r.stdout + r.stderr
    assert message in r.stderr
    assert r.stdout == ""
    no_traceback(r)
    j = voke("coverage", "gate", *args, "--json", environ=env, cwd=project)
    assert j.exit_code == code and j.json["ok"] is False and j.json["error"]["exit_code"] == code


def test_missing_sources_of_a_data_file(voke, env, tmp_path):
    (tmp_path / "gone.py").write_text("x = 1\n")
    (tmp_path / "main.py").write_text("import gone\n")
    coverage(tmp_path, "run", "--source=.", "main.py")
    (tmp_path / "gone.py").unlink()
    r = voke("coverage", "report", ".coverage", environ=env, cwd=tmp_path)
    assert r.exit_code == 1
    assert "the sources are missing" in r.stderr and "hint:" in r.stderr
    no_traceback(r)


def _coverage_py_total(root: Path, tmp_path: Path, *args: str) -> str:
    """`coverage report`'s TOTAL percentage, run on a copy of ROOT (it combines .coverage.* into
    .coverage and deletes them)."""
    copy = __import__("shutil").copytree(root, tmp_path / "copy")
    out = coverage(copy, "report", *args)
    return next(ln for ln in out.splitlines() if ln.startswith("TOTAL")).split()[-1].rstrip("%")


def test_gate_on_a_data_file_agrees_with_coverage_py_s_fail_under_with_the_files_beside_it(
    voke, env, tmp_path
):
    # `coverage run` + `coverage run -p`: coverage.py reports .coverage combined with .coverage.*
    root = tmp_path / "work"
    write_project(root)
    (root / "voke.toml").write_text(
        '[coverage.services.all]\npaths = ["admin_service/", "factory_service/", "tools/"]\n'
    )
    coverage(root, "run", "--branch", SOURCE_ARG, "run_a.py")
    coverage(root, "run", "--branch", "-p", SOURCE_ARG, "run_b.py")
    before = {p.name: p.read_bytes() for p in root.glob(".coverage*")}
    assert len(before) == 2
    expected = _coverage_py_total(root, tmp_path, "--precision=2")
    above = f"{float(expected) + 0.01:.2f}"
    for target, code in ((expected, 0), (above, 1)):
        copy = __import__("shutil").copytree(root, tmp_path / f"gate-{target}")
        judged = subprocess.run(
            [sys.executable, "-m", "coverage", "report", "--precision=2", f"--fail-under={target}"],
            cwd=copy, capture_output=True,
        )  # fmt: skip
        assert judged.returncode == (0 if code == 0 else 2)  # coverage.py's own gate
        r = voke("coverage", "gate", ".coverage", "--precision", "2", "--fail-under", target, "--json",
                 environ=env, cwd=root)  # fmt: skip
        assert r.exit_code == code, r.stderr
        assert r.json["result"]["totals"]["display"] == expected
    assert {p.name: p.read_bytes() for p in root.glob(".coverage*")} == before  # untouched, none deleted


def test_report_ignore_errors_skips_a_deleted_source_with_a_warning(voke, env, tmp_path):
    root = tmp_path / "work"
    write_project(root)
    (root / "voke.toml").write_text(TWO_SERVICES)
    (root / ".coveragerc").write_text("[report]\nignore_errors = True\n")
    coverage(root, "run", "--branch", SOURCE_ARG, "run_a.py")
    (root / "tools" / "cli.py").unlink()
    expected = _coverage_py_total(root, tmp_path, "--precision=2")
    r = voke("coverage", "report", ".coverage", "--precision", "2", environ=env, cwd=root)
    assert r.exit_code == 0, r.stderr
    assert re.search(rf"overall .* {re.escape(expected)}%", r.stdout)
    (said,) = [ln for ln in r.stderr.splitlines() if "Couldn't parse" in ln]
    assert said.startswith("warning: Couldn't parse '") and "tools/cli.py" in said
    assert said.endswith("(couldnt-parse)")  # coverage.py's words, without its link to the docs
    j = voke("coverage", "report", ".coverage", "--precision", "2", "--json", environ=env, cwd=root)
    assert j.json["result"]["totals"]["display"] == expected
    assert any("tools/cli.py" in w for w in j.json["result"]["warnings"])
    no_traceback(r)


def test_no_data_files_in_a_directory_hints_at_upload_artifact(voke, env, tmp_path):
    (tmp_path / "artifacts").mkdir()
    r = voke("coverage", "report", "artifacts", environ=env, cwd=tmp_path)
    assert r.exit_code == 1 and "include-hidden-files" in r.stderr


def test_startup_does_not_import_coverage_or_the_workflow():
    heavy = ("coverage", "voketag_ops.workflows.coverage", "voketag_ops.core.coverage")
    assert loaded_of("import voketag_ops.cli.app", *heavy) == []


def test_a_diff_file_that_is_no_diff_is_rejected_not_passed(voke, env, project):
    write_json(project, {"admin_service/a.py": lines_file(50, 50)})
    (project / "page.html").write_text("<html><body>not a diff</body></html>\n")
    (project / "empty.diff").write_text("")  # no change at all: n/a, a pass
    bad = voke("coverage", "diff", "coverage.json", "--diff-file", "page.html", "--fail-under", "90",
               "--json", environ=env, cwd=project)  # fmt: skip
    assert bad.exit_code == 1 and "not a unified diff" in bad.json["error"]["message"]
    empty = voke("coverage", "diff", "coverage.json", "--diff-file", "empty.diff", "--fail-under", "90",
                 environ=env, cwd=project)  # fmt: skip
    assert empty.exit_code == 0


def test_a_diff_file_is_read_within_a_limit_from_a_file_or_a_pipe(voke, env, project, monkeypatch):
    from voketag_ops.adapters.local import git_diff

    write_json(project, {"admin_service/a.py": lines_file(50, 50)})
    diff = "--- a/admin_service/a.py\n+++ b/admin_service/a.py\n@@ -1 +1 @@\n-y\n+x\n"
    (project / "c.diff").write_text(diff)
    read, write = os.pipe()  # `git diff | voke coverage diff ... --diff-file /dev/stdin`
    os.write(write, diff.encode())
    os.close(write)
    try:
        piped = voke("coverage", "diff", "coverage.json", "--diff-file", f"/dev/fd/{read}", "--json",
                     environ=env, cwd=project)  # fmt: skip
    finally:
        os.close(read)
    assert piped.exit_code == 0, piped.stderr
    assert piped.json["result"]["files"], piped.json
    # /dev/zero never ends: it was read whole (out of memory); at most the limit and a byte now
    monkeypatch.setattr(git_diff, "DIFF_LIMIT", len(diff) - 1)
    for source in ("c.diff", "/dev/zero"):
        r = voke(
            "coverage", "diff", "coverage.json", "--diff-file", source, "--json", environ=env, cwd=project
        )
        assert r.exit_code == 1 and f"larger than {len(diff) - 1:,} bytes" in r.json["error"]["message"]
        no_traceback(r)


@pytest.mark.parametrize(
    ("target", "where"),
    [('"b/admin_service/a.py\\"', "line 2, column 5"), ('"b/admin_service/a\\x4.py"', "line 2, column 23")],
)
def test_a_diff_file_git_would_not_write_is_rejected_at_its_line_and_column(
    voke, env, project, target, where
):
    write_json(project, {"admin_service/a.py": lines_file(50, 50)})
    (project / "bad.diff").write_text(f"--- a/admin_service/a.py\n+++ {target}\n@@ -1 +1 @@\n+x\n")
    (project / "long.diff").write_text("--- a/m.py\n+++ b/m.py\n@@ -1 +1," + "1" * 5001 + " @@\n+x\n")
    for name, at in (("bad.diff", where), ("long.diff", "line 3, column 10")):
        r = voke("coverage", "diff", "coverage.json", "--diff-file", name, "--json", environ=env, cwd=project)
        assert r.exit_code == 1, r.stdout + r.stderr  # was 70, internal error
        assert r.json["error"]["message"].startswith(f"{project / name}: {at}: ")


@pytest.mark.parametrize("count", ["1" + "0" * 4000, str(2**53)])
def test_a_history_count_too_large_for_a_float_is_named_by_line_and_column(voke, env, project, count):
    write_json(
        project, {"admin_service/a.py": lines_file(60, 40), "factory_service/b.py": lines_file(50, 50)}
    )
    assert voke("coverage", "history", "add", "coverage.json", environ=env, cwd=project).exit_code == 0
    hist = project / ".voke" / "coverage-history.jsonl"
    line = hist.read_text().splitlines()[0]
    value = list(re.finditer(r'"statements": ([0-9]+)', line))[-1]  # the totals' (the last key)
    column = value.start(1) + 1
    hist.write_text(line + "\n" + line[: value.start(1)] + count + line[value.end(1) :] + "\n")
    for args in (("history", "show"), ("report", "coverage.json", "--baseline-from", str(hist))):
        r = voke("coverage", *args, "--json", environ=env, cwd=project)
        assert r.exit_code == 1, r.stdout + r.stderr  # 1e4000 was exit 70 (OverflowError), 2**53 exit 0
        assert r.json["error"]["message"].startswith(f"{hist}:2:{column}: not a voke coverage history entry")


def test_names_read_from_a_history_are_shown_not_obeyed(voke, env, project):
    write_json(
        project, {"admin_service/a.py": lines_file(60, 40), "factory_service/b.py": lines_file(50, 50)}
    )
    assert voke("coverage", "history", "add", "coverage.json", environ=env, cwd=project).exit_code == 0
    hist = project / ".voke" / "coverage-history.jsonl"
    entry = json.loads(hist.read_text())
    counts = entry["services"]["admin-service"]
    entry["services"] = {"svc\x1b[2J": counts, "[bold]b[/]": counts}
    entry["ref"] = "r\x1b]0;title\x07[red]"
    hist.write_text(json.dumps(entry) + "\n")
    shown = voke("coverage", "history", "show", environ=env, cwd=project)
    report = voke(
        "coverage", "report", "coverage.json", "--baseline-from", str(hist), environ=env, cwd=project
    )
    assert shown.exit_code == 0 and report.exit_code == 0, shown.stderr + report.stderr
    for out in (shown.stdout, report.stdout):
        assert "\x1b" not in out and "\x07" not in out
    assert "svc\\x1b[2J" in shown.stdout and "[bold]b[/]" in shown.stdout  # markup shown, not applied
    assert "(r\\x1b]0;title\\x07[red])" in report.stdout


def test_a_history_path_through_a_file_is_a_one_line_error(voke, env, project):
    write_json(project, {"admin_service/a.py": lines_file(60, 40)})
    (project / "afile").write_text("")
    r = voke("coverage", "history", "show", "--file", "afile/h.jsonl", environ=env, cwd=project)
    assert r.exit_code == 1 and "afile/h.jsonl: cannot read: Not a directory" in r.stderr, r.stderr
    no_traceback(r)
