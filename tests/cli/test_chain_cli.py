"""`voke chain`: exit codes, stdout JSON, one-line errors. The chain commands run against
the default store, PostgreSQL on the session's local environment, each test in a database
of its own (`chain.database`)."""

from __future__ import annotations

import io
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from voketag_ops.core import merkle

LEAVES = [f"tag-{i}" for i in range(13)]


@pytest.fixture
def chain_db(local_env: Any) -> Iterator[Callable[[], str]]:
    """Make databases on the shared primary for chain stores; dropped after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"chain_{uuid.uuid4().hex[:10]}"
        with local_env.primary().connect() as conn:
            conn.execute(f'create database "{name}"')
        made.append(name)
        return name

    yield make
    with local_env.primary().connect() as conn:
        for name in made:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def chain_env(platform_environ: dict[str, str], chain_db: Callable[[], str]) -> Callable[[], dict[str, str]]:
    """Environment variables for voke on the shared platform with a fresh chain database (its
    blocks are mined at 4 bits, for speed, and validated at that)."""
    return lambda: dict(platform_environ, VOKE_CHAIN__DATABASE=chain_db(), VOKE_CHAIN__MIN_DIFFICULTY="4")


def since_now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.fixture
def leaves_file(tmp_path: Path) -> Path:
    path = tmp_path / "leaves.txt"
    path.write_text("\n".join(LEAVES) + "\n")
    return path


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_root_text_json_hex_stdin_and_crlf(voke, leaves_file: Path, tmp_path: Path, monkeypatch) -> None:
    want = merkle.root(x.encode() for x in LEAVES).hex()
    human = voke("chain", "root", str(leaves_file))
    assert human.exit_code == 0 and human.stdout.strip() == want
    doc = voke("chain", "root", str(leaves_file), "--json").json
    assert doc == {"ok": True, "command": "chain root", "result": {"tree_size": 13, "root": want}}
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\r\n".join(x.encode() for x in LEAVES))  # and no final newline
    assert voke("chain", "root", str(crlf)).stdout.strip() == want
    hexed = tmp_path / "hex.txt"
    hexed.write_text("\n".join(x.encode().hex() for x in LEAVES) + "\n")
    assert voke("chain", "root", str(hexed), "--hex").stdout.strip() == want
    feed_stdin(monkeypatch, ("\n".join(LEAVES) + "\n").encode())
    assert voke("chain", "root", "-").stdout.strip() == want
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert voke("chain", "root", str(empty), "--json").json["result"] == {
        "tree_size": 0,
        "root": merkle.EMPTY_ROOT.hex(),
    }


def test_bad_input_is_one_line_naming_the_place(voke, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("00ff\nnothex\n")
    result = voke("chain", "root", str(bad), "--hex")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[0] == f"error: {bad}:2:1: not a hex-encoded leaf"
    assert "Traceback" not in result.stderr
    missing = voke("chain", "root", str(tmp_path / "nope.txt"), "--json")
    assert missing.exit_code == 2 and "nope.txt: cannot read" in missing.json["error"]["message"]
    for args in (
        ["verify", str(tmp_path / "nope.json")],
        ["verify", str(tmp_path)],
        ["import", str(tmp_path)],
    ):
        unusable = voke("chain", *args, "--json")  # not "invalid" (exit 1): there is nothing to judge
        assert unusable.exit_code == 2, (args, unusable.stdout)


def test_oversized_inputs_are_refused_before_they_fill_memory(
    voke, make_environ, tmp_path: Path, monkeypatch
) -> None:
    """`chain verify /dev/zero`, `chain import /dev/zero`, `chain root /dev/zero` read at most
    their limit (and a byte), then refuse in one line with the command's bad-input code."""
    MAX_PROOF_BYTES = MAX_LEAF_LINE_BYTES = 1 << 20  # as README documents them
    proof = tmp_path / "big.json"
    proof.write_bytes(b" " * MAX_PROOF_BYTES + b"{}")
    refused = voke("chain", "verify", str(proof), "--json")
    assert refused.exit_code == 2
    assert refused.json["error"]["message"] == f"{proof}: more than 1,048,576 bytes: not a proof document"
    feed_stdin(monkeypatch, b"0" * (3 * MAX_PROOF_BYTES))
    piped = voke("chain", "verify", "-")
    assert (
        piped.exit_code == 2
        and piped.stderr == "error: <stdin>: more than 1,048,576 bytes: not a proof document\n"
    )
    assert sys.stdin.buffer.tell() == MAX_PROOF_BYTES + 1  # not read to its end

    longest = b"x" * MAX_LEAF_LINE_BYTES
    leaves = tmp_path / "long.txt"
    leaves.write_bytes(b"a\r\n" + longest + b"\r\n" + longest + b"\n")
    assert voke("chain", "root", str(leaves), "--json").json["result"]["tree_size"] == 3
    leaves.write_bytes(b"a\n" + longest + b"x\n")
    for command in (["root"], ["prove", "--index", "0"], ["consistency", "--old-size", "1"]):
        too_long = voke("chain", *command, str(leaves))
        assert too_long.exit_code == 1, command
        assert too_long.stderr == f"error: {leaves}:2:1048577: line longer than 1,048,576 bytes\n"

    environ = make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file", VOKE_CHAIN__MAX_IMPORT_BYTES="100")
    document = tmp_path / "chain.json"
    document.write_text(
        json.dumps({"format": "voke-chain", "version": 1, "blocks": [], "anchors": []}, indent=8)
    )
    for args in (["--dry-run"], ["--yes"]):
        big = voke("chain", "import", str(document), *args, "--json", environ=environ)
        assert big.exit_code == 1, big.stdout
        assert big.json["error"]["message"] == (
            f"{document}: more than 100 bytes, the limit (chain.max_import_bytes); nothing was imported"
        )
    feed_stdin(monkeypatch, b" " * 1000)
    assert voke("chain", "import", "-", "--dry-run", environ=environ).exit_code == 1
    assert sys.stdin.buffer.tell() == 101
    shown = voke("config", "show", "--json", environ=make_environ(tmp_path / "home")).json["result"]
    assert "chain.max_import_bytes" in json.dumps(shown)


def test_text_utf8_cannot_carry_is_refused_not_an_internal_error(voke, make_environ, tmp_path: Path) -> None:
    root = merkle.root([b"r"]).hex()
    environ = make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file")
    for option in ("--label", "--kind"):  # a byte that is not UTF-8, as argv hands it in
        refused = voke("chain", "anchor", "request", root, option, "bad\udcff", "--json", environ=environ)
        assert refused.exit_code == 2 and refused.json["error"]["message"] == f"{option} must be UTF-8 text"
    genesis = {
        "index": 0,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "prev_hash": "00" * 32,
        "merkle_root": "00" * 32,
        "difficulty": 0,
        "nonce": 0,
        "hash": "00" * 32,
        "records": [],
    }
    for block, fragment in (
        ({"records": ["\ud800"]}, "blocks[0].records[0]: not UTF-8 text"),
        (
            {"timestamp": "9999-12-31T23:59:59-01:00"},
            "blocks[0].timestamp: '9999-12-31T23:59:59-01:00' is out",
        ),
    ):
        document = tmp_path / "document.json"
        document.write_text(
            json.dumps(
                {"format": "voke-chain", "version": 1, "blocks": [{**genesis, **block}], "anchors": []}
            )
        )
        for args in (["--dry-run"], ["--yes"]):
            rejected = voke("chain", "import", str(document), *args, "--json", environ=environ)
            assert rejected.exit_code == 1, rejected.stdout
            assert fragment in rejected.json["error"]["message"]


def test_prove_and_verify(voke, leaves_file: Path, tmp_path: Path, monkeypatch) -> None:
    result = voke("chain", "prove", str(leaves_file), "--index", "7", "--json")
    assert result.exit_code == 0
    doc = result.json["result"]
    assert set(doc) == {"leaf_index", "tree_size", "root", "leaf_hash", "audit_path"}
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(doc))
    assert voke("chain", "verify", str(proof)).exit_code == 0
    assert voke("chain", "verify", str(proof), "--leaf", "tag-7").exit_code == 0
    assert voke("chain", "verify", str(proof), "--leaf-hex", b"tag-7".hex()).exit_code == 0
    wrong = voke("chain", "verify", str(proof), "--leaf", "tag-8", "--json")
    assert wrong.exit_code == 1 and wrong.json["ok"] is False and wrong.json["result"]["valid"] is False
    # The whole envelope as printed by `prove --json` is accepted too, from stdin.
    feed_stdin(monkeypatch, result.stdout.encode())
    assert voke("chain", "verify", "-").exit_code == 0
    tampered = dict(doc, leaf_index=6)
    proof.write_text(json.dumps(tampered))
    verdict = voke("chain", "verify", str(proof))
    assert verdict.exit_code == 1 and "invalid inclusion proof" in verdict.stderr
    assert voke("chain", "prove", str(leaves_file), "--index", "13").exit_code == 2
    assert voke("chain", "verify", str(proof), "--leaf", "a", "--leaf-hex", "00").exit_code == 2


def test_verify_says_whether_the_root_was_looked_up_and_anchored_requires_it_on_the_chain(
    voke, make_environ, leaves_file: Path, tmp_path: Path
) -> None:
    """A self-consistent document proves only that its leaf is in a tree with its root: any
    root. `verify` says the root was not looked up; `--anchored` requires it anchored (for the
    proof's tree size) on a chain that validates, exit 1 otherwise."""
    environ = make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")
    leaf = "TFORGED001\tSKU-X\tGold bar\tFAC-1\t2024-01-01T00:00:00.000000+00:00\t\t\t"
    h = merkle.leaf_hash(leaf.encode()).hex()
    forged = tmp_path / "forged.json"
    forged.write_text(
        json.dumps(
            {"leaf_index": 0, "tree_size": 1, "root": h, "leaf_hash": h, "audit_path": [], "leaf": leaf}
        )
    )
    offline = voke("chain", "verify", str(forged), environ=environ)
    assert offline.exit_code == 0
    assert offline.stdout.splitlines()[1] == "the root was not looked up on the chain (`--anchored` does)"
    refused = voke("chain", "verify", str(forged), "--anchored", "--json", environ=environ)
    assert refused.exit_code == 1 and refused.json["result"]["anchoring"]["anchored"] is False
    assert refused.json["error"]["message"] == (
        f"the proof is valid, but root {h[:16]}… is not anchored: the chain has no anchor for it"
    )

    proof = tmp_path / "proof.json"
    proof.write_text(voke("chain", "prove", str(leaves_file), "--index", "3", "--json").stdout)
    root = json.loads(proof.read_text())["result"]["root"]
    voke("chain", "anchor", "request", root, "--label", "leaves", "--tree-size", "13", environ=environ)
    pending = voke("chain", "verify", str(proof), "--anchored", environ=environ)
    assert pending.exit_code == 1 and f"NOT ANCHORED: root {root[:16]}… is pending" in pending.stdout
    assert voke("chain", "anchor", "run", "--difficulty", "4", environ=environ).exit_code == 0
    anchored = voke("chain", "verify", str(proof), "--anchored", environ=environ)
    assert anchored.exit_code == 0, anchored.stderr
    assert f"root {root[:16]}… is anchored in block 0 as batch 'leaves', tree size 13" in anchored.stdout
    weak = make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file")  # block 0 has 4 bits, not 16
    untrusted = voke("chain", "verify", str(proof), "--anchored", environ=weak)
    assert (
        untrusted.exit_code == 1
        and "chain invalid at block 0: its anchors are not trusted" in untrusted.stderr
        and "`--min-difficulty 4`" in untrusted.stderr
    )
    accepted = voke("chain", "verify", str(proof), "--anchored", "--min-difficulty", "4", environ=weak)
    assert accepted.exit_code == 0, accepted.stderr  # what the message above offers works here too
    alone = voke("chain", "verify", str(proof), "--min-difficulty", "4", environ=weak)
    assert alone.exit_code == 2 and "add --anchored" in alone.stderr  # it would change nothing
    other = tmp_path / "other.json"  # the same root claimed for another tree size
    other.write_text(json.dumps(dict(json.loads(proof.read_text())["result"], tree_size=14)))
    assert voke("chain", "verify", str(other), environ=environ).exit_code == 0  # leaf 3's path fits 14 too
    resized = voke("chain", "verify", str(other), "--anchored", environ=environ)
    assert resized.exit_code == 1 and "is anchored for a tree of 13, not the proof's 14" in resized.stderr
    seven = tmp_path / "seven.txt"  # a root anchored without a tree size binds no proof's size
    seven.write_text("\n".join(LEAVES[:7]) + "\n")
    sizeless = tmp_path / "sizeless.json"
    sizeless.write_text(voke("chain", "prove", str(seven), "--index", "2", "--json").stdout)
    voke("chain", "anchor", "request", json.loads(sizeless.read_text())["result"]["root"], environ=environ)
    assert voke("chain", "anchor", "run", "--difficulty", "4", environ=environ).exit_code == 0
    unbound = voke("chain", "verify", str(sizeless), "--anchored", environ=environ)
    assert (
        unbound.exit_code == 1
        and (
            "is anchored in block 1 without a tree size, so the proof's size 7 is bound to nothing "
            "(request anchors with --tree-size)"
        )
        in unbound.stderr
    ), unbound.stderr


def test_verify_anchored_validates_the_chain_first_and_reads_the_blocks_not_the_anchor_row(
    voke, make_environ, leaves_file: Path, tmp_path: Path
) -> None:
    """An anchor row edited away from its block makes the chain invalid: `--anchored` says so
    (as `audit verify` does), not that the proof's size is wrong. A deleted row hides nothing:
    the block still holds the sealed record, and `--anchored` accepts it, naming the block."""
    home = tmp_path / "home"
    environ = make_environ(home, VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")
    proof = tmp_path / "proof.json"
    proof.write_text(voke("chain", "prove", str(leaves_file), "--index", "3", "--json").stdout)
    root = json.loads(proof.read_text())["result"]["root"]
    voke("chain", "anchor", "request", root, "--label", "leaves", "--tree-size", "13", environ=environ)
    assert voke("chain", "anchor", "run", "--difficulty", "4", environ=environ).exit_code == 0
    store = home / "chain" / "chain.json"
    doc = json.loads(store.read_text())
    doc["anchors"][0]["tree_size"] = 14  # the row now says 14; block 0 holds 13
    store.write_text(json.dumps(doc))
    assert voke("chain", "validate", environ=environ).exit_code == 1
    edited = voke("chain", "verify", str(proof), "--anchored", environ=environ)
    assert (
        edited.exit_code == 1 and "chain invalid at block 0: its anchors are not trusted" in edited.stderr
    ), edited.stderr
    store.write_text(json.dumps(dict(doc, anchors=[])))  # the row deleted
    assert voke("chain", "validate", environ=environ).exit_code == 0
    deleted = voke("chain", "verify", str(proof), "--anchored", "--json", environ=environ)
    assert deleted.exit_code == 0, deleted.stderr
    assert deleted.json["result"]["anchoring"] == {
        "anchored": True,
        "message": f"root {root[:16]}… is anchored in block 0 as batch 'leaves', tree size 13",
        "block_index": 0,
        "kind": "batch",
        "label": "leaves",
    }


def test_consistency_and_verify(voke, leaves_file: Path, tmp_path: Path) -> None:
    result = voke("chain", "consistency", str(leaves_file), "--old-size", "5", "--json")
    doc = result.json["result"]
    assert set(doc) == {"old_size", "new_size", "old_root", "new_root", "proof"}
    assert doc["old_root"] == merkle.root(x.encode() for x in LEAVES[:5]).hex()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    assert voke("chain", "verify", str(path)).exit_code == 0
    flipped = ("0" if doc["proof"][0][0] != "0" else "1") + doc["proof"][0][1:]
    path.write_text(json.dumps(dict(doc, proof=[flipped, *doc["proof"][1:]])))
    assert voke("chain", "verify", str(path)).exit_code == 1
    path.write_text(json.dumps(dict(doc, old_size=14)))
    assert "old_size must be between 1 and new_size" in voke("chain", "verify", str(path)).stderr
    assert voke("chain", "consistency", str(leaves_file), "--old-size", "0").exit_code == 2
    assert voke("chain", "consistency", str(leaves_file), "--old-size", "14").exit_code == 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"leaf_index": 0,\n "tree_size": }', ":2:15: not JSON"),
        ('{"leaf_index": 0, "tree_size": 1, "root": "ab", "audit_path": []}', "root: a hash is 32 bytes"),
        ("{}", "neither an inclusion proof"),
        ('{"leaf_index": 1' + "0" * 5000 + "}", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not JSON: nested too deeply"),
    ],
)
def test_malformed_proof_documents_exit_2(voke, tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(text)
    result = voke("chain", "verify", str(path), "--json")
    assert result.exit_code == 2
    assert fragment in result.json["error"]["message"]


@pytest.mark.pg
def test_anchor_lifecycle_validate_and_audit(voke, chain_env, local_env) -> None:
    environ = chain_env()
    started = since_now()
    root = merkle.root([b"batch"]).hex()
    other = merkle.root([b"other"]).hex()

    def run(*args: str) -> Any:
        return voke(*args, environ=environ)

    created = run("chain", "anchor", "request", root, "--label", "batch-1", "--tree-size", "1", "--json")
    assert created.exit_code == 0 and created.json["result"]["outcome"] == "created"
    assert run("chain", "anchor", "request", root, "--json").json["result"]["outcome"] == "existing"
    assert run("chain", "anchor", "request", "abc").exit_code == 2
    claim = run("chain", "anchor", "request", "ab" * 32, "--kind", "audit-checkpoint", "--tree-size", "5")
    assert claim.exit_code == 2 and "reserved" in claim.stderr  # `audit verify` would hold it against the log
    batch = run(
        "chain", "anchor", "request", "ab" * 32, "--kind", "ingest-batch", "--label", "ingest batch 1"
    )
    assert batch.exit_code == 2 and "--kind ingest-batch is reserved" in batch.stderr  # its load requests it
    huge = run(
        "chain", "anchor", "request", "cd" * 32, "--tree-size", str(1 << 64)
    )  # the store reads no more
    assert huge.exit_code == 2 and "--tree-size" in huge.stderr
    assert run("chain", "anchors").exit_code == 0  # nothing the store cannot read back was written
    dry = run("chain", "anchor", "run", "--dry-run", "--json")
    assert dry.json["result"]["outcome"] == "dry-run"

    result = run("chain", "anchor", "run", "--difficulty", "8", "--json")
    assert result.exit_code == 0 and result.json["result"]["block"]["index"] == 0
    assert result.json["result"]["hash_rate"] > 0
    listing = run("chain", "anchors", "--json").json["result"]
    mine = [a for a in listing["anchors"] if a["kind"] == "batch"]
    assert mine[0]["state"] == "anchored" and mine[0]["block_index"] == 0
    assert run("chain", "anchors", "--state", "bogus").exit_code == 2
    assert run("chain", "anchors", "--limit", "0").exit_code == 2
    beyond = run("chain", "anchors", "--limit", "100001")  # a page is held whole: an export's job beyond
    assert beyond.exit_code == 2 and beyond.stderr.count("\n") <= 2 and "100000" in beyond.stderr
    assert run("chain", "anchors", "--limit", "100000").exit_code == 0
    assert run("chain", "validate").exit_code == 0

    run("chain", "anchor", "request", other, "--label", "o")
    # The shared home's audit log may cross a checkpoint meanwhile, and its checkpoints are then
    # anchored in this chain too: the expectations are read from the whole listing, not counted.
    whole = run("chain", "anchors", "--limit", "1000", "--json").json["result"]
    assert [a["label"] for a in whole["anchors"] if a["kind"] == "batch"] == ["o", "batch-1"]
    counts = ", ".join(f"{n} {state}" for state, n in whole["counts"].items() if n)
    assert whole["total"] == len(whole["anchors"]) >= 2 and whole["counts"]["anchored"] >= 1
    page = run("chain", "anchors", "--limit", "1")
    assert f"1 of {whole['total']} shown, newest first ({counts}); chain length 1" in page.stdout
    newest = run("chain", "anchors", "-n", "1", "--json").json["result"]
    assert newest["anchors"] == whole["anchors"][:1] and (newest["total"], newest["limit"]) == (
        whole["total"],
        1,
    )
    anchored = run("chain", "anchors", "--state", "anchored").stdout
    assert f"\n{whole['counts']['anchored']} shown ({counts})" in anchored
    refused = run("chain", "anchor", "cancel", other[:12])  # no --yes and no terminal
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert run("chain", "anchor", "cancel", other[:12], "--dry-run").exit_code == 0
    cancelled = run("chain", "anchor", "cancel", other[:12], "--yes", "--json")
    assert cancelled.exit_code == 0 and cancelled.json["result"]["state"] == "cancelled"
    anchored = run("chain", "anchor", "cancel", root, "--yes", "--json")
    assert anchored.exit_code == 5 and "anchored in block 0" in anchored.json["error"]["message"]
    assert run("chain", "anchor", "cancel", "ffffffffffff", "--yes").exit_code == 2

    # Someone with database access rewrites a record: validation names the block.
    with local_env.primary().connect(environ["VOKE_CHAIN__DATABASE"]) as conn:
        conn.execute("update voke_chain_blocks set records[1] = replace(records[1], 'batch-1', 'forged')")
    bad = run("chain", "validate", "--json")
    assert bad.exit_code == 1 and bad.json["result"]["bad_index"] == 0
    assert bad.json["result"]["problem"] == "changed_record"
    assert "block 0" in bad.json["error"]["message"]

    shown = run("audit", "show", "--event-type", "chain.*", "--since", started, "--json")
    events = shown.json["result"]["entries"]
    assert [e["event_type"] for e in events] == [
        "chain.anchor.request",
        "chain.anchor.request",
        "chain.anchor.run",
        "chain.anchor.request",
        "chain.anchor.cancel",
        "chain.anchor.cancel",  # the refusal of the anchored one, on record too
    ]
    assert [e["result"] for e in events[-2:]] == ["success", "failure"]
    assert events[2]["target"].startswith(
        f"PostgreSQL database {environ['VOKE_CHAIN__DATABASE']} on the local"
    )
    # The log is sound, but a chain that does not validate vouches for nothing.
    untrusted = run("audit", "verify", "--json")
    assert untrusted.exit_code == 1 and untrusted.json["result"]["problem"] == "untrusted_chain"
    assert untrusted.json["error"]["message"].startswith(
        "chain invalid at block 0: its anchors are not trusted"
    )


@pytest.mark.pg
def test_mining_out_of_bounds_exits_1(voke, chain_env) -> None:
    environ = chain_env()
    started = since_now()
    voke("chain", "anchor", "request", merkle.root([b"x"]).hex(), environ=environ)
    result = voke(
        "chain", "anchor", "run", "--difficulty", "64", "--max-attempts", "10", "--json", environ=environ
    )
    assert result.exit_code == 1 and result.json["result"]["outcome"] == "mining-bound-reached"
    failures = voke("audit", "show", "--result", "failure", "--since", started, "--json", environ=environ)
    assert failures.json["result"]["total"] == 1


@pytest.mark.pg
def test_an_import_dry_run_takes_a_chain_database_not_made_yet_as_an_empty_chain(
    voke, chain_env, platform_environ, local_env, tmp_path: Path
) -> None:
    # The read-only open's "no chain yet" is a BackendError too: the open's own handler took it
    # for an unreachable store (exit 4) instead of an empty chain.
    source = chain_env()
    voke("chain", "anchor", "request", merkle.root([b"x"]).hex(), environ=source)
    voke("chain", "anchor", "run", "--difficulty", "4", environ=source)
    exported = tmp_path / "export.json"
    assert voke("chain", "export", "--output", str(exported), environ=source).exit_code == 0
    name = f"chain_{uuid.uuid4().hex[:10]}"
    fresh = dict(platform_environ, VOKE_CHAIN__DATABASE=name, VOKE_CHAIN__MIN_DIFFICULTY="4")
    planned = voke("chain", "import", str(exported), "--dry-run", "--json", environ=fresh)
    assert planned.exit_code == 0, planned.stdout
    assert planned.json["result"]["blocks_added"] == 1
    with local_env.primary().connect() as conn:  # a dry run made nothing
        assert conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None


@pytest.mark.pg
def test_every_read_only_command_takes_a_chain_database_not_made_yet_as_an_empty_chain(
    voke, platform_environ, local_env, tmp_path: Path
) -> None:
    # Found by review: `chain anchor cancel ID --dry-run` was exit 4 "no chain yet (database ...
    # does not exist)" where `chain anchors` said "no anchors"; only `import --dry-run` read it empty.
    name = f"chain_{uuid.uuid4().hex[:10]}"
    fresh = dict(platform_environ, VOKE_CHAIN__DATABASE=name, VOKE_CHAIN__MIN_DIFFICULTY="4")
    cancel = voke(
        "chain", "anchor", "cancel", "0123456789abcdef", "--yes", "--dry-run", "--json", environ=fresh
    )
    assert cancel.exit_code == 2, cancel.stdout
    assert cancel.json["error"]["message"] == "no anchor with id 0123456789abcdef"
    run = voke("chain", "anchor", "run", "--dry-run", "--json", environ=fresh)
    assert run.exit_code == 0 and run.json["result"]["anchored"] == [], run.stdout
    leaves = tmp_path / "leaves.txt"
    leaves.write_text("a\nb\n")
    proof = tmp_path / "proof.json"
    proof.write_text(voke("chain", "prove", str(leaves), "--index", "0", "--json", environ=fresh).stdout)
    anchored = voke("chain", "verify", str(proof), "--anchored", "--json", environ=fresh)
    assert anchored.exit_code == 1 and not anchored.json["result"]["anchoring"]["anchored"], anchored.stdout
    audit = voke("audit", "verify", "--json", environ=fresh)  # its anchors checked: there are none
    assert audit.json["result"]["anchors_unchecked"] is None, audit.stdout
    with local_env.primary().connect() as conn:  # and none of them made the database
        assert conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None


@pytest.mark.pg
def test_export_and_import_through_postgres(voke, chain_env, tmp_path: Path) -> None:
    source = chain_env()
    voke("chain", "anchor", "request", merkle.root([b"x"]).hex(), environ=source)
    voke("chain", "anchor", "run", "--difficulty", "4", environ=source)
    exported = tmp_path / "export.json"
    assert voke("chain", "export", "--output", str(exported), environ=source).exit_code == 0
    assert json.loads(voke("chain", "export", environ=source).stdout)["format"] == "voke-chain"

    other = chain_env()
    assert voke("chain", "import", str(exported), "--dry-run", environ=other).exit_code == 0
    assert voke("chain", "anchors", "--json", environ=other).json["result"]["chain_length"] == 0
    imported = voke("chain", "import", str(exported), "--json", environ=other)
    assert imported.exit_code == 0 and imported.json["result"]["blocks_added"] == 1
    assert voke("chain", "validate", environ=other).exit_code == 0
    again = voke("chain", "import", str(exported), "--json", environ=other).json["result"]
    assert again["blocks_added"] == 0 and again["anchors_updated"] == 0
    assert voke("chain", "export", environ=other).stdout == voke("chain", "export", environ=source).stdout

    diverged = chain_env()
    voke("chain", "anchor", "request", merkle.root([b"y"]).hex(), environ=diverged)
    voke("chain", "anchor", "run", "--difficulty", "4", environ=diverged)
    refused = voke("chain", "import", str(exported), environ=diverged)
    assert refused.exit_code == 5 and "diverge" in refused.stderr

    doc = json.loads(exported.read_text())  # anchors edited to contradict the blocks, blocks intact
    for index, state in ((1, "anchored"), (None, "pending")):  # in a block it is not in; sealed, yet pending
        doc["anchors"][0].update(
            block_index=index, state=state, version=doc["anchors"][0].get("version", 1) + 1
        )
        (tmp_path / "tampered.json").write_text(json.dumps(doc))
        tampered = voke("chain", "import", str(tmp_path / "tampered.json"), environ=other)
        assert tampered.exit_code == 1 and "its anchors contradict its blocks" in tampered.stderr, (
            tampered.stderr
        )
    assert voke("chain", "validate", environ=other).exit_code == 0  # nothing was imported

    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "voke-chain", "version": 1,\n "blocks": [')
    result = voke("chain", "import", str(broken), environ=other)
    assert result.exit_code == 1 and f"{broken}:2:" in result.stderr


def test_file_store_setting(voke, make_environ, tmp_path: Path) -> None:
    """chain.store = "file" keeps the chain in VOKE_HOME/chain/chain.json, no environment."""
    home = tmp_path / "home"
    environ = make_environ(home, VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")
    voke("chain", "anchor", "request", merkle.root([b"f"]).hex(), environ=environ)
    run = voke("chain", "anchor", "run", "--difficulty", "4", "--json", environ=environ)
    assert run.exit_code == 0 and run.json["result"]["block"]["index"] == 0
    assert json.loads((home / "chain" / "chain.json").read_text())["blocks"][0]["index"] == 0
    assert not (home / "state.json").exists()
    event = voke("audit", "show", "--event-type", "chain.anchor.run", "--json", environ=environ)
    assert event.json["result"]["entries"][0]["target"] == str(home / "chain" / "chain.json")
    # The audit log anchors its checkpoints in the configured store too.
    checkpoint = voke("audit", "checkpoint", "--json", environ=environ).json["result"]
    assert checkpoint["anchoring_queued"] is False and checkpoint["anchors_requested"] == 1
    labels = [
        a["label"] for a in voke("chain", "anchors", "--json", environ=environ).json["result"]["anchors"]
    ]
    assert f"audit@{checkpoint['checkpoint']['size']}" in labels
    assert voke("audit", "verify", "--json", environ=environ).json["result"]["anchors_checked"] == 1
    bad = voke("chain", "anchors", "--json", environ=make_environ(home, VOKE_CHAIN__STORE="sqlite"))
    assert bad.exit_code == 3 and "VOKE_CHAIN__STORE: chain.store" in bad.json["error"]["message"]


def test_a_run_says_it_mines_only_once_it_does(voke, make_environ, tmp_path: Path) -> None:
    """Off a terminal `anchor run` writes "mining the next block" when a block is mined: not for
    nothing to anchor (a cron run), nor before refusing a chain that does not validate."""
    home = tmp_path / "home"
    environ = make_environ(home, VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")
    idle = voke("chain", "anchor", "run", environ=environ)
    assert idle.exit_code == 0 and "mining" not in idle.stderr, idle.stderr
    voke("chain", "anchor", "request", merkle.root([b"m1"]).hex(), environ=environ)
    mined = voke("chain", "anchor", "run", "--difficulty", "4", environ=environ)
    assert mined.exit_code == 0 and "mining the next block" in mined.stderr, mined.stderr
    path = home / "chain" / "chain.json"
    doc = json.loads(path.read_text())
    doc["blocks"][0]["nonce"] += 1  # block 0 no longer hashes to its stored hash
    path.write_text(json.dumps(doc))
    voke("chain", "anchor", "request", merkle.root([b"m2"]).hex(), environ=environ)
    refused = voke("chain", "anchor", "run", "--difficulty", "4", environ=environ)
    assert refused.exit_code == 5 and "chain invalid at block 0" in refused.stderr, refused.stderr
    assert "mining" not in refused.stderr


def test_validate_and_audit_verify_require_the_configured_work(voke, make_environ, tmp_path: Path) -> None:
    """A chain mined (or re-mined by whoever can write its store) with no proof of work fails
    `chain validate` and `audit verify` by default: chain.min_difficulty, 16 bits, what `anchor
    run` mines at. A chain mined with fewer bits on purpose passes with --min-difficulty or the setting."""
    home = tmp_path / "home"
    environ = make_environ(home, VOKE_CHAIN__STORE="file")
    voke("chain", "anchor", "request", merkle.root([b"w"]).hex(), environ=environ)
    refused = voke("chain", "anchor", "run", "--difficulty", "0", "--json", environ=environ)
    assert refused.exit_code == 2 and refused.json["error"]["message"].startswith(
        "--difficulty 0 is below chain.min_difficulty (16)"
    )
    assert voke("chain", "validate", "--json", environ=environ).json["result"]["length"] == 0  # nothing mined
    lowered = make_environ(home, VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="0")
    assert voke("chain", "anchor", "run", environ=lowered).exit_code == 0  # the setting's 0 bits
    weak = voke("chain", "validate", "--json", environ=environ)
    assert weak.exit_code == 1 and weak.json["result"]["problem"] == "insufficient_work"
    message = weak.json["error"]["message"]
    assert "block 0: difficulty 0 is below the required 16" in message and "`--min-difficulty 0`" in message
    untrusted = voke("audit", "verify", "--json", environ=environ)
    assert untrusted.exit_code == 1 and untrusted.json["result"]["problem"] == "untrusted_chain"
    assert untrusted.json["error"]["message"].startswith(
        "chain invalid at block 0: its anchors are not trusted"
    )
    human = voke("audit", "verify", environ=environ)
    assert (
        human.exit_code == 1 and "NOT VERIFIED" in human.stdout and "chain invalid at block 0" in human.stderr
    )
    for args, extra in ((["--min-difficulty", "0"], {}), ([], {"VOKE_CHAIN__MIN_DIFFICULTY": "0"})):
        accepting = make_environ(home, VOKE_CHAIN__STORE="file", **extra)
        assert voke("chain", "validate", *args, environ=accepting).exit_code == 0
        assert voke("audit", "verify", *args, environ=accepting).exit_code == 0
    # Anchoring on top of the weak block is told what it is worth (a cron run after an upgrade).
    voke("chain", "anchor", "request", merkle.root([b"x"]).hex(), environ=environ)
    on_top = voke("chain", "anchor", "run", "--json", environ=environ)
    assert on_top.exit_code == 0 and on_top.json["result"]["anchored"], on_top.stderr
    assert (
        "warning: block 0 of the chain has 0 bits of work, below chain.min_difficulty (16)" in on_top.stderr
    )
    # ... and so is every later run, the weak block no longer the head (FW: no word once a
    # block of the setting's work was on top).
    voke("chain", "anchor", "request", merkle.root([b"y"]).hex(), environ=environ)
    later = voke("chain", "anchor", "run", "--json", environ=environ)
    assert later.exit_code == 0 and later.json["result"]["block"]["index"] == 2, later.stderr
    assert "warning: block 0 of the chain has 0 bits of work" in later.stderr
    strong = make_environ(tmp_path / "strong", VOKE_CHAIN__STORE="file")
    voke("chain", "anchor", "request", merkle.root([b"s"]).hex(), environ=strong)
    assert voke("chain", "anchor", "run", environ=strong).exit_code == 0  # 16 bits by default
    assert voke("chain", "validate", environ=strong).exit_code == 0
    # `chain import` holds an incoming chain to the same work: the weak one is refused whole.
    exported = tmp_path / "weak.json"
    assert voke("chain", "export", "-o", str(exported), environ=environ).exit_code == 0
    imported = voke("chain", "import", str(exported), "--yes", "--json", environ=strong)
    assert imported.exit_code == 1, imported.stdout + imported.stderr
    assert "difficulty 0 is below the required 16" in imported.json["error"]["message"]
    assert "lower chain.min_difficulty" in imported.json["error"]["hint"]
    assert voke("chain", "validate", "--json", environ=strong).json["result"]["length"] == 1


def test_an_import_keeps_what_this_home_anchored(voke, make_environ, tmp_path: Path) -> None:
    """Home B requested, cancelled and requested again a root home A has anchored meanwhile:
    B's export (the root pending, a higher version) does not undo A's block."""
    home_a = make_environ(tmp_path / "a", VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")
    home_b = make_environ(tmp_path / "b", VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")
    a1, b1 = tmp_path / "a1.json", tmp_path / "b1.json"
    voke("chain", "anchor", "request", merkle.root([b"x"]).hex(), environ=home_a)
    voke("chain", "anchor", "run", "--difficulty", "4", environ=home_a)
    voke("chain", "export", "-o", str(a1), environ=home_a)
    assert voke("chain", "import", str(a1), "--yes", environ=home_b).exit_code == 0
    z = merkle.root([b"z"]).hex()
    voke("chain", "anchor", "request", z, environ=home_a)
    voke("chain", "anchor", "run", "--difficulty", "4", environ=home_a)
    voke("chain", "anchor", "request", z, environ=home_b)
    voke("chain", "anchor", "cancel", z, "--yes", environ=home_b)
    voke("chain", "anchor", "request", z, environ=home_b)
    voke("chain", "export", "-o", str(b1), environ=home_b)

    planned = voke("chain", "import", str(b1), "--dry-run", "--json", environ=home_a)
    imported = voke("chain", "import", str(b1), "--yes", "--json", environ=home_a)
    for result in (planned, imported):
        assert result.exit_code == 0, result.stderr
        assert result.json["result"]["blocks_added"] == result.json["result"]["anchors_updated"] == 0
    assert voke("chain", "validate", environ=home_a).exit_code == 0
    anchors = voke("chain", "anchors", "--state", "anchored", "--json", environ=home_a).json["result"]
    assert z in [a["id"] for a in anchors["anchors"]]


def test_an_import_dry_run_reads_the_local_chain_and_answers_as_the_import(
    voke, make_environ, tmp_path: Path
) -> None:
    homes = [
        make_environ(tmp_path / name, VOKE_CHAIN__STORE="file", VOKE_CHAIN__MIN_DIFFICULTY="4")
        for name in ("a", "c", "new")
    ]
    exported = tmp_path / "c.json"
    for environ, leaf in zip(homes[:2], (b"a", b"c"), strict=True):
        voke("chain", "anchor", "request", merkle.root([leaf]).hex(), environ=environ)
        voke("chain", "anchor", "run", "--difficulty", "4", environ=environ)
    voke("chain", "export", "-o", str(exported), environ=homes[1])

    for args in (["--dry-run"], ["--yes"]):  # A's chain and C's diverge
        refused = voke("chain", "import", str(exported), *args, "--json", environ=homes[0])
        assert refused.exit_code == 5 and "diverge" in refused.json["error"]["message"], refused.stdout
    fresh = voke("chain", "import", str(exported), "--dry-run", environ=homes[2])
    assert fresh.exit_code == 0
    assert (
        fresh.stdout
        == f"dry run: would import 1 new block(s) and add or update 1 anchor(s) from {exported}\n"
    )
    assert voke("chain", "anchors", "--json", environ=homes[2]).json["result"]["chain_length"] == 0
    assert voke("chain", "validate", environ=homes[2]).exit_code == 0
    assert voke("audit", "verify", environ=homes[2]).exit_code == 0
    assert not (tmp_path / "new").exists()  # reading, in any of these ways, created nothing


@pytest.mark.pg
def test_a_chain_file_is_migrated_into_postgres_once(voke, chain_env, platform_home: Path) -> None:
    from voketag_ops.adapters.local.chain_store import FileChainStore, default_chain_path
    from voketag_ops.workflows import chain as wf

    environ = chain_env()
    path = default_chain_path(platform_home)
    legacy = FileChainStore(path)
    now = datetime.now(UTC)
    wf.request_anchor(legacy, root=merkle.root([b"old"]), kind="batch", label="old", now=now)
    wf.run_anchors(legacy, now=now, difficulty=4)
    wf.request_anchor(legacy, root=merkle.root([b"pending"]), kind="batch", label="pending", now=now)
    before = voke("chain", "export", "--json", environ=dict(environ, VOKE_CHAIN__STORE="file")).json
    try:
        listing = voke("chain", "anchors", "--json", environ=environ)
        assert listing.exit_code == 0, listing.stderr
        assert listing.json["result"]["chain_length"] == 1
        assert sorted(a["label"] for a in listing.json["result"]["anchors"]) == ["old", "pending"]
        assert "moved the chain (1 blocks, 2 anchors)" in listing.stderr
        assert not path.exists()
        backups = list(path.parent.glob("chain.json.migrated-*"))
        assert len(backups) == 1
        after = voke("chain", "export", "--json", environ=environ).json["result"]["document"]
        assert after == before["result"]["document"]
        migrated = voke("audit", "show", "-e", "chain.migrate", "--newest-first", "--json", environ=environ)
        entry = migrated.json["result"]["entries"][0]
        assert entry["target"].startswith(f"PostgreSQL database {environ['VOKE_CHAIN__DATABASE']}")
        assert entry["details"]["blocks_added"] == 1 and entry["details"]["backup"] == str(backups[0])
        # Once: a second command finds no file and changes nothing.
        assert "moved the chain" not in voke("chain", "anchors", environ=environ).stderr

        # A file whose chain diverges from the database's is left alone: exit 7, nothing changed.
        rival = FileChainStore(path)
        wf.request_anchor(rival, root=merkle.root([b"rival"]), kind="batch", label="rival", now=now)
        wf.run_anchors(rival, now=now, difficulty=4)
        refused = voke("chain", "anchors", "--json", environ=environ)
        assert refused.exit_code == 7 and "diverge" in refused.json["error"]["message"]
        assert path.exists()
    finally:
        for leftover in path.parent.glob("chain.json*"):
            leftover.unlink()


def test_a_utf8_file_name_under_a_latin1_locale_is_recorded_as_utf8(
    voke, make_environ, tmp_path: Path, monkeypatch
) -> None:
    """Under LANG=en_US.ISO-8859-1 argv reads the UTF-8 bytes of `ré` as `rÃ©`: the audit event
    records the name by its bytes (UTF-8 when they are), not as the locale misread them. (The
    file system's encoding is fixed at start-up: os.fsencode/fsdecode stand in for Latin-1's.)"""
    import os

    monkeypatch.setattr(os, "fsencode", lambda p: os.fspath(p).encode("latin-1", "surrogateescape"))
    monkeypatch.setattr(os, "fsdecode", lambda p: os.fspath(p).decode("latin-1", "surrogateescape"))
    environ = make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file")
    for argv_name, recorded in (("rÃ©.json", "ré.json"), ("rÿ.json", "rÿ.json")):  # UTF-8; Latin-1
        (tmp_path / argv_name).write_text("{}")
        assert voke("chain", "import", str(tmp_path / argv_name), "--yes", environ=environ).exit_code == 1
        shown = voke("audit", "show", "--newest-first", "--limit", "1", "--json", environ=environ)
        assert shown.json["result"]["entries"][0]["target"] == f"{tmp_path}/{recorded}"


def test_a_file_name_that_is_not_utf8_is_recorded_with_escapes(voke, make_environ, tmp_path: Path) -> None:
    environ = make_environ(tmp_path / "home", VOKE_CHAIN__STORE="file")
    (tmp_path / "r\udcff.json").write_text("{}")  # bytes r, 0xff: argv hands it in as a lone surrogate
    assert voke("chain", "import", str(tmp_path / "r\udcff.json"), "--yes", environ=environ).exit_code == 1
    shown = voke("audit", "show", "--json", environ=environ)
    assert shown.json["result"]["entries"][0]["target"] == f"{tmp_path}/r\\xff.json"
