"""core.ingest: every rule of the batch file, one test per bad input, pure (no database)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voketag_ops.core import ingest as ing
from voketag_ops.core import merkle

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HEADER = "tag_id,sku,product_name,factory_id,manufactured_at\n"
TS = "2024-05-01T10:00:00+00:00"


def row(tag: str = "T1", sku: str = "SKU-1", name: str = "Shoe", fac: str = "FAC-01", ts: str = TS) -> str:
    return f"{tag},{sku},{name},{fac},{ts}\n"


def run(data: bytes | str, *, chunk: int | None = None, **kw) -> ing.BatchValidator:
    raw = data.encode() if isinstance(data, str) else data
    v = ing.BatchValidator(now=NOW, keep_rejected=True, **kw)
    v.copy = b""  # type: ignore[attr-defined]
    v.rejected = []  # type: ignore[attr-defined]
    step = chunk or max(len(raw), 1)
    for i in range(0, len(raw), step):
        piece = v.feed(raw[i : i + step])
        v.copy += piece.copy_data  # type: ignore[attr-defined]
        v.rejected += piece.rejected  # type: ignore[attr-defined]
    piece = v.finish()
    v.copy += piece.copy_data  # type: ignore[attr-defined]
    v.rejected += piece.rejected  # type: ignore[attr-defined]
    return v


def only_problem(v: ing.BatchValidator) -> ing.Problem:
    assert v.error_count == 1, v.problems
    return v.problems[0]


# -- accepted files ------------------------------------------------------------------------


def test_a_good_file_is_accepted_and_sealed():
    v = run(HEADER + row("T1") + row("T2", sku="SKU-2", name="Boot"))
    assert v.ok and v.rows_total == 2 and v.rows_accepted == 2
    leaves = [
        f"T1\tSKU-1\tShoe\tFAC-01\t{TS.replace('+', '.000000+')}\t\t\t".encode(),
        f"T2\tSKU-2\tBoot\tFAC-01\t{TS.replace('+', '.000000+')}\t\t\t".encode(),
    ]
    assert v.copy == b"\n".join(leaves) + b"\n"
    assert v.seal.root == merkle.root(leaves) and v.seal.size == 2


def test_columns_in_any_order_optional_columns_and_unknown_columns_warn():
    text = (
        "Lot, manufactured_at ,factory_id,notes,product_name,sku,tag_id,color\n"
        f"L1,{TS},F1,anything,Shoe,S1,T1,red\n"
    )
    v = run(text)
    assert v.ok, v.problems
    assert v.warnings == ["ignoring unknown column(s): 'notes'"]
    assert v.copy.decode().split("\t") == [
        "T1",
        "S1",
        "Shoe",
        "F1",
        "2024-05-01T10:00:00.000000+00:00",
        "L1",
        "red",
        "\n",
    ]


def test_bom_crlf_and_rfc4180_quoting():
    text = '\ufefftag_id,sku,product_name,factory_id,manufactured_at\r\nT1,S1,"Shoe, ""red""",F1,2024-05-01T12:00:00+02:00\r\n'
    v = run(text.encode("utf-8"))
    assert v.ok, v.problems
    assert v.copy == b'T1\tS1\tShoe, "red"\tF1\t2024-05-01T10:00:00.000000+00:00\t\t\t\n'


def test_fields_are_trimmed_and_times_normalised_to_utc():
    v = run(HEADER + " T1 ,  S1, Shoe ,F1 , 2024-05-01T10:00:00.5Z \n")
    assert v.copy == b"T1\tS1\tShoe\tF1\t2024-05-01T10:00:00.500000+00:00\t\t\t\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_blank_line_is_a_rejected_row_on_its_line(newline):
    # RFC 4180 has no blank records; in a factory's file a blank line is a hand edit, maybe a row
    # deleted: said, never skipped. With --partial the other rows load and it is in the rejects.
    v = run((HEADER + row("T1") + "\n" + row("T2") + "\n").replace("\n", newline))
    assert [(p.line, p.column, p.code) for p in v.problems] == [(3, 1, "field_count"), (5, 1, "field_count")]
    assert v.problems[0].message == "blank line: a row has 5 fields; remove the line"
    assert (v.rows_total, v.rows_accepted, v.rows_rejected) == (4, 2, 2)
    assert [(r.line, r.record) for r in v.rejected] == [(3, ""), (5, "")]


@pytest.mark.parametrize("data", ["\n\n\n", "\r\n", "\ufeff\n"])
def test_a_file_of_only_blank_lines_has_no_header_line(data):
    p = only_problem(run(data))
    assert (p.line, p.column, p.code) == (1, None, "missing_column")
    assert p.message == "no header line: the file has only blank lines"


def test_a_blank_first_line_is_no_header_line():
    v = run("\n\n" + HEADER + row("T1"))
    p = only_problem(v)
    assert (p.line, p.column, p.code) == (1, None, "missing_column")
    assert p.message.startswith("no header line: line 1 is blank (")
    assert "line 3 is the first with text" in p.message
    assert v.fatal and v.rows_total == 0


def test_feeding_byte_by_byte_gives_the_same_result():
    text = (
        "\ufeff"
        + HEADER
        + row("T1")
        + row("T2", sku="S9", name='"Shoe, big"')
        + "T3,S2,Ünïcode,F,2024-01-01T00:00:00Z\n"
    ).encode()
    whole = run(text)
    tiny = run(text, chunk=1)
    assert whole.ok and tiny.ok
    assert whole.copy == tiny.copy and whole.seal == tiny.seal


def test_backslashes_are_escaped_for_copy_but_not_in_the_leaf():
    v = run(HEADER + row(name="a\\b"))
    assert v.copy == f"T1\tSKU-1\ta\\\\b\tFAC-01\t{TS.replace('+', '.000000+')}\t\t\t\n".encode()
    assert v.seal.root == merkle.root(
        [f"T1\tSKU-1\ta\\b\tFAC-01\t{TS.replace('+', '.000000+')}\t\t\t".encode()]
    )


def test_a_sku_known_from_earlier_batches_with_the_same_name_is_fine():
    v = run(HEADER + row(sku="S1", name="Shoe"), known_products={"S1": "Shoe"})
    assert v.ok


def test_without_require_final_newline_a_last_row_without_line_break_is_accepted():
    v = run(HEADER + row().rstrip("\n"), require_final_newline=False)
    assert v.ok and v.rows_accepted == 1


@pytest.mark.parametrize("chunk", [None, 7])
def test_a_lone_cr_ending_the_file_is_a_control_character_or_a_cut_row(chunk):
    crlf = (HEADER + row()).replace("\n", "\r\n")
    cut = crlf[:-1]  # cut between CR and LF, or a last line ended by a lone CR
    assert run(crlf, chunk=chunk, require_final_newline=False).ok
    p = only_problem(run(cut, chunk=chunk, require_final_newline=False))
    assert (p.line, p.code) == (2, "control_character")
    assert only_problem(run(cut, chunk=chunk)).code == "truncated"  # the default: the cut alone


# -- rejected files: one test per case ---------------------------------------------------


def test_file_over_the_size_limit():
    p = ing.check_size(101, 100)
    assert p is not None and p.code == "file_too_large" and p.line is None
    assert ing.check_size(100, 100) is None


def test_empty_file():
    p = only_problem(run(b""))
    assert (p.line, p.code) == (1, "empty_file")


@pytest.mark.parametrize("chunk", [None, 1])
def test_bom_only_is_an_empty_file_that_says_it_holds_a_bom(chunk):
    p = only_problem(run(b"\xef\xbb\xbf", chunk=chunk))
    assert (p.line, p.code) == (1, "empty_file")
    assert "only a byte-order mark" in p.message


def test_header_only():
    v = run(HEADER)
    p = only_problem(v)
    assert (p.line, p.code) == (2, "no_rows")
    assert not v.ok


def test_missing_header_column():
    p = only_problem(run("tag_id,sku,product_name,manufactured_at\n" + "T1,S,N,2024-01-01T00:00:00Z\n"))
    assert (p.line, p.column, p.code) == (1, None, "missing_column")
    assert "factory_id" in p.message


def test_control_characters_in_the_header_are_rejected_and_never_echoed_raw():
    v = run("tag_id\x1b[31mRED,sku,product_name,factory_id,manufactured_at\n" + row())
    codes = [(p.line, p.column, p.code) for p in v.problems]
    assert v.fatal and (1, 7, "control_character") in codes and "missing_column" in [c for *_, c in codes]
    assert all("\x1b" not in p.message for p in v.problems)
    assert "'tag_id\\x1b[31mRED'" in next(p.message for p in v.problems if p.code == "missing_column")
    v = run("tag_id,sku,product_name,factory_id,manufactured_at,Notes\x0b\n" + row().replace("\n", ",n\n"))
    assert v.fatal and [(p.column, p.code) for p in v.problems] == [(57, "control_character")]


def test_unknown_columns_are_named_as_written():
    v = run("tag_id,sku,product_name,factory_id,manufactured_at,Batch Notes\n" + row().replace("\n", ",x\n"))
    assert v.ok and v.warnings == ["ignoring unknown column(s): 'Batch Notes'"]


def test_an_unknown_column_written_twice_is_named_once():
    v = run(
        "tag_id,sku,product_name,factory_id,manufactured_at,extra,extra,note\n"
        + row().replace("\n", ",x,y,z\n")
    )
    assert v.ok and v.warnings == ["ignoring unknown column(s): 'extra', 'note'"]


def test_duplicated_header_column():
    v = run("tag_id,sku,product_name,factory_id,manufactured_at,sku\n" + row().rstrip("\n") + ",X\n")
    p = only_problem(v)
    assert (p.line, p.column, p.code) == (1, 52, "duplicate_column")
    assert v.fatal and v.rows_accepted == 0


def test_wrong_field_count_too_many():
    p = only_problem(run(HEADER + row().rstrip("\n") + ",extra\n"))
    assert (p.line, p.code) == (2, "field_count")
    assert p.column == len(row()) + 1  # where the extra field starts


def test_wrong_field_count_too_few():
    p = only_problem(run(HEADER + "T1,S,N,F\n"))
    assert (p.line, p.column, p.code) == (2, 9, "field_count")


def test_unterminated_quote_runs_to_the_end_of_the_file_which_is_cut():
    # RFC 4180: the open quote takes the line break and every line after it; the file ends inside
    # the record, as an upload cut in a quoted field does: refused whole, --partial too.
    v = run(HEADER + 'T1,S,"Shoe,F,' + TS + "\n" + row("T2") + row("T3"))
    assert [(p.line, p.column, p.code) for p in v.problems] == [
        (2, 6, "unterminated_quote"),
        (2, 6, "truncated"),
    ]
    assert v.fatal and v.rows_total == 1 and v.rows_accepted == 0  # T2 and T3 are inside its quotes


ML_FILE = (
    "tag_id,sku,product_name,factory_id,manufactured_at\n"
    'TML1,SML1,"Jacket, see note:\n'
    "TML2,SML2,Not a row,F,2024-01-01T00:00:00Z\n"
    'end of note",F,2024-01-01T00:00:00Z\n'
    "TML3,SML3,Boot,F,2024-01-01T00:00:00Z\n"
)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_a_quoted_field_spanning_lines_is_one_rejected_record_and_nothing_in_it_is_a_row(chunk, newline):
    v = run(ML_FILE.replace("\n", newline), chunk=chunk)
    assert (v.rows_total, v.rows_accepted, v.rows_rejected) == (2, 1, 1)
    assert v.copy.startswith(b"TML3\t")  # TML2 is text inside TML1's quotes
    (p,) = v.problems
    assert (p.line, p.column, p.code) == (2, 11, "control_character")  # the field, on its first line
    assert "product_name: line break inside a quoted field, which runs on to line 4" in p.message
    (rejected,) = v.rejected
    assert rejected.line == 2 and rejected.record == ML_FILE.splitlines()[1] + "\n" + "\n".join(
        ML_FILE.splitlines()[2:4]
    )
    assert not v.fatal


def test_lines_after_a_record_that_spans_lines_keep_their_numbers():
    v = run(HEADER + row("T1") + 'T2,S,"a\n\nb",F,' + TS + "\n" + row("T3") + "T4,S,Shoe,F,never\n")
    assert [(p.line, p.code) for p in v.problems] == [(3, "control_character"), (7, "bad_timestamp")]
    assert v.rows_accepted == 2


def test_a_line_break_in_an_ignored_column_rejects_the_record_too():
    # One record per line is what a rejected row is found again by (its line, in the file).
    v = run(
        HEADER.replace("\n", ",notes\n") + row().replace("\n", ',"a\nb"\n') + row("T2").replace("\n", ",n\n")
    )
    (p,) = v.problems
    assert (p.line, p.column, p.code) == (2, 48, "control_character") and p.message.startswith("notes: ")
    assert v.rows_accepted == 1


def test_a_record_spanning_lines_over_the_limit_is_skipped_whole_without_holding_it():
    note = ("x" * 1000 + "\n" + 'a,""quoted""\n') * (ing.MAX_LINE_BYTES // 1000)  # no row of its own
    data = HEADER + row("T1") + 'T2,S,"' + note + '",F,' + TS + "\n" + row("T3")
    for chunk in (1 << 16, 999):
        v = run(data, chunk=chunk)
        (p,) = v.problems
        assert (p.line, p.code) == (3, "line_too_long") and "the record from line 3" in p.message
        assert v.rows_total == 3 and v.rows_accepted == 2 and v.copy.count(b"\n") == 2
        assert max(len(r.record) for r in v.rejected) == 200
    v = run(HEADER + row("T1") + 'T2,S,"' + note, chunk=1 << 16)  # and never closed: cut
    assert [(p.line, p.code) for p in v.problems] == [
        (3, "line_too_long"),
        (note.count("\n") + 3, "truncated"),
    ]
    assert v.fatal


def test_stray_quote_in_an_unquoted_field():
    p = only_problem(run(HEADER + 'T1,S,Sho"e,F,' + TS + "\n"))
    assert (p.line, p.column, p.code) == (2, 9, "bad_quote")


def test_text_after_a_closing_quote():
    p = only_problem(run(HEADER + 'T1,S,"Shoe"x,F,' + TS + "\n"))
    assert (p.line, p.column, p.code) == (2, 12, "bad_quote")


def test_invalid_utf8():
    v = run(HEADER.encode() + b"T1,S,Sh\xffoe,F," + TS.encode() + b"\n" + row("T2").encode())
    p = only_problem(v)
    assert (p.line, p.column, p.code) == (2, 8, "invalid_utf8")
    assert v.rows_accepted == 1


def test_invalid_utf8_column_counts_characters_not_bytes():
    p = only_problem(run(HEADER.encode() + "T1,S,Ünï".encode() + b"\xc3(,F," + TS.encode() + b"\n"))
    assert (p.line, p.column) == (2, 9)


def test_nul_byte():
    p = only_problem(run(HEADER.encode() + b"T1,S,Sh\x00oe,F," + TS.encode() + b"\n"))
    assert (p.line, p.column, p.code) == (2, 8, "nul_byte")


def test_nul_byte_in_the_header():
    v = run(b"tag_id,sku\x00,product_name,factory_id,manufactured_at\n" + row().encode())
    assert v.fatal and v.problems[0].code == "nul_byte" and v.problems[0].line == 1


def test_control_character_in_a_field():
    p = only_problem(run(HEADER + "T1,S,Sh\toe,F," + TS + "\n"))
    assert (p.line, p.column, p.code) == (2, 8, "control_character")


def test_c1_control_character_in_a_field():
    p = only_problem(run(HEADER + "T1,S,Sh\x85oe,F," + TS + "\n"))
    assert (p.line, p.column, p.code) == (2, 8, "control_character")


@pytest.mark.parametrize(("field", "column"), [('"ab\x01"', 10), ('"a""b""c\x7f"', 15), ('"Sh\toe"', 10)])
def test_control_character_in_a_quoted_field_is_located_in_the_line(field, column):
    p = only_problem(run(HEADER + f"T1,S1,{field},F,{TS}\n"))
    assert (p.line, p.column, p.code) == (2, column, "control_character")


def test_bare_carriage_return():
    p = only_problem(run(HEADER + "T1,S,Sh\roe,F," + TS + "\n"))
    assert (p.line, p.column, p.code) == (2, 8, "control_character")


def test_a_bare_carriage_return_that_changes_the_field_count_is_named_where_it_is():
    v = run(HEADER + "B1,S1,N,F," + TS + "\rB2,S1,N,F," + TS + "\n")
    found = [(p.line, p.column, p.code) for p in v.problems]
    assert (2, 11 + len(TS), "control_character") in found and "field_count" in [c for *_, c in found]


@pytest.mark.parametrize(
    ("name", "char"),
    [("sku", "SKU-1\u200b"), ("product_name", "\u200b"), ("product_name", "\u202ekcab"), ("product_name", "a\u2028b"),
     ("product_name", "a\ufeffb"), ("lot", "L\u2066x\u2069")],
)  # fmt: skip
def test_invisible_characters_are_refused_in_every_field(name, char):
    fields = {"tag_id": "T1", "sku": "SKU-1", "product_name": "Shoe", "factory_id": "F", "manufactured_at": TS,
              "lot": "L1"}  # fmt: skip
    fields[name] = char
    text = ",".join(fields) + "\n" + ",".join(fields.values()) + "\n"
    p = only_problem(run(text))
    at = len(",".join(list(fields.values())[: list(fields).index(name)])) + (1 if name != "tag_id" else 0)
    invisible = next(c for c in char if c in ing.INVISIBLE)
    assert (p.line, p.column, p.code) == (2, at + 1 + char.index(invisible), "invisible_character")
    assert f"U+{ord(invisible):04X}" in p.message and name in p.message


# Each refused the same way: SKU-1 with it looks like SKU-1 (so it would pass the collision rule).
_ALSO_INVISIBLE = [0x00AD, 0x061C, 0x180E, *range(0x206A, 0x2070), 0xFFF9, 0xFFFA, 0xFFFB, 0xE0000, 0xE0001,
                   0xE0041, 0xE007F]  # fmt: skip


@pytest.mark.parametrize("code", _ALSO_INVISIBLE, ids=lambda c: f"U+{c:04X}")
def test_format_characters_that_look_like_nothing_are_invisible(code):
    v = run(HEADER + row("T1") + row("T2", sku=f"SKU-{chr(code)}1") + row("T3", name=f"Sh{chr(code)}oe"))
    found = [(p.line, p.column, p.code) for p in v.problems]
    assert found == [(3, 8, "invisible_character"), (4, 12, "invisible_character")]
    assert all(f"U+{code:04X}" in p.message for p in v.problems) and v.rows_accepted == 1


@given(st.characters(blacklist_categories=("Cs",)))
@settings(max_examples=500, deadline=None)
def test_the_byte_level_check_finds_exactly_the_invisible_characters(char):
    # The byte pre-check decides which lines get the careful look: a character it missed
    # would pass unchecked, one it found in vain costs only time.
    form = char.encode()
    found = any(lead in form and pattern.search(form) for lead, pattern in ing._INVISIBLE_UTF8)
    assert bool(found) == (char in ing.INVISIBLE)


def test_every_invisible_character_is_found_by_the_byte_level_check():
    for char in ing.INVISIBLE:
        form = b"x" + char.encode() + b"y"
        assert any(lead in form and pattern.search(form) for lead, pattern in ing._INVISIBLE_UTF8), char


def test_joiners_and_typographic_characters_are_text():
    v = run(
        HEADER
        + row(
            name="Caf\u00e9 \u2019Noir\u2019 \u2014 \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001f469\u200d\U0001f52c"
        )
    )
    assert v.problems == [] and v.rows_accepted == 1


def test_truncated_last_row():
    v = run(HEADER + row("T1") + "T2,S,Sho")
    codes = [(p.line, p.code) for p in v.problems]
    assert (3, "truncated") in codes
    assert v.rows_accepted == 1


def test_truncated_inside_a_quoted_field():
    v = run(HEADER + row("T1") + 'T2,S,"Sho')
    assert {p.code for p in v.problems} == {"truncated", "unterminated_quote"}
    assert all(p.line == 3 for p in v.problems)


def test_truncated_row_that_looks_complete_is_still_rejected():
    p = only_problem(run(HEADER + row("T1") + row("T2").rstrip("\n")))
    assert (p.line, p.code) == (3, "truncated")


def test_duplicate_tag_id():
    v = run(HEADER + row("T1") + row("T2") + row("T1"))
    p = only_problem(v)
    assert (p.line, p.column, p.code) == (4, 1, "duplicate_tag_id")
    assert "first on line 2" in p.message


def test_sku_collision_within_the_file():
    p = only_problem(run(HEADER + row("T1", sku="S1", name="Shoe") + row("T2", sku="S1", name="Boot")))
    assert (p.line, p.column, p.code) == (3, 7, "sku_collision")
    assert "line 2" in p.message


def test_names_that_differ_only_in_unicode_normalization_are_said_to():
    # macOS exports NFD, Windows NFC: the same-looking name is another code point sequence
    nfc, nfd = "Caf\u00e9", "Cafe\u0301"
    p = only_problem(run(HEADER + row("T1", sku="S1", name=nfc) + row("T2", sku="S1", name=nfd)))
    assert p.code == "sku_collision" and "differ only in Unicode normalization" in p.message
    assert "'Cafe\\u0301' vs 'Caf\\xe9'" in p.message
    plain = only_problem(run(HEADER + row("T1", sku="S1", name="Shoe") + row("T2", sku="S1", name="Boot")))
    assert "normalization" not in plain.message


def test_sku_collision_with_products_already_loaded():
    p = only_problem(run(HEADER + row("T1", sku="S1", name="Boot"), known_products={"S1": "Shoe"}))
    assert (p.line, p.code) == (2, "sku_collision")
    assert "already loaded" in p.message


def test_a_rejected_row_names_no_sku_and_claims_no_tag_id():
    # Line 2 is rejected (bad timestamp): line 3's name for S1 is the first that counts, and
    # its tag_id is no repeat.
    v = run(HEADER + row("T1", sku="S1", name="Shoe", ts="bad") + row("T1", sku="S1", name="Boot"))
    assert [(p.line, p.code) for p in v.problems] == [(2, "bad_timestamp")]
    assert v.rows_accepted == 1 and v.new_products() == {"S1": "Boot"}


def test_a_name_with_invalid_utf8_is_not_held_against_later_rows():
    v = run(
        HEADER.encode()
        + row("T1", sku="S1", name="Al\xffpha").encode("latin-1")
        + row("T2", sku="S1", name="Alpha").encode()
    )
    assert [(p.line, p.code) for p in v.problems] == [(2, "invalid_utf8")]
    assert v.new_products() == {"S1": "Alpha"}


def test_bad_timestamp():
    p = only_problem(run(HEADER + row(ts="yesterday")))
    assert (p.line, p.column, p.code) == (2, 22, "bad_timestamp")


@pytest.mark.parametrize(
    "ts",
    [
        "2024-05-01X10:00:00Z",  # fromisoformat takes any character between date and time
        "2024-05-01/10:00:00Z",
        "2024-05-01T10:00:00+05:30:15",  # an offset with seconds
        "2024-05-01T10:00:00 Z",  # a space before the zone
        "2024-05-01T10:00:00 +01:00",
        "2024-05-01T08:30:00+05:75",  # offset minutes past 59 (fromisoformat reads +06:15)
        "2024-05-01T08:30:00.5-00:60",
        "20240501T083000+0099",
    ],
)
def test_timestamps_python_takes_but_iso_8601_does_not_are_bad(ts):
    p = only_problem(run(HEADER + row(ts=ts) + row("T2")))
    assert (p.line, p.column, p.code) == (2, 22, "bad_timestamp")
    assert "such as 2024-05-01T08:30:00Z" in p.message


@pytest.mark.parametrize(
    ("ts", "kind"),
    [
        ("2024-W18-3T10:00:00.123456+00:00", "a week"),  # as long as the canonical form
        ("2024-W01-1T00:00:00Z", "a week"),
        ("2024W011T000000Z", "a week"),
        ("2024-W18T10:00Z", "a week"),
        ("2024-001T00:00:00Z", "an ordinal"),
        ("2024-122 10:00Z", "an ordinal"),
        ("2024122T1000Z", "an ordinal"),
    ],
)
def test_week_and_ordinal_dates_are_refused_for_what_they_are(ts, kind):
    p = only_problem(run(HEADER + row(ts=ts) + row("T2")))  # ISO 8601, but not a calendar date
    assert (p.line, p.column, p.code) == (2, 22, "bad_timestamp")
    assert (
        f"is {kind} date: week and ordinal dates are not accepted; use a calendar date such as" in p.message
    )
    assert "is not an ISO 8601" not in p.message


@pytest.mark.parametrize(
    ("ts", "canonical"),
    [
        ("20240501T100000Z", "2024-05-01T10:00:00.000000+00:00"),  # basic format
        ("20240501T100000.5+0200", "2024-05-01T08:00:00.500000+00:00"),
        ("2024-05-01 10:00+02:00", "2024-05-01T08:00:00.000000+00:00"),  # RFC 3339's space
        ('"2024-05-01T10:00:00,25-01"', "2024-05-01T11:00:00.250000+00:00"),  # quoted: a comma
        ("2024-05-01T10Z", "2024-05-01T10:00:00.000000+00:00"),
        ("2024-05-01T10:00:00.1234560Z", "2024-05-01T10:00:00.123456+00:00"),  # zeros lose nothing
        ("2024-05-01t10:00:00z", "2024-05-01T10:00:00.000000+00:00"),  # RFC 3339 (5.6): lower case
        ("2024-05-01t10:00:00.5Z", "2024-05-01T10:00:00.500000+00:00"),
        ("2024-05-01 10:00:00z", "2024-05-01T10:00:00.000000+00:00"),
        ("20240501t100000+0200", "2024-05-01T08:00:00.000000+00:00"),
    ],
)
def test_iso_8601_forms_are_accepted_and_made_canonical(ts, canonical):
    v = run(HEADER + row(ts=ts))
    assert v.ok, v.problems
    assert v.copy.decode().split("\t")[4] == canonical


@pytest.mark.parametrize(
    "ts", ["2016-12-31T23:59:60Z", "2016-12-31 23:59:60.5+00:00", "20161231T235960Z", "2024-01-01T24:00:00Z"]
)
def test_a_leap_second_or_24_00_is_refused_for_what_it_is(ts):
    p = only_problem(run(HEADER + row(ts=ts) + row("T2")))  # ISO 8601, which voke's leaf cannot hold
    assert (p.line, p.column, p.code) == (2, 22, "bad_timestamp")
    assert "a leap second or 24:00 is not supported" in p.message


@pytest.mark.parametrize("ts", ["2024-01-01T24:30Z", "2024-01-01T24:00:01Z", "2024-01-01 12:60:60Z"])
def test_what_is_neither_a_leap_second_nor_24_00_is_not_called_one(ts):
    p = only_problem(run(HEADER + row(ts=ts) + row("T2")))
    assert p.code == "bad_timestamp" and "such as 2024-05-01T08:30:00Z" in p.message


@pytest.mark.parametrize(
    ("ts", "why"),
    [
        ("2023-02-29T08:00:00Z", "2023-02-29 is not a day: February 2023 has 28 days"),
        ("2024-04-31T08:00:00Z", "2024-04-31 is not a day: April 2024 has 30 days"),
        ("20240431T080000Z", "2024-04-31 is not a day: April 2024 has 30 days"),
        ("2024-02-30T23:59:60Z", "2024-02-30 is not a day: February 2024 has 29 days"),  # no leap second
        ("2100-02-29 08:00z", "2100-02-29 is not a day: February 2100 has 28 days"),
        ("2024-13-01T08:00Z", "2024-13-01 is not a day (months are 01-12"),
        ("2024-01-00T08:00Z", "2024-01-00 is not a day (months are 01-12, days start at 01"),
    ],
)
def test_a_well_formed_date_that_is_no_day_says_so(ts, why):
    p = only_problem(run(HEADER + row(ts=ts) + row("T2")))
    assert (p.line, p.column, p.code) == (2, 22, "bad_timestamp")
    assert p.message.startswith(f"manufactured_at {ts!r}: {why}") and "ISO 8601" not in p.message


def test_timestamp_without_time_zone():
    p = only_problem(run(HEADER + row(ts="2024-05-01T10:00:00")))
    assert p.code == "bad_timestamp" and "time zone" in p.message


def test_timestamp_more_precise_than_microseconds():
    assert only_problem(run(HEADER + row(ts="2024-05-01T10:00:00.1234567Z"))).code == "bad_timestamp"


def test_future_timestamp():
    p = only_problem(run(HEADER + row(ts="2025-06-01T12:00:01Z")))
    assert (p.line, p.code) == (2, "future_timestamp")


def test_over_long_text_field():
    p = only_problem(run(HEADER + row(name="x" * 201)))
    assert (p.line, p.column, p.code) == (2, 10, "too_long")


def test_over_long_tag_id():
    assert only_problem(run(HEADER + row(tag="T" * 65))).code == "too_long"


def test_over_long_sku():
    assert only_problem(run(HEADER + row(sku="S" * 65))).code == "too_long"


def test_over_long_optional_field():
    v = run(
        "tag_id,sku,product_name,factory_id,manufactured_at,lot\n"
        + row().rstrip("\n")
        + ","
        + "L" * 201
        + "\n"
    )
    assert only_problem(v).code == "too_long"


def test_empty_required_field():
    p = only_problem(run(HEADER + row(fac="  ")))
    assert (p.line, p.column, p.code) == (2, 15, "empty_field")


def test_bad_tag_id_characters():
    assert only_problem(run(HEADER + row(tag="T 1"))).code == "bad_tag_id"


def test_several_problems_in_one_row_are_all_reported_and_counted_once_as_a_row():
    v = run(HEADER + "T 1,,Shoe,F,never\n")
    assert {p.code for p in v.problems} == {"bad_tag_id", "empty_field", "bad_timestamp"}
    assert v.rows_rejected == 1 and v.rows_total == 1


def test_problem_list_is_capped_but_every_problem_is_counted():
    v = run(HEADER + "".join(row(f"T{i}", ts="bad") for i in range(10)), max_errors=3)
    assert len(v.problems) == 3 and v.error_count == 10


def test_rejected_records_keep_their_text_and_reasons():
    v = run(HEADER + row("T1") + 'T2,S,Sho"e,F,' + TS + "\n")
    assert len(v.rejected) == 1
    assert v.rejected[0].line == 3 and v.rejected[0].record.startswith("T2,S,Sho")


def test_a_quoted_field_beyond_the_csv_modules_limit_is_too_long_not_a_crash():
    v = run(HEADER + row("T1") + row("T2", name='"' + "x" * 200_000 + '"'))
    p = only_problem(v)
    assert (p.line, p.column, p.code) == (3, 10, "too_long")
    assert v.rows_accepted == 1


def test_over_long_line_is_skipped_without_buffering_it():
    v = run(HEADER + row("T1") + "T2," + "x" * (ing.MAX_LINE_BYTES + 10) + "\n" + row("T3"), chunk=1 << 16)
    p = only_problem(v)
    assert (p.line, p.column, p.code) == (3, 1, "line_too_long")
    assert v.rows_accepted == 2 and v.rows_total == 3
    assert v.rejected[0].line == 3 and len(v.rejected[0].record) == 200


def test_over_long_last_line_without_line_break():
    # Too long to read, and cut as well: the file's problem, so --partial refuses it too.
    v = run(HEADER + row("T1") + "y" * (ing.MAX_LINE_BYTES + 10), chunk=1 << 16)
    assert [(p.line, p.code) for p in v.problems] == [(3, "line_too_long"), (3, "truncated")]
    assert v.fatal


def test_a_binary_file_is_rejected_without_a_traceback():
    junk = bytes(range(256)) * 50
    v = run(junk)
    assert not v.ok and v.fatal


# -- proofs from sealed chunks --------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 1023, 1024, 1025, 2048, 3001])
def test_chunked_seal_matches_the_rfc_root_and_every_proof_verifies(size):
    leaves = [f"leaf {i}".encode() for i in range(size)]
    seal, chunks = ing.seal_leaves(leaves)
    assert seal.root == merkle.root(leaves) and seal.size == size
    tree = merkle.MerkleTree.from_leaves(leaves)
    for i in sorted({0, size // 2, size - 1, min(1024, size - 1)}):
        path = ing.inclusion_proof(i, size, chunks[i // ing.SEAL_CHUNK], seal.chunk_roots)
        assert path == tree.inclusion_proof(i)
        assert merkle.verify_leaf(leaves[i], i, size, path, seal.root)


def test_validator_seal_matches_seal_leaves_across_chunk_boundaries():
    text = HEADER + "".join(row(f"T{i}") for i in range(2500))
    v = ing.BatchValidator(now=NOW)
    sealed = []
    for piece in (v.feed(text.encode()), v.finish()):
        sealed += piece.sealed
    leaves = [
        f"T{i}\tSKU-1\tShoe\tFAC-01\t2024-05-01T10:00:00.000000+00:00\t\t\t".encode() for i in range(2500)
    ]
    seal, chunks = ing.seal_leaves(leaves)
    assert v.seal == seal
    assert [h for _, h in sealed] == chunks and [n for n, _ in sealed] == [0, 1, 2]


# -- samples and purity ----------------------------------------------------------------------


def test_sample_is_valid_deterministic_and_sized():
    import io

    a, b = io.BytesIO(), io.BytesIO()
    ing.write_sample(a, 300, 7)
    ing.write_sample(b, 300, 7)
    assert a.getvalue() == b.getvalue()
    v = run(a.getvalue())
    assert v.ok and v.rows_accepted == 300
    other = io.BytesIO()
    ing.write_sample(other, 299, 7)
    tags = lambda data: {ln.split(",")[0] for ln in data.decode().splitlines()[1:]}  # noqa: E731
    assert not tags(a.getvalue()) & tags(other.getvalue())


def _peak_memory(rows: int, *, detect_duplicates: bool) -> int:
    import tracemalloc

    data = "".join(ing.sample_rows(rows, seed=1)).encode()
    tracemalloc.start()
    try:
        v = ing.BatchValidator(now=NOW, detect_duplicates=detect_duplicates)
        for i in range(0, len(data), 1 << 16):
            v.feed(data[i : i + (1 << 16)])
        v.finish()
        assert v.ok and v.rows_accepted == rows
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_without_duplicate_detection_memory_does_not_grow_with_the_file():
    small = _peak_memory(5_000, detect_duplicates=False)
    assert _peak_memory(40_000, detect_duplicates=False) < small + (1 << 20)
    assert _peak_memory(40_000, detect_duplicates=True) > small + (2 << 20)  # the map it does without


def test_core_imports_no_cli_or_database_libraries():
    code = (
        "import sys, voketag_ops.core.ingest;"
        "bad = [m for m in ('typer', 'rich', 'psycopg', 'google') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sample_rows_are_distinct_and_made_one_at_a_time():
    tags = [line.split(",")[0] for line in itertools.islice(ing.sample_rows(20_000, 7), 1, None)]
    assert len(set(tags)) == 20_000 and all(ing.is_tag_id(t) for t in tags)
    assert list(ing.sample_rows(50, 7)) == list(ing.sample_rows(50, 7))  # --seed reproduces
    # Nothing is held per row: the first rows of a sample far larger than memory come at once.
    assert next(itertools.islice(ing.sample_rows(10**12, 1), 1, 2)).startswith("T")


def test_a_header_error_quotes_a_few_names_each_cut_short():
    # A header that is one 100 KB field, or hundreds of them, makes a one-line message still.
    v = run("[" * 100_000 + "\n")
    (message,) = [p.message for p in v.problems if p.code == "missing_column"]
    assert len(message) < 300 and "'" + "[" * 40 + "...'" in message
    names = [f"col{i}" for i in range(30)]
    v = run(",".join([*ing.REQUIRED_COLUMNS, *names]) + "\n" + row().replace("\n", "," * 30 + "\n"))
    assert v.warnings == [f"ignoring unknown column(s): {', '.join(map(repr, names[:10]))}, ... and 20 more"]
    v = run(",".join(names) + "\n")
    (message,) = [p.message for p in v.problems if p.code == "missing_column"]
    assert message.endswith(f"(found: {', '.join(map(repr, names[:10]))}, ... and 20 more)")
