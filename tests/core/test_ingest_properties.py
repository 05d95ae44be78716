"""Property tests: any file the validator accepts round-trips to exactly its rows, and
the seal is the RFC 6962 root over the canonical rows (so every proof verifies)."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voketag_ops.core import ingest as ing
from voketag_ops.core import merkle

NOW = datetime(2025, 6, 1, tzinfo=UTC)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_chars = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=ing.INVISIBLE)
_tag = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=64
)


def _text(max_size: int, required: bool) -> st.SearchStrategy[str]:
    s = st.text(alphabet=_chars, max_size=max_size)
    return s.filter(lambda v: v.strip()) if required else s


@st.composite
def _timestamp(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2025, 5, 30)))
    offset = draw(st.integers(min_value=-12 * 60, max_value=14 * 60))
    dt = moment.replace(tzinfo=timezone(timedelta(minutes=offset)))
    text = dt.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"])))
    if offset == 0 and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    if draw(st.booleans()):
        text = text.replace("T", " ")
    if draw(st.booleans()):  # RFC 3339 (5.6): the same time, so the same canonical row
        text = text.replace("T", "t").replace("Z", "z")
    return text


@st.composite
def batch_file(draw: st.DrawFn) -> tuple[bytes, list[list[str]]]:
    """(file bytes, expected canonical rows)."""
    n = draw(st.integers(min_value=1, max_value=40))
    tags = draw(st.lists(_tag, min_size=n, max_size=n, unique=True))
    skus = draw(st.lists(_text(64, True), min_size=1, max_size=5, unique_by=str.strip))
    names = {sku.strip(): draw(_text(200, True)) for sku in skus}
    optional = draw(st.lists(st.sampled_from(ing.OPTIONAL_COLUMNS), unique=True))
    extra = draw(st.booleans())
    columns = list(ing.REQUIRED_COLUMNS) + optional + (["notes"] if extra else [])
    columns = draw(st.permutations(columns))
    rows, expected = [], []
    for tag in tags:
        sku = draw(st.sampled_from(skus))
        values = {
            "tag_id": tag,
            "sku": sku,
            "product_name": names[sku.strip()],
            "factory_id": draw(_text(200, True)),
            "manufactured_at": draw(_timestamp()),
            "notes": draw(st.text(alphabet=_chars, max_size=10)),
        }
        for col in optional:
            values[col] = draw(_text(200, False))
        rows.append([values[c] for c in columns])
        canon = [v.strip() for v in (values.get(c, "") for c in ing.CANONICAL_COLUMNS)]
        canon[4] = ing.canonical_timestamp(datetime.fromisoformat(canon[4].upper()))
        expected.append(canon)
    buf = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    writer = csv.writer(buf, quoting=quoting, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(columns)
    writer.writerows(rows)
    data = buf.getvalue().encode()
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data, expected


def _decode_copy(data: bytes) -> list[list[str]]:
    out = []
    for line in data.decode().split("\n")[:-1]:
        out.append([f.replace("\\\\", "\\") for f in line.split("\t")])
    return out


@PROPS
@given(batch_file(), st.integers(min_value=1, max_value=4096))
def test_accepted_files_round_trip_and_seal_their_canonical_rows(case, chunk):
    data, expected = case
    v = ing.BatchValidator(now=NOW)
    copied = b""
    for i in range(0, len(data), chunk):
        copied += v.feed(data[i : i + chunk]).copy_data
    copied += v.finish().copy_data
    assert v.ok, v.problems
    assert v.rows_total == v.rows_accepted == len(expected)
    assert _decode_copy(copied) == expected
    leaves = ["\t".join(r).encode() for r in expected]
    assert v.seal.root == merkle.root(leaves)
    assert [ing.canonical_leaf(dict(zip(ing.CANONICAL_COLUMNS, r, strict=True))) for r in expected] == leaves


@PROPS
@given(batch_file(), st.data())
def test_breaking_one_row_rejects_exactly_that_row(case, data):
    raw, expected = case
    text = raw.decode("utf-8-sig")
    lines = [line + "\n" for line in text.split("\n")[:-1]]  # not splitlines: U+2028 is data
    victim = data.draw(st.integers(min_value=1, max_value=len(lines) - 1))
    # A quoted field with a line break (RFC 4180: one record on two lines); with a stray quote
    # instead, the rest of the file would be in its quotes.
    lines[victim] = lines[victim].rstrip("\r\n") + ',"un\nclosed"\n'
    v = ing.BatchValidator(now=NOW)
    v.feed("".join(lines).encode())
    v.finish()
    assert v.rows_rejected == 1 and v.rows_accepted == len(expected) - 1
    assert all(p.line == victim + 1 for p in v.problems)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=3 * ing.SEAL_CHUNK + 7), st.data())
def test_every_proof_from_sealed_chunks_verifies(size, data):
    leaves = [i.to_bytes(4, "big") for i in range(size)]
    seal, chunks = ing.seal_leaves(leaves)
    assert seal.root == merkle.root(leaves)
    for index in data.draw(st.lists(st.integers(min_value=0, max_value=size - 1), min_size=1, max_size=8)):
        path = ing.inclusion_proof(index, size, chunks[index // ing.SEAL_CHUNK], seal.chunk_roots)
        assert merkle.verify_leaf(leaves[index], index, size, path, seal.root)
        assert not merkle.verify_leaf(leaves[index] + b"x", index, size, path, seal.root)


# -- the bulk path agrees with the row-by-row path --------------------------------------------

_DEFECTS = (
    "tag_space", "tag_bad_char", "tag_dash", "tag_duplicate", "tag_long", "tag_empty",
    "sku_collision", "sku_long", "sku_space", "name_quoted", "name_escaped_quote", "name_accent",
    "name_nbsp_edge", "factory_empty", "ts_z", "ts_offset", "ts_future", "ts_bad_date", "ts_hour_24",
    "ts_seconds_only", "ts_week", "ts_ordinal", "optional_long", "optional_space", "blank_line",
    "control_char", "open_quote", "stray_quote", "too_many_fields", "row_of_200", "line_break",
)  # fmt: skip


def _messy_file(seed: int, rows: int, columns: list[str], rate: float, newline: str) -> bytes:
    """A batch file, mostly clean rows in canonical form (what the bulk path takes) with
    defects of every kind sprinkled at RATE."""
    rng = random.Random(seed)
    names = {f"SKU-{i}": f"Product {i}" for i in range(30)}
    tags: list[str] = []
    out = [",".join(columns)]
    for i in range(rows):
        defect = rng.choice(_DEFECTS) if rng.random() < rate else ""
        tag = f"T{rng.randrange(16**8):08X}{i}"
        sku = rng.choice(list(names))
        when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**13))
        values = {
            "tag_id": tag,
            "sku": sku,
            "product_name": names[sku],
            "factory_id": f"FAC-{rng.randrange(20):02d}",
            "manufactured_at": when.isoformat(timespec="microseconds"),
            "lot": f"L{i}",
            "color": rng.choice(["", "red", "navy"]),
            "size": rng.choice(["", "M", "42"]),
            "notes": rng.choice(["", "n", "x y"]),
        }
        text = {
            "tag_space": " " + tag,
            "tag_bad_char": tag + "!",
            "tag_dash": tag + "-_",
            "tag_duplicate": rng.choice(tags) if tags else tag,
            "tag_long": tag * 10,
            "tag_empty": "",
        }
        if defect in text:
            values["tag_id"] = text[defect]
        elif defect == "sku_collision":
            values["product_name"] = "Another name"
        elif defect == "sku_long":
            values["sku"] = "S" * 65
        elif defect == "sku_space":
            values["sku"] = sku + " "
        elif defect == "name_quoted":
            values["product_name"] = f'"{names[sku]}, boxed"'
            names[sku] = f"{names[sku]}, boxed"
        elif defect == "name_escaped_quote":
            values["product_name"] = '"The ""best"""'
        elif defect == "name_accent":
            values["product_name"] = "Caf\u00e9 " + names[sku]
            names[sku] = values["product_name"]
        elif defect == "name_nbsp_edge":
            values["product_name"] = names[sku] + "\u00a0"
        elif defect == "factory_empty":
            values["factory_id"] = ""
        elif defect == "ts_z":
            values["manufactured_at"] = when.isoformat(timespec="microseconds").replace("+00:00", "Z")
        elif defect == "ts_offset":
            values["manufactured_at"] = when.astimezone(timezone(timedelta(hours=2))).isoformat()
        elif defect == "ts_future":
            values["manufactured_at"] = "2099-01-01T00:00:00.000000+00:00"
        elif defect == "ts_bad_date":
            values["manufactured_at"] = "2024-02-30T00:00:00.000000+00:00"
        elif defect == "ts_hour_24":
            values["manufactured_at"] = "2024-02-03T24:00:00.000000+00:00"
        elif defect == "ts_seconds_only":
            values["manufactured_at"] = when.isoformat(timespec="seconds")
        elif defect == "ts_week":
            values["manufactured_at"] = "2024-W05-3T08:00:00.000000+00:00"  # the canonical form's length
        elif defect == "ts_ordinal":
            values["manufactured_at"] = "2024-035T08:00:00Z"
        elif defect == "optional_long":
            values["lot"] = "L" * 201
        elif defect == "optional_space":
            values["color"] = " red"
        elif defect == "row_of_200":
            values["lot"] = "L" * 150
        tags.append(values["tag_id"])
        line = ",".join(values[c] for c in columns)
        if defect == "blank_line":
            out.append("")
        elif defect == "control_char":
            line += "\x07"
        elif defect == "open_quote":
            line += ',"open'
        elif defect == "stray_quote":
            line = line.replace(",", ',x"', 1)
        elif defect == "too_many_fields":
            line += ",extra"
        elif defect == "line_break":  # one record on three lines, rows in its quotes
            line = line.replace(",", ',"note:\nT0,SKU-0,""Product 0"",F,2024-01-01T00:00:00Z\n",', 1)
        out.append(line)
    return (newline.join(out) + newline).encode()


def _outcome(data: bytes, chunk: int, *, bulk: bool, detect_duplicates: bool) -> dict[str, object]:
    v = ing.BatchValidator(
        now=NOW,
        keep_rejected=True,
        detect_duplicates=detect_duplicates,
        known_products={"SKU-0": "Product 0", "SKU-1": "Renamed"},
    )
    if not bulk:
        v._bulk = lambda *args: False  # type: ignore[method-assign]
    copied, lines, rejected, sealed = b"", [], [], []
    pieces = [v.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)] + [v.finish()]
    for piece in pieces:
        copied += piece.copy_data
        lines += piece.lines
        rejected += [(r.line, r.problems, r.record) for r in piece.rejected]
        sealed += piece.sealed
    return {
        "problems": v.problems,
        "counts": (v.error_count, v.rows_total, v.rows_accepted, v.rows_rejected, v.fatal),
        "copy": copied,
        "lines": lines,
        "rejected": rejected,
        "sealed": sealed,
        "seal": v.seal,
        "products": v.new_products(),
        "warnings": v.warnings,
    }


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    rows=st.integers(1, 1500),
    order=st.sampled_from(["canonical", "shuffled", "no-optional", "extra"]),
    rate=st.sampled_from([0.0, 0.002, 0.02, 0.2]),
    newline=st.sampled_from(["\n", "\r\n"]),
    chunk=st.sampled_from([1 << 20, 4096, 777]),
    detect_duplicates=st.booleans(),
)
def test_bulk_and_row_by_row_validation_agree(seed, rows, order, rate, newline, chunk, detect_duplicates):
    columns = list(ing.CANONICAL_COLUMNS)
    if order == "shuffled":
        random.Random(seed).shuffle(columns)
    elif order == "no-optional":
        columns = [*ing.REQUIRED_COLUMNS, "color"]
    elif order == "extra":
        columns.insert(3, "notes")
    data = _messy_file(seed, rows, columns, rate, newline)
    fast = _outcome(data, chunk, bulk=True, detect_duplicates=detect_duplicates)
    slow = _outcome(data, chunk, bulk=False, detect_duplicates=detect_duplicates)
    assert fast == slow


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet='a,"\n', max_size=30), min_size=1, max_size=30),
    st.sampled_from([1, 5, 64]),
    st.booleans(),
)
def test_records_spanning_lines_are_read_alike_however_the_file_is_fed(tails, chunk, crlf):
    """Quotes anywhere, records over the (lowered) length limit skipped: piece by piece, the
    validator reads the records the whole file has, at the same lines."""
    from unittest import mock

    rows = [f"T{i},S,N,F,2024-01-01T00:00:00Z{tail}" for i, tail in enumerate(tails)]
    data = ("tag_id,sku,product_name,factory_id,manufactured_at\n" + "\n".join(rows) + "\n").encode()
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    with mock.patch.object(ing, "MAX_LINE_BYTES", 150):  # a row is 50-80 bytes: two or three lines
        whole = _outcome(data, len(data), bulk=True, detect_duplicates=True)
        pieces = _outcome(data, chunk, bulk=True, detect_duplicates=True)
    for outcome in (whole, pieces):  # a record too long is shown by its start: what was held of it
        outcome["rejected"] = [
            (line, problems, record[:80]) for line, problems, record in outcome["rejected"]
        ]
    assert pieces == whole
