"""A data path for the fake Cloud SQL: each fake instance is one database on a real local
PostgreSQL, reached at an address of its own.

Cloud SQL gives every instance its own IP and the same port and database names. Here every
fake instance gets a loopback address (127.0.0.N) and a small TCP relay listening on it at
one shared port; the relay rewrites the `database` of the PostgreSQL startup packet to the
instance's own database and then copies bytes both ways, so voke connects exactly as it
does to Cloud SQL (instance IP, the configured port, the credential's dbname) and really
writes and reads. A clone is `CREATE DATABASE new TEMPLATE source`; a clone with
pointInTime then drops the drill canary's rows written after that time (so a drill can
prove it recovered exactly up to its cut); a new read replica is a copy too; a promotion
first re-copies the primary (a replica that had caught up); a deletion drops the database.
An instance that would hold an empty database (a new one, or a copy of one still empty)
gets it at its first use: a connection to its address, `database()`, a copy of it. Each
CREATE and DROP DATABASE forces PostgreSQL to write and sync (~0.2-0.5 s), and most tests
never connect to some of their instances (the replica, a dry run's primary).
"""

from __future__ import annotations

import errno
import hashlib
import socket
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from typing import Any

from voketag_ops.testing.gcp_fakes import FakeCloudSql

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def rewrite_startup(body: bytes, dbname: str) -> bytes:
    """A startup packet's key/value body with `database` set to DBNAME."""
    pairs: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(body) and body[i] != 0:
        k_end = body.index(b"\0", i)
        v_end = body.index(b"\0", k_end + 1)
        pairs.append((body[i:k_end], body[k_end + 1 : v_end]))
        i = v_end + 1
    pairs = [(k, v) for k, v in pairs if k != b"database"] + [(b"database", dbname.encode())]
    return b"".join(k + b"\0" + v + b"\0" for k, v in pairs) + b"\0"


class _Relay:
    """Listens on (IP, PORT); relays each connection to UPSTREAM with its database renamed."""

    def __init__(
        self, ip: str, port: int, upstream: tuple[str, int], dbname: str, before: Callable[[], None]
    ) -> None:
        self.upstream, self.dbname, self.before = upstream, dbname, before  # BEFORE each session
        self.server = socket.create_server((ip, port))  # port 0: the kernel picks a free one
        self.port = int(self.server.getsockname()[1])
        self.open: set[socket.socket] = set()
        self.serving: set[threading.Thread] = set()
        self.closing = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self.lock:
                if self.closing:
                    client.close()
                    return
                self.serving.add(thread)
            thread.start()

    def _track(self, sock: socket.socket) -> None:
        """SOCK is shut down by close(), or now if close() has begun."""
        with self.lock:
            self.open.add(sock)
            if self.closing:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        pump: threading.Thread | None = None
        self._track(client)
        try:
            while True:
                head = _recv_exact(client, 8)
                length, code = struct.unpack("!ii", head)
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    client.sendall(b"N")  # no TLS/GSS here: the client continues in plain text
                    continue
                body = _recv_exact(client, length - 8)
                break
            if code != CANCEL_REQUEST:
                body = rewrite_startup(body, self.dbname)
                self.before()
            upstream = socket.create_connection(self.upstream)
            self._track(upstream)
            upstream.sendall(struct.pack("!ii", len(body) + 8, code) + body)
            pump = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
            pump.start()
            self._pump(client, upstream)
            pump.join(timeout=5)
        except (OSError, ConnectionError, struct.error, ValueError):
            pass
        finally:
            # Shut down before closing, and close only once the pump is done: a socket closed
            # under a thread still using it frees its fd number for the next socket (see close).
            socks = [sock for sock in (client, upstream) if sock is not None]
            for sock in socks:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            if pump is not None:
                pump.join()
            for sock in socks:
                with suppress(OSError):
                    sock.close()
            with self.lock:
                self.open.difference_update(socks)
                self.serving.discard(threading.current_thread())

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stops listening and ends every session, and returns once none of this relay's
        threads is left. A close() alone does not wake a thread blocked in accept() on
        Linux: it stayed listening, and once the process was stopped and resumed (py-spy,
        a debugger, SIGSTOP) the kernel restarted its accept() on the same fd number, by
        then a later test's relay: that test's first session went to this relay's database
        (made or dropped by nobody any more)."""
        with self.lock:
            self.closing = True
            socks, serving = list(self.open), list(self.serving)
        for sock in (self.server, *socks):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes accept() and recv() with an error
        self.thread.join()
        for thread in serving:
            thread.join()
        with suppress(OSError):
            self.server.close()


class PostgresInstances:
    """Backs the instances of a FakeCloudSql with databases on a real PostgreSQL.

    ADMIN opens an autocommit superuser connection to that server's `postgres` database
    (ADMIN(dbname) to another database); UPSTREAM is its TCP address (what the relays
    forward to); OWNER owns every instance's database (the login the tests give voke). Use
    as a context manager; `port` is the port every instance answers on (`db_port` in
    voke.toml): the first relay binds port 0 and the others reuse the port it got, so two
    test sessions at once cannot pick the same one."""

    def __init__(
        self, sql: FakeCloudSql, admin: Callable[..., Any], upstream: tuple[str, int], *, owner: str
    ) -> None:
        self.sql, self.admin, self.upstream, self.owner = sql, admin, upstream, owner
        self.port = 0  # set by the first relay
        self.relays: dict[str, _Relay] = {}
        self.databases: dict[str, str] = {}
        self.empty: set[str] = set()  # instances whose (empty) database is made at its first use
        self._next = 20
        self.lock = threading.Lock()

    def __enter__(self) -> PostgresInstances:
        for name in list(self.sql.instances):
            self.create(name, None)
        self.sql.on_create = self.create
        self.sql.on_delete = self.delete
        self.sql.on_promote = self.catch_up
        self.sql.on_point_in_time = self.rewind
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self.databases):
            self.delete(name)

    @staticmethod
    def _dbname(instance: str) -> str:
        return "fk_" + hashlib.sha1(instance.encode()).hexdigest()[:16]

    def database(self, instance: str) -> str:
        with self.lock:
            self._made(instance)
        return self.databases[instance]

    def _made(self, instance: str) -> None:
        """INSTANCE's database exists (made empty now if it was left for its first use)."""
        if instance in self.empty:
            db = self.databases[instance]
            self._sql(f'drop database if exists "{db}" with (force)')
            self._sql(f'create database "{db}" owner "{self.owner}"')
            self.empty.discard(instance)

    def _forget(self, instance: str) -> None:
        """INSTANCE's database, if it has one made, is dropped."""
        if instance in self.databases and instance not in self.empty:
            self._sql(f'drop database if exists "{self.databases[instance]}" with (force)')

    def _use(self, instance: str) -> None:
        with self.lock:
            if instance in self.databases:
                self._made(instance)

    def _sql(self, statement: str) -> None:
        with self.admin() as conn:
            conn.execute(statement)

    def create(self, name: str, source: str | None) -> None:
        """A database (a copy of SOURCE's) and an address for the new instance NAME."""
        with self.lock:
            db = self._dbname(name)
            if source in self.databases and source not in self.empty:
                self._sql(f'drop database if exists "{db}" with (force)')
                self._sql(f'create database "{db}" owner "{self.owner}" template "{self.databases[source]}"')
                self.empty.discard(name)
            else:
                self._forget(name)
                self.empty.add(name)
            self.databases[name] = db
            self.relays[name] = self._relay(name, db)
            self.sql.instances[name]["ip"] = self.relays[name].server.getsockname()[0]

    def _relay(self, name: str, db: str) -> _Relay:
        """A relay for instance NAME's DB on the next free loopback address that has the shared port free."""
        for _ in range(200):
            ip = f"127.0.0.{self._next}"
            self._next += 1
            try:
                relay = _Relay(ip, self.port, self.upstream, db, lambda: self._use(name))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not self.port:
                    raise
                continue  # another session's relay holds this address and port: the next address
            self.port = relay.port
            return relay
        raise RuntimeError(f"no free loopback address for port {self.port}")

    def rewind(self, name: str, when: datetime) -> None:
        """A clone at WHEN holds no canary row written after WHEN (what Cloud SQL's
        recovery to a point in time does to every table; the canary is the one measured)."""
        with self.lock:
            db = self.databases.get(name)
            if db is None or name in self.empty:  # an empty database has no canary rows
                return
            with self.admin(db) as conn:
                if conn.execute("select to_regclass('voke_drill_canary')").fetchone()[0]:
                    conn.execute("delete from voke_drill_canary where written_at > %s", (when,))

    def catch_up(self, replica: str, primary: str) -> None:
        """Before REPLICA is promoted: it holds what PRIMARY holds (no replication lag)."""
        with self.lock:
            if replica not in self.databases or primary not in self.databases:
                return
            if primary in self.empty:
                self._forget(replica)
                self.empty.add(replica)
                return
            db = self.databases[replica]
            self._sql(f'drop database if exists "{db}" with (force)')
            self._sql(f'create database "{db}" owner "{self.owner}" template "{self.databases[primary]}"')
            self.empty.discard(replica)

    def delete(self, name: str) -> None:
        with self.lock:
            relay = self.relays.pop(name, None)
            self._forget(name)
            self.databases.pop(name, None)
            self.empty.discard(name)
        if relay is not None:  # outside the lock: a session it waits for may be in _use
            relay.close()
