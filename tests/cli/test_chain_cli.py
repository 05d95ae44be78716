"""`voke chain`: exit codes, stdout JSON, one-line errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from voketag_ops.core import merkle

LEAVES = [f"tag-{i}" for i in range(13)]


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
    assert missing.exit_code == 1 and "nope.txt: cannot read" in missing.json["error"]["message"]


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
    ],
)
def test_malformed_proof_documents_exit_2(voke, tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(text)
    result = voke("chain", "verify", str(path), "--json")
    assert result.exit_code == 2
    assert fragment in result.json["error"]["message"]


def test_anchor_lifecycle_validate_and_audit(voke, tmp_path: Path) -> None:
    root = merkle.root([b"batch"]).hex()
    other = merkle.root([b"other"]).hex()
    created = voke("chain", "anchor", "request", root, "--label", "batch-1", "--tree-size", "1", "--json")
    assert created.exit_code == 0 and created.json["result"]["outcome"] == "created"
    assert voke("chain", "anchor", "request", root, "--json").json["result"]["outcome"] == "existing"
    assert voke("chain", "anchor", "request", "abc").exit_code == 2
    dry = voke("chain", "anchor", "run", "--dry-run", "--json")
    assert dry.json["result"]["outcome"] == "dry-run"

    run = voke("chain", "anchor", "run", "--difficulty", "8", "--json")
    assert run.exit_code == 0 and run.json["result"]["block"]["index"] == 0
    assert run.json["result"]["hash_rate"] > 0
    listing = voke("chain", "anchors", "--json").json["result"]
    assert listing["anchors"][0]["state"] == "anchored" and listing["anchors"][0]["block_index"] == 0
    assert voke("chain", "anchors", "--state", "bogus").exit_code == 2
    assert voke("chain", "validate").exit_code == 0

    voke("chain", "anchor", "request", other, "--label", "o")
    refused = voke("chain", "anchor", "cancel", other[:12])  # no --yes and no terminal
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert voke("chain", "anchor", "cancel", other[:12], "--dry-run").exit_code == 0
    cancelled = voke("chain", "anchor", "cancel", other[:12], "--yes", "--json")
    assert cancelled.exit_code == 0 and cancelled.json["result"]["state"] == "cancelled"
    anchored = voke("chain", "anchor", "cancel", root, "--yes", "--json")
    assert anchored.exit_code == 5 and "anchored in block 0" in anchored.json["error"]["message"]
    assert voke("chain", "anchor", "cancel", "ffffffffffff", "--yes").exit_code == 2

    chain_file = tmp_path / "home" / "chain" / "chain.json"
    doc = json.loads(chain_file.read_text())
    doc["blocks"][0]["records"][0] = doc["blocks"][0]["records"][0].replace("batch-1", "forged")
    chain_file.write_text(json.dumps(doc))
    bad = voke("chain", "validate", "--json")
    assert bad.exit_code == 1 and bad.json["result"]["bad_index"] == 0
    assert bad.json["result"]["problem"] == "changed_record"
    assert "block 0" in bad.json["error"]["message"]

    events = voke("audit", "show", "--json").json["result"]["entries"]
    assert [e["event_type"] for e in events] == [
        "chain.anchor.request",
        "chain.anchor.request",
        "chain.anchor.run",
        "chain.anchor.request",
        "chain.anchor.cancel",
    ]
    assert voke("audit", "verify").exit_code == 0


def test_mining_out_of_bounds_exits_1(voke) -> None:
    voke("chain", "anchor", "request", merkle.root([b"x"]).hex())
    result = voke("chain", "anchor", "run", "--difficulty", "64", "--max-attempts", "10", "--json")
    assert result.exit_code == 1 and result.json["result"]["outcome"] == "mining-bound-reached"
    assert voke("audit", "show", "--result", "failure", "--json").json["result"]["total"] == 1


def test_export_and_import(voke, tmp_path: Path, make_environ) -> None:
    voke("chain", "anchor", "request", merkle.root([b"x"]).hex())
    voke("chain", "anchor", "run", "--difficulty", "4")
    exported = tmp_path / "export.json"
    assert voke("chain", "export", "--output", str(exported)).exit_code == 0
    assert json.loads(voke("chain", "export").stdout)["format"] == "voke-chain"

    other = make_environ(tmp_path / "other-home")
    assert voke("chain", "import", str(exported), "--dry-run", environ=other).exit_code == 0
    imported = voke("chain", "import", str(exported), "--json", environ=other)
    assert imported.exit_code == 0 and imported.json["result"]["blocks_added"] == 1
    assert voke("chain", "validate", environ=other).exit_code == 0

    diverged = make_environ(tmp_path / "diverged")
    voke("chain", "anchor", "request", merkle.root([b"y"]).hex(), environ=diverged)
    voke("chain", "anchor", "run", "--difficulty", "4", environ=diverged)
    assert voke("chain", "import", str(exported), environ=diverged).exit_code == 5

    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "voke-chain", "version": 1,\n "blocks": [')
    result = voke("chain", "import", str(broken), environ=other)
    assert result.exit_code == 1 and f"{broken}:2:" in result.stderr
