"""The fresh-login test both database targets use (local PostgreSQL and Cloud SQL)."""

from __future__ import annotations

from typing import Any

from voketag_ops.errors import AuthenticationError, ConnectivityError


def timeout_ms(seconds: float) -> int:
    """PostgreSQL's statement_timeout / lock_timeout for SECONDS (> 0): never 0, which is no limit."""
    return max(1, round(seconds * 1000))


def pg_login(cred: dict[str, Any], *, timeout: float = 5, statement_timeout: float = 30) -> bool:
    """A fresh TCP login with CRED plus a privilege probe (given up after STATEMENT_TIMEOUT
    seconds). False when the password is rejected; ConnectivityError when the server cannot
    be reached at all."""
    import psycopg

    try:
        with psycopg.connect(
            host=cred["host"],
            port=int(cred["port"]),
            user=cred["username"],
            password=cred["password"],
            dbname=cred["dbname"],
            connect_timeout=max(1, int(timeout)),
            application_name="voke-rotate-test",
        ) as conn:
            conn.execute(f"set statement_timeout = {timeout_ms(statement_timeout)}")
            row = conn.execute("select has_database_privilege(current_database(), 'CONNECT')").fetchone()
            return bool(row and row[0])
    except psycopg.OperationalError as exc:
        text = str(exc)
        if "password authentication failed" in text or "does not exist" in text or "not permitted" in text:
            return False
        first = (text.strip().splitlines() or ["connection failed"])[0]
        raise ConnectivityError(
            f"cannot reach the database at {cred['host']}:{cred['port']}: {first}"
        ) from None
    except psycopg.Error as exc:
        raise AuthenticationError(f"{cred['username']}: {type(exc).__name__}") from None
