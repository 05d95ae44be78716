"""Application database logins on the local primary: roles, passwords, login tests.

Passwords are sent to PostgreSQL as SCRAM-SHA-256 verifiers computed here, so the
plain value never reaches the server, its statement log or pg_stat_activity; and the
verifier, which allows an offline guess, is kept out of the server log too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import TYPE_CHECKING, Any

from voketag_ops.adapters.pg_login import pg_login, timeout_ms
from voketag_ops.errors import DatabaseError, StatementRefusedError, TargetBusyError

if TYPE_CHECKING:
    import psycopg

    from voketag_ops.adapters.local.environment import LocalEnvironment

SCRAM_ITERATIONS = 4096
CONCURRENT_UPDATE_TRIES = 3  # an ALTER ROLE refused as "tuple concurrently updated" is sent again
# Session settings (superuser's) that keep a statement's text out of the server log: one that
# fails (log_min_error_statement), is slow (log_min_duration_statement) or is logged by
# log_statement.
QUIET_STATEMENT_LOG = (
    "set log_min_error_statement = panic",
    "set log_min_duration_statement = -1",
    "set log_statement = 'none'",
)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The `SCRAM-SHA-256$...` string PostgreSQL stores for PASSWORD (RFC 5802 / 7677)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class LocalDbTarget:
    """The rotation target for database passwords in the local environment. Every statement
    it runs gives up after TIMEOUT seconds (`rotation.db_timeout`), waiting on a lock included:
    an ALTER ROLE behind another session's open transaction on that role waited for ever."""

    def __init__(self, env: LocalEnvironment, *, timeout: float = 30.0) -> None:
        self.env = env
        self.timeout = timeout

    def _connect(self) -> psycopg.Connection[Any]:
        conn = self.env.primary().connect()
        ms = timeout_ms(self.timeout)
        conn.execute(f"set statement_timeout = {ms}")
        conn.execute(f"set lock_timeout = {ms}")
        return conn

    def endpoint(self) -> tuple[str, int]:
        return "127.0.0.1", self.env.primary().port

    def ensure_roles(self, *, owner: str, roles: tuple[str, ...], database: str) -> None:
        """Owner role (NOLOGIN) plus login roles that act as it, so objects either login
        creates belong to the owner and stay usable by both (alternating-user drift)."""
        from psycopg import sql

        self.env.platform_database(database)
        try:
            with self._connect() as conn:
                for role, login in [(owner, False), *[(r, True) for r in roles]]:
                    exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
                    if not exists:
                        conn.execute(
                            sql.SQL("create role {} {}").format(
                                sql.Identifier(role), sql.SQL("login" if login else "nologin")
                            )
                        )
                for role in roles:
                    conn.execute(
                        sql.SQL("grant {} to {}").format(sql.Identifier(owner), sql.Identifier(role))
                    )
                    conn.execute(
                        sql.SQL("alter role {} set role = {}").format(
                            sql.Identifier(role), sql.Identifier(owner)
                        )
                    )
                conn.execute(
                    sql.SQL("grant connect, create, temporary on database {} to {}").format(
                        sql.Identifier(database), sql.Identifier(owner)
                    )
                )
            with self.env.primary().connect(database) as conn:
                conn.execute(sql.SQL("grant all on schema public to {}").format(sql.Identifier(owner)))
        except Exception as exc:  # psycopg errors: one line, no statement text
            raise DatabaseError(f"cannot prepare roles {', '.join(roles)}: {_first_line(exc)}") from None

    def set_password_plan(self, role: str) -> str:
        """What set_password(ROLE, ...) does, for a dry run's plan."""
        return f"ALTER ROLE {role} with the new password (sent as a SCRAM verifier)"

    def set_password(self, role: str, password: str) -> None:
        """ALTER ROLE; TargetBusyError when it gave up waiting (its transaction rolled back:
        nothing changed), e.g. behind another session's open transaction that altered ROLE."""
        from psycopg import errors as pgerr
        from psycopg import sql

        statement = sql.SQL("alter role {} with login password {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(password))
        )
        try:
            with self._connect() as conn:
                # The verifier stands for the password (an offline guess needs only it): no
                # server log gets this statement's text, failing, slow or logged by setting.
                for setting in QUIET_STATEMENT_LOG:
                    conn.execute(setting)
                for attempt in range(1, CONCURRENT_UPDATE_TRIES + 1):
                    try:
                        conn.execute(statement)
                        break
                    except pgerr.InternalError_ as exc:
                        # Another session's transaction that altered ROLE ended while this ALTER
                        # waited for it: PostgreSQL then refuses rather than update the new row.
                        # Nothing changed; the same ALTER again goes through (review).
                        if "tuple concurrently updated" not in str(exc) or attempt == CONCURRENT_UPDATE_TRIES:
                            raise
        except DatabaseError:
            raise
        except (pgerr.QueryCanceled, pgerr.LockNotAvailable) as exc:
            raise TargetBusyError(
                f"cannot set the password of {role}: gave up after {self.timeout:g} s "
                f"(rotation.db_timeout): {_first_line(exc)}; it was not changed",
                hint="another session holds the role (an open transaction that altered it: see "
                "pg_stat_activity); end it, then retry",
            ) from None
        except pgerr.Error as exc:
            # The server's answer to the ALTER (autocommit: refused whole) changed nothing; a
            # connection lost on the way (no SQLSTATE) may have come after the commit.
            refused = exc.sqlstate is not None and not exc.sqlstate.startswith("08")
            kind = StatementRefusedError if refused else DatabaseError
            raise kind(f"cannot set the password of {role}: {_first_line(exc)}") from None
        except Exception as exc:
            raise DatabaseError(f"cannot set the password of {role}: {_first_line(exc)}") from None

    def can_login(self, cred: dict[str, Any], *, timeout: float = 3) -> bool:
        """A fresh TCP login with CRED (False when the password is rejected)."""
        return pg_login(cred, timeout=timeout, statement_timeout=self.timeout)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
