"""Property tests: any file the validator accepts round-trips to exactly its rows, and
the seal is the RFC 6962 root over the canonical rows (so every proof verifies)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voketag_ops.core import ingest as ing
from voketag_ops.core import merkle

NOW = datetime(2025, 6, 1, tzinfo=UTC)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_chars = st.characters(blacklist_categories=("Cc", "Cs"))
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
        canon[4] = ing.canonical_timestamp(datetime.fromisoformat(canon[4]))
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
    lines[victim] = lines[victim].rstrip("\r\n") + ',"unclosed\n'
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
