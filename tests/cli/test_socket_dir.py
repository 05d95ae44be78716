"""A socket directory outside VOKE_HOME (/tmp/voke-XXXXXXXX, for a home too long for a socket path)
that this process cannot see (systemd PrivateTmp, a cleaned /tmp): one line saying so, exit 4.
One that is there but not the servers' own (another user's in /tmp, a symbolic link, opened to
others) is connected through by nothing: exit 4 naming its owner, and `env up` makes a new one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from voketag_ops.adapters.local.postgres import OsUser, PgBinaries, PgNode, PgRunner
from voketag_ops.errors import BackendError
from voketag_ops.files import user_named


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


def node_in(socket_dir: Path, tmp_path: Path, server: OsUser | None = None) -> PgNode:
    """A node whose servers would listen in SOCKET_DIR as SERVER (this user), for its checks alone."""
    runner = PgRunner(PgBinaries(tmp_path / "bin"), server or OsUser.current())
    return PgNode("primary", tmp_path / "data", 5432, socket_dir, tmp_path / "log", runner=runner)


def test_a_node_whose_socket_directory_is_gone_says_so(tmp_path: Path) -> None:
    gone = voke_tmp_socket_dir()
    node = node_in(gone, tmp_path)
    with pytest.raises(BackendError) as raised:
        node.connect()
    assert raised.value.message == (
        f"cannot connect to the primary on port 5432: socket directory {gone} is gone: "
        "a different /tmp (systemd PrivateTmp?) or cleaned"
    )


def test_a_node_connects_through_no_socket_directory_of_another_user(tmp_path: Path) -> None:
    # (another user: a server user of another uid than this directory's owner, this user)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    server = OsUser("voke-test-other", 12345, 12345, "/")
    with pytest.raises(BackendError) as refused:
        node_in(theirs, tmp_path, server).connect()
    assert refused.value.message == (
        f"cannot connect to the primary on port 5432: socket directory {theirs} is owned by "
        f"{user_named(os.geteuid())}, not by the PostgreSQL user uid 12345"
    )
    assert "voke env up" in (refused.value.hint or "")


def test_a_node_connects_through_no_symbolic_link_nor_a_directory_open_to_others(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(own)
    with pytest.raises(BackendError) as refused:
        node_in(link, tmp_path).connect()
    assert refused.value.message.endswith(
        f"socket directory {link} is a symbolic link, which voke does not follow"
    )
    own.chmod(0o755)
    with pytest.raises(BackendError) as refused:
        node_in(own, tmp_path).connect()
    assert refused.value.message.endswith(
        f"socket directory {own} is open to other users (mode 0755, owned by {user_named(os.geteuid())})"
    )


def voke_hash_socket_dir(home: Path) -> Path:
    """The /tmp/voke-HASH an older voke put HOME's sockets in, a name anyone could predict."""
    return Path("/tmp") / f"voke-{hashlib.sha256(str(home).encode()).hexdigest()[:12]}"


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's directory needs root to make")
def test_a_long_home_s_socket_directory_is_its_own_and_checked_before_each_connection(
    tmp_path: Path, voke, make_environ
) -> None:
    from voketag_ops.adapters.local.environment import LocalEnvironment
    from voketag_ops.config import LocalSettings

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    environ = make_environ(deep, VOKE_LOCAL__REPLICA="false")
    victim = tmp_path / "victim"  # a directory of the server user's own (its home, say)
    victim.mkdir(mode=0o755)
    server = OsUser.for_servers(LocalSettings().system_user, create=True)
    os.chown(victim, server.uid, server.gid)
    planted = voke_hash_socket_dir(deep)  # planted by another user before the first `env up`
    planted.symlink_to(victim)
    env = LocalEnvironment(LocalSettings(home=deep, replica=False))
    socket_dir = renewed = planted
    try:
        up = voke("env", "up", "--json", environ=environ)
        assert up.exit_code == 0, up.stderr
        socket_dir = Path(env.require_state().socket_dir)
        assert (
            socket_dir != planted
            and socket_dir.parent == Path("/tmp")
            and socket_dir.name.startswith("voke-")
        )
        found = os.lstat(socket_dir)
        assert (found.st_uid, found.st_mode & 0o777) == (env.server_user(env.require_state()).uid, 0o700)
        assert victim.stat().st_mode & 0o777 == 0o755 and not list(victim.iterdir())

        # replaced after `env up` (a cleaned /tmp), by another user's directory, then by a link
        away = socket_dir.with_name(socket_dir.name + ".away")
        socket_dir.rename(away)
        try:
            socket_dir.mkdir(mode=0o700)
            os.chown(socket_dir, 12345, 12345)
            said = f"socket directory {socket_dir} is owned by uid 12345, not by the PostgreSQL user "
            for command in (["env", "status"], ["dr", "check"], ["ingest", "batches"]):
                refused = voke(*command, "--json", environ=environ)
                assert refused.exit_code == 4, (command, refused.stdout)
                assert said in refused.json["error"]["message"], command
                assert "`voke env down`, then `voke env up`" in refused.json["error"]["hint"]
            doctor = voke("doctor", "--json", environ=environ)
            [check] = [c for c in doctor.json["result"]["checks"] if c["name"] == "local environment"]
            assert check["ok"] is False and check["detail"].startswith(said), check
            socket_dir.rmdir()
            socket_dir.symlink_to(away)  # the servers' own sockets, through a link: still refused
            with pytest.raises(BackendError) as refused_link:
                env.primary().connect()
            assert refused_link.value.message.endswith(
                f"socket directory {socket_dir} is a symbolic link, which voke does not follow"
            )
            socket_dir.unlink()
            socket_dir.mkdir(mode=0o700)
            os.chown(socket_dir, 12345, 12345)
            # stopped, the next `env up` leaves the other user's directory and makes one of its own
            assert voke("env", "down", environ=environ).exit_code == 0
            again = voke("env", "up", environ=environ)
            assert again.exit_code == 0, again.stderr
            renewed = Path(env.require_state().socket_dir)
            assert renewed not in (socket_dir, planted) and os.lstat(socket_dir).st_uid == 12345
            with env.primary().connect() as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        finally:
            if socket_dir.is_symlink():
                socket_dir.unlink()
            elif socket_dir.exists():
                socket_dir.rmdir()
            away.rename(socket_dir)  # (the first servers' sockets are gone with them)

        # a state an older voke wrote names /tmp/voke-HASH: kept while it is the server user's own
        assert voke("env", "down", environ=environ).exit_code == 0
        planted.unlink()
        planted.mkdir(mode=0o700)
        os.chown(planted, found.st_uid, found.st_gid)
        raw = json.loads(env.state_file.read_text())
        env.state_file.write_text(json.dumps({**raw, "socket_dir": str(planted)}))
        assert voke("env", "up", environ=environ).exit_code == 0
        assert env.require_state().socket_dir == str(planted)
        with env.primary().connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:  # the local services too (LocalEnvironment.destroy stops the servers alone)
        voke("env", "destroy", "--yes", "--discard-chain", environ=environ)
        env.destroy()
        for leftover in (planted, socket_dir, renewed):
            if leftover.is_symlink():
                leftover.unlink()
            shutil.rmtree(leftover, ignore_errors=True)
