"""files.read_at_most: bounded reads of voke's own records and of the files users name."""

from __future__ import annotations

import io
import tracemalloc

from voketag_ops.files import read_at_most


def test_a_small_file_read_under_a_large_limit_sets_aside_only_its_size(tmp_path):
    # read(limit + 1) set aside 64 MiB for every 10 KB record before reading it.
    path = tmp_path / "record.json"
    path.write_bytes(b"x" * 10_000)
    with path.open("rb") as fh:
        tracemalloc.start()
        try:
            data = read_at_most(fh, 64 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert data == b"x" * 10_000
    assert peak < 1 << 20, peak


def test_the_limit_holds_for_files_pipes_and_endless_streams(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"y" * 5000)
    with path.open("rb") as fh:
        assert read_at_most(fh, 4999) is None
    with path.open("rb") as fh:
        assert read_at_most(fh, 5000) == b"y" * 5000
    assert read_at_most(io.BytesIO(b"z" * 300_000), 300_000) == b"z" * 300_000  # no size known: chunks
    assert read_at_most(io.BytesIO(b"z" * 300_001), 300_000) is None
    with open("/dev/zero", "rb") as zero:
        assert read_at_most(zero, 1 << 20) is None
