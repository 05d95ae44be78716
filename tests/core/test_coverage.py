"""Coverage arithmetic: totals, display rounding and the gate agree with coverage.py."""

from __future__ import annotations

import re

import pytest
from coverage.results import display_covered as cp_display
from coverage.results import format_lines as cp_format_lines
from coverage.results import should_fail_under as cp_should_fail_under
from hypothesis import given, settings
from hypothesis import strategies as st

from voketag_ops.core.coverage import (
    EXIT,
    UNKNOWN,
    Counts,
    DiffError,
    FileCoverage,
    PathMap,
    Region,
    Rule,
    ServiceSpec,
    assign,
    band_color,
    combine,
    diff_coverage,
    display_covered,
    file_gaps,
    format_ranges,
    function_gaps,
    gate_precision,
    group_by_service,
    line_ranges,
    lines_to_target,
    merge_files,
    missing_arcs,
    parse_bands,
    parse_unified_diff,
    passes,
    percent,
    score,
    sparkline,
    total,
    units_to_target,
    verdict,
)
from voketag_ops.testing.imports import loaded_of


def counts(num: int, den: int) -> Counts:
    return Counts(statements=den, missing=den - num, files=1)


# -- display ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num", "den", "precision", "shown"),
    [
        (130, 160, 1, "81.2"),  # 81.25 -> half-even
        (1, 8, 0, "12"),  # 12.5 -> 12
        (3, 8, 0, "38"),  # 37.5 -> 38
        (3001, 4000, 2, "75.03"),  # the double is 75.02500000000000568
        (3007, 4000, 2, "75.17"),
        (19999, 20000, 2, "99.99"),  # 99.995: never shown as 100
        (1, 1000, 0, "1"),  # 0.1: never shown as 0
        (0, 0, 0, "100"),  # nothing to cover
        (0, 10, 0, "0"),
        (10, 10, 2, "100.00"),
        (13, 16, 0, "81"),
    ],
)
def test_worked_display_cases(num, den, precision, shown):
    pc = percent(num, den)
    assert display_covered(pc, precision) == shown
    assert cp_display(pc, precision) == shown


def test_empty_report_is_100():
    assert Counts().percent == 100.0
    assert total([]).percent == 100.0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 5000), st.integers(0, 4))
def test_display_matches_coveragepy(num, den, precision):
    num = min(num, den)
    pc = percent(num, den)
    assert display_covered(pc, precision) == cp_display(pc, precision)


def test_negative_precision_is_rejected():
    with pytest.raises(ValueError):
        display_covered(50.0, -1)


# -- totals -----------------------------------------------------------------------------------------
def test_branch_totals_sum_counts_before_dividing():
    # The research fixture: 16 statements (3 missing), 4 branch exits (2 missing) -> 75.0.
    c = Counts(statements=16, missing=3, branches=4, missing_branches=2)
    assert (c.numerator, c.denominator) == (15, 20)
    assert c.percent == 75.0
    assert display_covered(c.percent, 0) == "75"
    a = Counts(statements=100, missing=10, files=1)
    b = Counts(statements=100, missing=90, files=1)
    both = a + b
    assert both.percent == 50.0  # summed, not the mean of 90 and 10 weighted otherwise
    uneven = Counts(statements=10, missing=0, branches=4, missing_branches=4) + Counts(
        statements=90, missing=45
    )
    assert uneven.percent == 100.0 * (10 + 45) / (14 + 90)


def test_file_counts_from_lines_and_branches():
    f = FileCoverage(
        "a.py",
        executed=frozenset({1, 2, 3, 5}),
        missing=frozenset({4, 6}),
        branches={2: (2, (4,)), 5: (2, ()), 6: (2, (7, EXIT))},
        has_branches=True,
    )
    c = f.counts
    assert (c.statements, c.missing, c.branches, c.missing_branches, c.partial_branches) == (6, 2, 6, 3, 1)
    assert c.percent == 100.0 * (4 + 3) / (6 + 6)


# -- the gate -------------------------------------------------------------------------------------------
def test_gate_at_79_5_against_80():
    pc = percent(795, 1000)
    assert passes(pc, 80, 0, Rule.COVERAGE)  # rounds to 80, as coverage.py does
    assert passes(pc, 80, 0, Rule.COVERAGE_716)
    assert not passes(pc, 80, 0, Rule.STRICT)
    s = score("admin-service", counts(795, 1000), target=80, baseline=70, precision=0, rule=Rule.COVERAGE)
    assert s.passed and not s.passed_strict and s.by_rounding
    assert "passes 80 by rounding (exact 79.50%" in verdict(s, 0, Rule.COVERAGE)
    strict = score("admin-service", counts(795, 1000), target=80, baseline=70, precision=0, rule=Rule.STRICT)
    assert strict.passed is False
    assert "strict" in verdict(strict, 0, Rule.STRICT)


def test_gate_80_5_fails_81_and_100_needs_exactly_100():
    assert not passes(percent(805, 1000), 81, 0)
    assert not passes(percent(805, 1000), 81, 0, Rule.STRICT)
    assert not passes(percent(19999, 20000), 100, 2)
    assert passes(100.0, 100, 0)
    assert passes(percent(949, 1000), 95, 0)  # 94.9 rounds to 95


def test_target_decimals_raise_the_precision_in_717_only():
    assert gate_precision(80.2, 0, Rule.COVERAGE) == 1
    assert gate_precision(80.2, 0, Rule.COVERAGE_716) == 0
    assert gate_precision(80.0, 2, Rule.COVERAGE) == 2
    assert passes(80.16, 80.2, 0, Rule.COVERAGE)  # round(80.16, 1) = 80.2
    assert not passes(80.16, 80.2, 0, Rule.COVERAGE_716)  # round(80.16, 0) = 80 < 80.2


@pytest.mark.parametrize("target", [-1, 100.5])
def test_target_out_of_range(target):
    with pytest.raises(ValueError, match="between 0 and 100"):
        passes(50.0, target, 0)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 3000),
    st.integers(1, 3000),
    st.sampled_from([0, 50, 79.5, 80, 80.2, 80.25, 90, 95, 99.9, 100]),
    st.integers(0, 3),
)
def test_coverage_rule_matches_coveragepy_should_fail_under(num, den, target, precision):
    pc = percent(min(num, den), den)
    assert passes(pc, target, precision, Rule.COVERAGE) == (not cp_should_fail_under(pc, target, precision))


# -- lines to target ----------------------------------------------------------------------------------
def test_lines_to_target_worked_case():
    c = counts(780, 1000)
    assert lines_to_target(c, 80, 0, Rule.COVERAGE) == 15  # 795/1000 rounds to 80
    assert lines_to_target(c, 80, 0, Rule.STRICT) == 20
    assert lines_to_target(counts(800, 1000), 80, 0) == 0


def test_lines_alone_may_not_reach_the_target():
    c = Counts(statements=10, missing=1, branches=10, missing_branches=10)  # 9/20 = 45 %
    assert lines_to_target(c, 80, 0) is None
    assert units_to_target(c, 80, 0) == 7  # 16/20
    s = score("x", c, target=80, baseline=None, precision=0, rule=Rule.COVERAGE)
    assert "cover all 1 missed statement and 6 branch exits" in verdict(s, 0, Rule.COVERAGE)
    # every statement covered: only the exits (it read "cover all 0 missed statements and 1 branch exit")
    full = score("y", Counts(statements=10, missing=0, branches=10, missing_branches=3), target=90, baseline=None,
                 precision=0, rule=Rule.COVERAGE)  # fmt: skip
    assert verdict(full, 0, Rule.COVERAGE) == "y: 85% fails target 90: 85% < 90; cover 1 branch exit"


def _brute(c: Counts, target: float, precision: int, rule: Rule) -> int | None:
    for k in range(c.missing + 1):
        if passes(percent(c.numerator + k, c.denominator), target, precision, rule):
            return k
    return None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 400),
    st.integers(0, 400),
    st.integers(0, 60),
    st.integers(0, 60),
    st.sampled_from([0, 33.3, 50, 79.5, 80, 80.25, 95, 99, 100]),
    st.integers(0, 2),
    st.sampled_from(list(Rule)),
)
def test_lines_to_target_is_the_brute_force_minimum(stmts, missing, branches, missing_br, target, p, rule):
    c = Counts(
        statements=stmts,
        missing=min(missing, stmts),
        branches=branches,
        missing_branches=min(missing_br, branches),
    )
    assert lines_to_target(c, target, p, rule) == _brute(c, target, p, rule)


# -- files, ranges, merging ---------------------------------------------------------------------------
def test_line_ranges_continue_over_non_statements():
    statements = [1, 2, 3, 5, 8, 9, 10, 11, 15, 18]
    runs = line_ranges(statements, [2, 3, 5, 9, 10, 11, 18])
    assert runs == [(2, 5), (9, 11), (18, 18)]
    assert format_ranges(runs) == "2-5, 9-11, 18"


def test_missing_arcs_are_coverage_report_s_and_in_its_order():
    # coverage.py's format_lines: sorted by (line, text), so 14->15 before 14->9 before 14->exit; no
    # exit from a line that never ran (20) or to a missed line (22); a destination unknown (30) is not written
    f = FileCoverage(
        "m.py", frozenset({2, 14, 15, 30, 40}), frozenset({20, 22}),
        branches={40: (2, (41,)), 14: (4, (EXIT, 9, 15)), 20: (2, (21,)), 2: (2, (22,)), 30: (2, (UNKNOWN,))},
        has_branches=True,
    )  # fmt: skip
    assert missing_arcs(f) == "14->15, 14->9, 14->exit, 40->41"
    said = cp_format_lines(f.statements, f.missing, {40: [41], 14: [-1, 9, 15], 20: [21], 2: [22]}.items())
    assert said == "14->15, 14->9, 14->exit, 20-22, 40->41"  # coverage.py's own Missing column
    assert missing_arcs(f, frozenset({30, 40})) == "40->41"
    [gap] = file_gaps([f], "s", 0, 10)
    assert (gap.missing_lines, gap.missing_arcs) == ("20-22", "14->15, 14->9, 14->exit, 40->41")


def test_merge_is_a_union_of_what_ran():
    a = FileCoverage("m.py", frozenset({1, 2}), frozenset({3, 4}), branches={2: (2, (3,))}, has_branches=True)
    b = FileCoverage(
        "m.py", frozenset({1, 3}), frozenset({2, 4}), branches={2: (2, (EXIT,))}, has_branches=True
    )
    m = merge_files(a, b)
    assert m.executed == {1, 2, 3}
    assert m.missing == {4}
    assert m.branches[2] == (2, ())
    assert m.counts.percent == 100.0 * (3 + 2) / (4 + 2)
    # counts-only inputs (Cobertura without missing-branches) keep the smaller miss count
    c = FileCoverage("m.py", frozenset({1}), frozenset(), branches={1: (4, (UNKNOWN,) * 3)})
    d = FileCoverage("m.py", frozenset({1}), frozenset(), branches={1: (4, (UNKNOWN,))})
    assert merge_files(c, d).branches[1] == (4, (UNKNOWN,))
    assert list(combine([a, b, c])) == ["m.py"]


# -- paths and services ---------------------------------------------------------------------------
def test_path_map_like_coveragepy_paths():
    pm = PathMap((("/app/src/", ""), ("/home/runner/work/*/*/", ""), ("C:\\build\\", "")))
    assert pm.apply("/app/src/admin_service/a.py") == "admin_service/a.py"
    assert pm.apply("/home/runner/work/voke/voke/factory_service/b.py") == "factory_service/b.py"
    assert pm.apply("C:\\build\\admin_service\\x.py") == "admin_service/x.py"
    assert pm.apply("/app/srcx/a.py") == "/app/srcx/a.py"  # a prefix is a directory
    assert pm.apply("./admin_service//a.py") == "admin_service/a.py"


def test_longest_prefix_wins_and_unassigned_is_kept():
    specs = [
        ServiceSpec("services", ("services/",), 80),
        ServiceSpec("admin", ("services/admin/",), 90),
    ]
    assert assign("services/admin/x.py", specs) == "admin"
    assert assign("services/factory/y.py", specs) == "services"
    assert assign("services/adminx/y.py", specs) == "services"
    assert assign("tools/z.py", specs) is None
    files = [FileCoverage(p, frozenset({1}), frozenset()) for p in ("services/admin/x.py", "tools/z.py")]
    grouped, unassigned = group_by_service(files, specs)
    assert [f.path for f in grouped["admin"]] == ["services/admin/x.py"]
    assert [f.path for f in unassigned] == ["tools/z.py"]


def test_service_aggregation_from_summed_counts():
    admin, factory = counts(90, 100), counts(10, 100)
    overall = admin + factory
    assert overall.percent == 50.0
    rows = [
        score(n, c, target=80, baseline=None, precision=0, rule=Rule.COVERAGE)
        for n, c in (("admin-service", admin), ("factory-service", factory))
    ]
    assert [r.passed for r in rows] == [True, False]


# -- gaps -------------------------------------------------------------------------------------------
def test_gaps_rank_files_and_functions():
    f = FileCoverage(
        "a.py",
        frozenset({1, 2, 10}),
        frozenset({3, 4, 5, 11}),
        branches={2: (2, (3,))},
        regions=(
            Region("big", "function", 2, frozenset({2, 3, 4, 5})),
            Region("small", "function", 10, frozenset({10, 11})),
            Region("", "function", 1, frozenset({1})),
        ),
        has_branches=True,
    )
    g = FileCoverage("b.py", frozenset({1}), frozenset({2}))
    files = file_gaps([g, f], "svc", 0, 10)
    assert [x.path for x in files] == ["a.py", "b.py"]
    assert files[0].missing_lines == "3-5, 11"
    funcs = function_gaps([f], "svc", 10)
    assert [(x.name, x.missing, x.missing_branches) for x in funcs] == [("big", 3, 1), ("small", 1, 0)]
    module = FileCoverage(
        "c.py", frozenset(), frozenset({1}), regions=(Region("", "function", 1, frozenset({1})),)
    )
    assert function_gaps([module], "svc", 10)[0].name == "(module level)"


# -- diff coverage --------------------------------------------------------------------------------
DIFF = """\
diff --git a/pkg/m.py b/pkg/m.py
index 1..2 100644
--- a/pkg/m.py
+++ b/pkg/m.py
@@ -1,0 +2,3 @@ def f():
+    a = 1
+    b = 2
+    # comment
@@ -10 +12,2 @@
-old
+new1
+new2
diff --git a/gone.py b/gone.py
--- a/gone.py
+++ /dev/null
@@ -1 +0,0 @@
-x
diff --git "a/sp\\303\\251cial.py" "b/sp\\303\\251cial.py"
--- "a/sp\\303\\251cial.py"
+++ "b/sp\\303\\251cial.py"
@@ -0,0 +1 @@
+x = 1
"""


def test_parse_unified_diff():
    changed = parse_unified_diff(DIFF)
    assert changed == {"pkg/m.py": {2, 3, 4, 12, 13}, "spécial.py": {1}}


def test_parse_unified_diff_counts_hunk_lines_off_against_their_header():
    # Added "++ a", removed "-- b" and an added "diff x" read like file headers but are lines.
    text = (
        "--- a/app.py\n+++ b/app.py\n"
        "@@ -1,3 +1,5 @@\n x = 1\n++++ a\n---- b\n+diff --git a/c b/c\n \n+y = 2\n"
        "\\ No newline at end of file\n"
        "@@ -30,1 +32 @@\n-old\n+new\n"
        "--- a/other.py\n+++ b/other.py\n@@ -0,0 +1 @@\n+z = 3\n"
    )
    assert parse_unified_diff(text) == {"app.py": {2, 3, 5, 32}, "other.py": {1}}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("diff --git a/s/app.py b/s/app.py\n--- a/s/app.py\n+++ b/s/app.py\n", "s/app.py"),
        ("diff --git i/s/app.py w/s/app.py\n--- i/s/app.py\n+++ w/s/app.py\n", "s/app.py"),  # mnemonic
        ("diff --git s/app.py s/app.py\n--- s/app.py\n+++ s/app.py\n", "s/app.py"),  # --no-prefix
        ("diff --git s/new.py s/new.py\nnew file mode 100644\n--- /dev/null\n+++ s/new.py\n", "s/new.py"),
        ("diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n", "new.py"),
        ("--- app.py\n+++ app.py\n", "app.py"),  # a plain diff -u
    ],
)
def test_a_git_prefix_is_dropped_only_where_the_two_sides_differ(header, expected):
    assert parse_unified_diff(header + "@@ -0,0 +1 @@\n+x = 1\n") == {expected: {1}}


@pytest.mark.parametrize(
    ("line", "column", "message"),
    [
        ('+++ "b/m\\"', 5, "without its closing quote"),  # the closing quote escaped
        ('+++ "b/m\\x4"', 9, 'escape \\x4" is not one git writes'),  # (was a truncated \\xXX escape)
        ('+++ "b/m\\N{BULLET}.py"', 9, "is not one git writes"),  # git writes \\342\\200\\242
        ('+++ "b/m.py"x', 13, "text after a quoted path"),
        ("@@ -1 +1," + "1" * 5001 + " @@", 10, "number of over 10 digits"),  # int() refuses 4,300+ digits
        ("@@ -" + "9" * 11 + " +1 @@", 5, "number of over 10 digits"),
    ],
)
def test_a_diff_git_would_not_write_is_refused_at_its_line_and_column(line, column, message):
    with pytest.raises(DiffError, match=re.escape(message)) as caught:
        parse_unified_diff("diff --git a/m.py b/m.py\n--- a/m.py\n" + line + "\n+x\n")
    assert (caught.value.line, caught.value.column) == (3, column)


@pytest.mark.parametrize(
    ("text", "at", "message"),
    [
        # cut off at the end (`git diff | head`): the hunk counted 2 more lines, the "" after the last
        # "\n" is no empty context line
        (
            DIFF.split("@@ -10")[0] + "@@ -10,3 +12,4 @@\n x\n-old\n+new1\n",
            (13, 1),
            "1 old and 2 new lines short",
        ),
        ("--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n-a\n+b", (5, 3), "1 old and 1 new line short"),
        # a hunk that runs short took the next file's header and lines for its own (counted for m.py)
        (DIFF.replace("@@ -10 +12,2 @@", "@@ -10,2 +12,3 @@"), (13, 1), "1 old and 1 new line short"),
        ("--- a/m.py\n+++ b/m.py\n@@ -1 +1,2 @@\n-a\n-b\n+c\n", (5, 1), "more old lines than its header"),
        ("--- a/m.py\n+++ b/m.py\n@@ -1 +1,2 @@\n+a\n+b\n x\n", (6, 1), "more new lines than its header"),
    ],
)
def test_a_hunk_with_other_lines_than_its_header_counts_is_refused_as_git_apply_refuses_it(text, at, message):
    with pytest.raises(DiffError, match=message) as caught:
        parse_unified_diff(text)
    assert (caught.value.line, caught.value.column) == at


def test_a_hunk_takes_every_line_git_writes_in_one():
    # an empty context line (diff.suppressBlankEmpty, GNU diff), "\ No newline at end of file" inside
    # a hunk and after it, CRLF line ends, and a diff without a final newline
    text = (
        "--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,4 @@\n x = 1\n\n-y = 2\n\\ No newline at end of file\n"
        "+y = 3\n+z = 4\n\\ No newline at end of file\n"
    )
    assert parse_unified_diff(text) == {"m.py": {3, 4}}
    assert parse_unified_diff(text.replace("\n", "\r\n")) == {"m.py": {3, 4}}
    assert parse_unified_diff(text.removesuffix("\n")) == {"m.py": {3, 4}}
    assert parse_unified_diff(DIFF.removesuffix("\n")) == parse_unified_diff(DIFF)


def test_a_quoted_path_takes_every_escape_git_writes():
    quoted = '"b/a\\tb\\"d\\303\\251.py"'
    assert parse_unified_diff(f"--- a/x\n+++ {quoted}\n@@ -0,0 +1 @@\n+x\n") == {'a\tb"dé.py': {1}}


def test_diff_coverage_counts_only_measured_changed_lines():
    executed = frozenset(range(1, 8))
    missing = frozenset({8, 9, 10})
    f = FileCoverage("pkg/m.py", executed, missing)
    changed = {"pkg/m.py": set(range(1, 11)) | {50}, "README.md": {1, 2}}
    d = diff_coverage(changed, {"pkg/m.py": f}, 0)
    assert (d.measured, d.covered, d.percent, d.display) == (10, 7, 70.0, "70")
    assert d.files[0].uncovered_ranges == ((8, 10),)
    none = diff_coverage({"README.md": {1}}, {"pkg/m.py": f}, 0)
    assert none.percent is None and none.display == "n/a"


# -- badge colours, sparkline ---------------------------------------------------------------------
def test_bands_and_sparkline():
    assert band_color(95) == "#4c1"
    assert band_color(80) == "#97ca00"
    assert band_color(10) == "#e05d44"
    bands = parse_bands("90:brightgreen, 50:#123456, 0:red")
    assert band_color(60, bands) == "#123456"
    with pytest.raises(ValueError):
        parse_bands("90-green")
    with pytest.raises(ValueError):
        parse_bands("90:notacolour")
    assert sparkline([0, 50, 100]) == "▁▅█"
    assert sparkline([70, 70]) == "▅▅"
    assert sparkline([]) == ""


def test_core_imports_no_cli_or_cloud_libraries():
    imports = "import voketag_ops.core.coverage, voketag_ops.core.coverage_svg"
    assert loaded_of(imports, "typer", "rich", "psycopg", "google", "pydantic", "coverage") == []


@given(st.text(st.characters(exclude_categories=()), max_size=40))  # lone surrogates too
def test_badge_is_well_formed_xml_whatever_the_label(label):
    from xml.dom import minidom

    from voketag_ops.core.coverage_svg import badge

    svg = badge(label, "75%", "#4c1")
    doc = minidom.parseString(svg.encode())
    printable = "".join(
        "\ufffd" if "\ud800" <= c <= "\udfff" else c for c in label if c >= " " and c not in "\ufffe\uffff"
    )
    assert doc.documentElement.getAttribute("aria-label") == f"{printable}: 75%"


@given(st.floats(0, 100), st.sampled_from([50.0, 79.5, 80.0, 99.99, 100.0]))
def test_exact_text_lands_on_the_side_of_the_target_the_value_is_on(percent, target):
    from voketag_ops.core.coverage import exact_text

    shown = float(exact_text(percent, target))
    assert (shown < target) == (percent < target) and (shown == target) == (percent == target)


def test_a_pass_by_rounding_never_shows_the_target_as_its_exact_value():
    from voketag_ops.core.coverage import exact_text

    assert exact_text(100 * 79999 / 100000, 80.0) == "79.999"
    assert exact_text(100 * 16000 / 20001, 80.0) == "79.996"
