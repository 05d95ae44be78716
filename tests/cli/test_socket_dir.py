"""A socket directory outside VOKE_HOME (/tmp/voke-HASH, for a home too long for a socket path)
that this process cannot see (systemd PrivateTmp, a cleaned /tmp): one line saying so, exit 4."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest


def voke_tmp_socket_dir() -> Path:
    """A /tmp/voke-HASH that does not exist, as `LocalEnvironment._socket_dir` names them."""
    return Path("/tmp") / f"voke-{uuid.uuid4().hex[:12]}"


def test_a_connection_through_a_missing_socket_directory_says_so(voke) -> None:
    gone = voke_tmp_socket_dir()
    result = voke("ingest", "batches", "--db", f"host={gone} port=5432 dbname=app user=voke", "--json")
    assert result.exit_code == 4, result.stdout
    error = result.json["error"]
    assert error["message"] == (
        f"cannot connect to local socket:5432/app: socket directory {gone} is gone: "
        "a different /tmp (systemd PrivateTmp?) or cleaned"
    )
    assert "VOKE_HOME of at most 77 bytes" in error["hint"]


@pytest.mark.parametrize("name", ["run/postgresql", "voke-mine"])  # (voke's own are voke-<12 hex>)
def test_a_missing_socket_directory_of_the_users_own_server_is_named_without_voke_s_hint(
    voke, tmp_path: Path, name: str
) -> None:
    gone = tmp_path / name if name.startswith("run") else Path("/tmp") / f"{name}-{uuid.uuid4().hex}"
    result = voke("ingest", "batches", "--db", f"host={gone} port=5432 dbname=app user=voke", "--json")
    assert result.exit_code == 4, result.stdout
    error = result.json["error"]
    assert error["message"] == (
        f"cannot connect to local socket:5432/app: socket directory {gone} does not exist"
    )
    assert "VOKE_HOME" not in (error.get("hint") or "")


def test_a_socket_directory_that_is_a_file_is_said_to_be_one(voke, tmp_path: Path) -> None:
    afile = tmp_path / "x.csv"
    afile.write_text("tag_id\n")
    result = voke("ingest", "batches", "--db", f"host={afile} port=5432 dbname=app user=voke", "--json")
    assert result.exit_code == 4, result.stdout
    assert result.json["error"]["message"].endswith(f"socket directory {afile} is not a directory")


def test_a_node_whose_socket_directory_is_gone_says_so(tmp_path: Path) -> None:
    from voketag_ops.adapters.local.postgres import PgNode
    from voketag_ops.errors import BackendError

    gone = voke_tmp_socket_dir()
    node = PgNode("primary", tmp_path / "data", 5432, gone, tmp_path / "log", runner=None)  # type: ignore[arg-type]
    with pytest.raises(BackendError) as raised:
        node.connect()
    assert raised.value.message == (
        f"cannot connect to the primary on port 5432: socket directory {gone} is gone: "
        "a different /tmp (systemd PrivateTmp?) or cleaned"
    )
