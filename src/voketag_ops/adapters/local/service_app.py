"""One local service instance, standing in for a Cloud Run revision.

Started by LocalServiceRuntime as ``python -m voketag_ops.adapters.local.service_app``.
Like Cloud Run with a secret in an environment variable, it resolves its pinned
secret version once, at start; `/health` then opens a *fresh* database connection
with that credential (a pooled connection would prove nothing after a rotation).
SIGTERM starts a graceful drain: the instance keeps answering for DRAIN seconds,
then exits, so a client that read the old route just before traffic moved is served.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DRAIN_SECONDS = 3.0


def load_credential(home: Path, secret: str, version: int) -> dict[str, Any]:
    from voketag_ops.adapters.local.secrets import LocalSecretStore

    return json.loads(LocalSecretStore(home).access(secret, version))


def check_database(cred: dict[str, Any], timeout: float = 3) -> tuple[bool, str]:
    """A fresh TCP login with the credential and a trivial query."""
    import psycopg

    try:
        with psycopg.connect(
            host=cred["host"],
            port=int(cred["port"]),
            user=cred["username"],
            password=cred["password"],
            dbname=cred["dbname"],
            connect_timeout=max(1, int(timeout)),
            application_name="voke-service",
        ) as conn:
            conn.execute("select 1").fetchone()
        return True, "ok"
    except psycopg.Error as exc:
        # libpq messages name the user, never the password; keep only the first line.
        return False, (str(exc).strip().splitlines() or ["database error"])[0]


class _Handler(BaseHTTPRequestHandler):
    server: _ServiceServer

    def do_GET(self) -> None:
        srv = self.server
        if self.path.split("?")[0] == "/health":
            ok, detail = check_database(srv.credential)
            body = {
                "status": "ok" if ok else "fail",
                "service": srv.name,
                "instance": srv.instance,
                "secret_version": srv.version,
                "detail": detail,
            }
            self._reply(200 if ok else 503, body)
        elif self.path == "/":
            self._reply(200, {"service": srv.name, "instance": srv.instance, "secret_version": srv.version})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: no access log on stderr
        return


class _ServiceServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, name: str, instance: str, version: int, credential: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.name = name
        self.instance = instance
        self.version = version
        self.credential = credential


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--drain", type=float, default=DRAIN_SECONDS, help="seconds to answer after SIGTERM")
    args = parser.parse_args(argv)
    try:
        credential = load_credential(args.home, args.secret, args.version)
    except Exception as exc:  # the instance cannot start; the runtime reports it
        sys.stderr.write(
            f"{args.instance}: cannot read {args.secret} version {args.version}: {type(exc).__name__}\n"
        )
        return 3
    server = _ServiceServer(args.port, args.name, args.instance, args.version, credential)

    def drain(_signum: int, _frame: Any) -> None:
        def stop() -> None:
            time.sleep(args.drain)
            server.shutdown()

        threading.Thread(target=stop, daemon=True).start()

    def stop_now(_signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, drain)  # traffic moved away: keep answering a little while
    signal.signal(signal.SIGINT, stop_now)  # the environment is going down: stop at once
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
