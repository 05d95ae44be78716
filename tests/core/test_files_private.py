"""Files root writes where the PostgreSQL server user can write (VOKE_HOME/pg and below): a
link that user planted at a file's name, or in place of a directory on its way, is never
written, truncated, chmodded or chowned through; the name gets a new file of voke's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from voketag_ops import files
from voketag_ops.adapters.local import postgres
from voketag_ops.errors import ConfigError

ROOT = os.geteuid() == 0
OTHER = 65534  # nobody: the server user's stand-in
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to plant a link as another user")


def _victim(tmp_path: Path) -> tuple[Path, tuple[bytes, int, int]]:
    victim = tmp_path / "victim"
    victim.write_bytes(b"root-owned victim\n")
    victim.chmod(0o644)
    return victim, _seen(victim)


def _seen(path: Path) -> tuple[bytes, int, int]:
    found = path.stat()
    return path.read_bytes(), stat.S_IMODE(found.st_mode), found.st_uid


def _server_dir(tmp_path: Path) -> Path:
    """A directory the server user owns, as VOKE_HOME/pg/... is when voke runs as root."""
    directory = tmp_path / "data"
    directory.mkdir()
    if ROOT:
        os.chown(directory, OTHER, OTHER)
    return directory


def _plant(how: str, victim: Path, at: Path) -> None:
    if how == "symlink":
        at.symlink_to(victim)
        if ROOT:
            os.chown(at, OTHER, OTHER, follow_symlinks=False)
    elif how == "hard link":
        os.link(victim, at)
    else:
        os.mkfifo(at)


@pytest.mark.parametrize("how", ["symlink", "hard link", "fifo"])
def test_open_private_over_a_planted_link_leaves_its_target_untouched_and_makes_a_file(tmp_path, how):
    # Root's `dr restore` opened a recovery.signal the server user had linked to a root file
    # (O_TRUNC, then fchmod 0600 and chown): the file was emptied and given to that user.
    victim, before = _victim(tmp_path)
    signal = _server_dir(tmp_path) / "recovery.signal"
    _plant(how, victim, signal)
    owner = (OTHER, OTHER) if ROOT else None
    with files.open_private(signal, owner=owner) as fh:
        fh.write(b"voke\n")
    assert _seen(victim) == before
    made = signal.lstat()
    assert stat.S_ISREG(made.st_mode) and made.st_nlink == 1 and stat.S_IMODE(made.st_mode) == 0o600
    assert made.st_uid == (OTHER if ROOT else os.geteuid()) and signal.read_bytes() == b"voke\n"


def test_open_private_empties_voke_own_file_in_place(tmp_path):
    path = tmp_path / "rows.copy"
    path.write_bytes(b"old rows")
    path.chmod(0o644)
    inode = path.stat().st_ino
    with files.open_private(path) as fh:
        fh.write(b"new")
    assert (path.read_bytes(), path.stat().st_ino, stat.S_IMODE(path.stat().st_mode)) == (
        b"new",
        inode,
        0o600,
    )


def test_a_server_config_replaced_over_a_planted_temporary_link_leaves_its_target_untouched(tmp_path):
    # replace_whole wrote `.voke.conf.tmp` with O_TRUNC through whatever was at that name, then
    # fchowned it to the server user.
    victim, before = _victim(tmp_path)
    data = _server_dir(tmp_path)
    _plant("symlink", victim, data / ".voke.conf.tmp")
    files.replace_whole(data / "voke.conf", b"wal_level = replica\n", owner=(OTHER, OTHER) if ROOT else None)
    assert _seen(victim) == before
    assert (data / "voke.conf").read_bytes() == b"wal_level = replica\n"
    assert sorted(p.name for p in data.iterdir()) == ["voke.conf"]


@needs_root
def test_a_postgresql_conf_linked_to_a_root_file_is_not_copied_into_the_server_users_file(tmp_path):
    # write_config read postgresql.conf and wrote it back with voke's include, the server user's:
    # linked to /etc/shadow, root copied that into a file the server user reads.
    victim, before = _victim(tmp_path)
    data = _server_dir(tmp_path)
    _plant("symlink", victim, data / "postgresql.conf")
    user = postgres.OsUser("nobody", OTHER, OTHER, "/")
    node = postgres.PgNode(
        "primary", data, 5432, tmp_path, tmp_path / "log", runner=postgres.PgRunner(None, user)
    )  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="symbolic link uid 65534"):
        node.write_config({"wal_level": "replica"})
    assert _seen(victim) == before
    assert b"victim" not in (data / "voke.conf").read_bytes()


@needs_root
def test_a_data_directory_swapped_for_the_server_users_link_is_refused(tmp_path):
    # The server user owns pg/: it can rename a data directory and put a link to /etc there.
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    victim = elsewhere / "standby.signal"
    victim.write_bytes(b"root's\n")
    pg = _server_dir(tmp_path)
    (pg / "replica").symlink_to(elsewhere)
    os.chown(pg / "replica", OTHER, OTHER, follow_symlinks=False)
    with pytest.raises(ConfigError, match="symbolic link uid 65534"):
        files.open_private(pg / "replica" / "standby.signal", owner=(OTHER, OTHER))
    assert (victim.read_bytes(), victim.stat().st_uid) == (b"root's\n", 0)


def test_a_link_of_roots_or_this_users_on_the_way_is_followed(tmp_path):
    # (/tmp -> /private/tmp, a home moved and linked back)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real)
    with files.open_private(tmp_path / "linked" / "state") as fh:
        fh.write(b"x")
    assert (real / "state").read_bytes() == b"x"


def _link_of_another_user(tmp_path: Path) -> tuple[Path, int]:
    """A directory reached through a link (another user's when run as root), and its owner."""
    real = tmp_path / "real"
    real.mkdir(exist_ok=True)
    link = tmp_path / "theirs"
    link.symlink_to(real)
    if ROOT:
        os.chown(link, OTHER, OTHER, follow_symlinks=False)
    return link, link.lstat().st_uid


def test_the_link_rule_is_roots_only_another_user_follows_a_third_users_link(tmp_path):
    # A VOKE_HOME reached through a link a third user made worked for a non-root voke before the
    # rule, then was exit 3: only root's writes reach files the server user may not touch.
    link, owner = _link_of_another_user(tmp_path)
    fd = files._walk(link, euid=owner + 1)  # a user other than the link's, not root
    try:
        assert os.fstat(fd).st_ino == (tmp_path / "real").stat().st_ino
    finally:
        os.close(fd)
    if owner != 0:  # (as root the link is nobody's; otherwise this user's)
        with pytest.raises(ConfigError, match="reached through a symbolic link"):
            files._walk(link, euid=0)


@needs_root
def test_root_refuses_a_link_of_another_users_reached_through_one_of_roots(tmp_path):
    # _walk opened a permitted link without O_NOFOLLOW: the links in its target were followed
    # unchecked (root's /srv/voke -> VOKE_HOME/pg/replica, which the server user swapped).
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    pg = _server_dir(tmp_path)
    (pg / "replica").symlink_to(elsewhere)
    os.chown(pg / "replica", OTHER, OTHER, follow_symlinks=False)
    (tmp_path / "roots").symlink_to(pg / "replica")  # root's, to a path through the server user's
    with pytest.raises(ConfigError, match="symbolic link uid 65534"):
        files.open_private(tmp_path / "roots" / "standby.signal", owner=(OTHER, OTHER))
    assert not (elsewhere / "standby.signal").exists()


@needs_root
def test_root_refuses_another_users_link_reached_through_roots_link_to_a_file(tmp_path):
    # read_own followed a permitted link at the file's name: the target's own path went unchecked.
    _victim(tmp_path)
    pg = _server_dir(tmp_path)
    (pg / "replica").symlink_to(tmp_path)
    os.chown(pg / "replica", OTHER, OTHER, follow_symlinks=False)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "postgresql.conf").symlink_to(pg / "replica" / "victim")  # root's link
    with pytest.raises(ConfigError, match="symbolic link uid 65534"):
        files.read_own(conf / "postgresql.conf", limit=1024)


def test_read_own_follows_a_permitted_link_and_refuses_more_than_its_limit(tmp_path):
    (tmp_path / "real").write_bytes(b"18\n")
    (tmp_path / "PG_VERSION").symlink_to("real")  # relative, this user's
    assert files.read_own(tmp_path / "PG_VERSION", limit=16) == b"18\n"
    (tmp_path / "real").write_bytes(b"1" * 17)
    with pytest.raises(OSError, match="larger than 16 bytes"):
        files.read_own(tmp_path / "PG_VERSION", limit=16)
