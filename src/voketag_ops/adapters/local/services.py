"""Local services standing in for Cloud Run: one HTTP process per instance.

The routing table (VOKE_HOME/services/registry.json) says which instance of each
service receives traffic, like a Cloud Run service's traffic split. A deploy is
blue-green: start a new instance pinned to an explicit secret version, wait until
its `/health` (a fresh DB login) passes, move traffic, then tell the old instance to
drain (it answers for a second more, then exits).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import secrets as pysecrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from voketag_ops import interrupts
from voketag_ops.adapters.local.postgres import pick_free_port, process_exists
from voketag_ops.core.rotation import parse_iso
from voketag_ops.core.times import iso
from voketag_ops.errors import ConfigError, HealthCheckError, RestartError
from voketag_ops.files import replace_json
from voketag_ops.logs import get_logger
from voketag_ops.ports import ServiceInfo

log = get_logger(__name__)

# A drained instance exits DRAIN seconds after its SIGTERM; one still draining this much later
# was never told to (a voke killed between moving traffic and signalling it) or hangs.
DRAIN_GRACE_SECONDS = 5.0
# How long an instance has to give any answer on /health before `env up` takes it for hung:
# well past service_app's own database timeout (3 s), after which it answers 503.
ANSWER_SECONDS = 8.0
KEPT_LOGS = 50  # logs of instances gone, kept when they say something (the newest)


def http_answers(url: str, timeout: float = 3) -> bool:
    """Whether URL gives any HTTP answer (an error status too) within TIMEOUT seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def http_health(url: str, timeout: float = 3) -> tuple[bool, dict[str, Any]]:
    """GET URL (a /health endpoint) with a new connection; (ok, body)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return False, body
    except (OSError, ValueError) as exc:
        return False, {"error": type(exc).__name__}


# What a service instance keeps of voke's environment: where Python and voke are, nothing else.
_PASSED_TO_SERVICES = ("HOME", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH")


def _service_environment() -> dict[str, str]:
    """A service instance's environment: enough to start Python and import voke. Not the
    caller's: a webhook URL, PGPASSWORD or a CI job's tokens in it stayed readable in
    /proc/PID/environ for as long as the instance ran, long after voke exited. (It reads its
    credential from the store; PG* variables would also change how it connects.)"""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    env.update({name: os.environ[name] for name in _PASSED_TO_SERVICES if name in os.environ})
    return env


def _listed(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every instance the registry DOC lists: each service's active one and the others."""
    return [i for e in doc["services"].values() for i in [e.get("active"), *e.get("others", [])] if i]


class LocalServiceRuntime:
    """ServiceRuntime for the local environment."""

    def __init__(
        self,
        home: Path,
        consumers: dict[str, str],
        *,
        start_timeout: float = 20,
        drain_seconds: float = 3.0,
        reserved_ports: Callable[[], Iterable[int]] = tuple,
    ) -> None:
        self.home = home
        # Ports a new instance must not take although they may be free at that moment: the
        # environment's PostgreSQL nodes and restored instances, free while one is stopped (a
        # failback repoints the services while the old leader is down, then starts it again).
        self.reserved_ports = reserved_ports
        self.drain_seconds = drain_seconds  # how long a replaced instance keeps answering
        self.dir = home / "services"
        self.registry_file = self.dir / "registry.json"
        self.consumers = consumers  # service -> secret it reads
        self.start_timeout = start_timeout

    # -- registry -------------------------------------------------------------------
    @contextmanager
    def _registry(self) -> Iterator[dict[str, Any]]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.dir / "registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                doc = json.loads(self.registry_file.read_text())
            except (FileNotFoundError, ValueError):
                doc = {"services": {}}
            self._stop_unlisted(doc)
            yield doc
            replace_json(self.registry_file, doc, indent=1)  # a full disk: the old one, no .tmp
            self._prune_logs(doc)
        finally:
            os.close(fd)

    def _prune_logs(self, doc: dict[str, Any]) -> None:
        """Remove the logs of instances DOC no longer lists: empty ones at once (every instance
        opens one, and a rotation or failover starts a few), others beyond the newest KEPT_LOGS
        (what a crashed instance printed stays a while). Under the registry lock."""
        listed = {i["instance"] for i in _listed(doc)}
        gone = []
        for path in (self.dir / "logs").glob("*.log"):
            try:
                info = path.stat()
            except OSError:
                continue
            if path.stem in listed:
                continue
            if info.st_size == 0:
                path.unlink(missing_ok=True)
            else:
                gone.append((info.st_mtime, path))
        for _mtime, path in sorted(gone, reverse=True)[KEPT_LOGS:]:
            path.unlink(missing_ok=True)

    def _stop_unlisted(self, doc: dict[str, Any]) -> None:
        """Stop this home's service processes that DOC does not list: a voke killed between
        starting one and writing the registry (both under the registry lock, which the caller
        holds now) left it running where no `env down` or `destroy` would find it."""
        listed = {i["pid"] for i in _listed(doc)}
        for pid in _instances_of(self.home):
            if pid not in listed:
                log.info("stopping service process %s, which no registry lists", pid)
                _terminate(pid, self.home, None)

    def _live(self, inst: dict[str, Any] | None) -> bool:
        """Whether registry record INST's process still runs (its pid not reused since)."""
        return inst is not None and _alive(inst["pid"], self.home, inst["instance"])

    def _stop(self, inst: dict[str, Any]) -> None:
        _terminate(inst["pid"], self.home, inst["instance"])

    def _snapshot(self) -> dict[str, Any]:
        try:
            return json.loads(self.registry_file.read_text())
        except (FileNotFoundError, ValueError):
            return {"services": {}}

    def _overdue(self, inst: dict[str, Any]) -> bool:
        """Whether INST, moved off traffic, has been draining for longer than a drain takes:
        told to drain, it would have exited; still running, it never was (its voke was killed
        between moving traffic and SIGTERM) or it hangs. It serves nothing and pins nothing."""
        since = inst.get("draining_since")
        if inst.get("role") != "draining" or not since:
            return False
        age = (datetime.now(timezone.utc) - parse_iso(since)).total_seconds()
        return age > self.drain_seconds + DRAIN_GRACE_SECONDS

    def _reap(self, entry: dict[str, Any]) -> list[str]:
        """Forget dead instances; stop instances whose starting voke process died, and those
        draining for too long; tell the other draining ones to drain (the names stopped)."""
        keep, stopped = [], []
        for inst in entry.get("others", []):
            if not self._live(inst):
                continue
            orphaned = inst.get("role") == "starting" and not process_exists(inst.get("owner"))
            if orphaned or self._overdue(inst):
                log.info("stopping orphaned instance %s", inst["instance"])
                self._stop(inst)
                stopped.append(inst["instance"])
                continue
            if inst.get("role") == "draining":
                # The voke that moved traffic off it may have been killed before its SIGTERM; a
                # second SIGTERM changes nothing (the instance exits when its first drain ends).
                _signal(inst["pid"], signal.SIGTERM)
            keep.append(inst)
        entry["others"] = keep
        active = entry.get("active")
        if active and not self._live(active):
            entry["active"] = None
        return stopped

    # -- ServiceRuntime ---------------------------------------------------------------------
    def services(self, *, check: bool = True) -> list[ServiceInfo]:
        doc = self._snapshot()
        entries = {name: doc["services"].get(name) or {} for name in self.consumers}
        actives = {
            name: e.get("active") if self._live(e.get("active")) else None for name, e in entries.items()
        }
        urls = {name: f"http://127.0.0.1:{a['port']}/health" if a else None for name, a in actives.items()}
        checked: dict[str, bool | None] = dict.fromkeys(urls)
        if check:  # at once: each waits up to 3 s on a service whose database does not answer
            with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
                found = pool.map(lambda url: url is not None and http_health(url)[0], urls.values())
                checked = dict(zip(urls, found, strict=True))
        out = []
        for name, secret in self.consumers.items():
            entry, active, url, healthy = entries[name], actives[name], urls[name], checked[name]
            out.append(
                ServiceInfo(
                    name=name,
                    url=url,
                    secret=secret,
                    secret_version=active["version"] if active else entry.get("version"),
                    healthy=healthy,
                    instance=active["instance"] if active else None,
                )
            )
        return out

    def url(self, service: str) -> str | None:
        """The health URL of the instance that receives traffic (read per request by probes)."""
        active = (self._snapshot()["services"].get(service) or {}).get("active")
        return f"http://127.0.0.1:{active['port']}/health" if active else None

    def health(self, service: str) -> bool:
        url = self.url(service)
        return url is not None and http_health(url)[0]

    def serving_version(self, service: str, secret: str) -> int | None:
        entry = self._snapshot()["services"].get(service) or {}
        active = entry.get("active")
        if not active or not self._live(active) or entry.get("secret", self.consumers.get(service)) != secret:
            return None
        return int(active["version"])

    def pinned_versions(self, secret: str) -> set[int]:
        """Versions any live instance (serving or draining, not one draining for longer than a
        drain takes) is pinned to, and those the registry assigns: never disable these."""
        return self._versions(secret, assigned=True)

    def live_versions(self, secret: str) -> set[int]:
        """Versions a live instance (serving or draining) is pinned to."""
        return self._versions(secret, assigned=False)

    def live_pins(self, service: str, secret: str) -> dict[str, int | str | None]:
        """Each live instance of SERVICE (serving or draining) -> its version, if it reads SECRET."""
        entry = self._snapshot()["services"].get(service) or {}
        reads = self._reads(service, entry, secret)
        return {
            inst["instance"]: int(inst["version"]) if reads else None for inst in self._live_instances(entry)
        }

    def _reads(self, service: str, entry: dict[str, Any], secret: str) -> bool:
        return self.consumers.get(service) == secret or entry.get("secret") == secret

    def _live_instances(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            inst
            for inst in [entry.get("active"), *entry.get("others", [])]
            if inst is not None
            and self._live(inst)
            and not self._overdue(inst)  # overdue: the next reap stops it
        ]

    def _versions(self, secret: str, *, assigned: bool) -> set[int]:
        found: set[int] = set()
        for name, entry in self._snapshot()["services"].items():
            if not self._reads(name, entry, secret):
                continue
            found.update(int(inst["version"]) for inst in self._live_instances(entry))
            if assigned and entry.get("version") is not None:
                found.add(int(entry["version"]))
        return found

    def deploy(self, service: str, secret: str, version: int) -> ServiceInfo:
        """Blue-green restart pinned to VERSION (a no-op when already serving it healthily)."""
        with self._registry() as doc:
            entry = doc["services"].setdefault(service, {"secret": secret, "active": None, "others": []})
            self._reap(entry)
            active = entry.get("active")
            # The version of SECRET: the same number of the secret it read until now is another value.
            same = (
                active is not None and active["version"] == version and entry.get("secret", secret) == secret
            )
        if same and http_health(_url(active))[0]:
            return self._info(service, secret, active, healthy=True)
        new = self._start(service, secret, version)
        ok, body = self._wait_healthy(new)
        if not ok:
            self._stop(new)
            with self._registry() as doc:
                entry = doc["services"][service]
                entry["others"] = [i for i in entry["others"] if i["instance"] != new["instance"]]
            if not self._live(new) and body.get("error") == "exited":
                raise RestartError(f"{service}: the new instance pinned to version {version} exited at start")
            raise HealthCheckError(
                f"{service}: the new instance pinned to version {version} is not healthy ({body.get('detail') or body.get('error') or 'no answer'})"
            )
        with self._registry() as doc:
            entry = doc["services"][service]
            old = entry.get("active")
            entry["others"] = [i for i in entry["others"] if i["instance"] != new["instance"]]
            new["role"] = "serving"
            entry["active"] = new
            entry["secret"] = secret
            entry["version"] = version
            draining = old if self._live(old) else None
            if draining:
                draining["role"] = "draining"
                draining["draining_since"] = iso(datetime.now(timezone.utc))
                entry["others"].append(draining)
        if draining:  # killed before this, the next reap (deploy, env up, stop_orphans) sends it
            _signal(draining["pid"], signal.SIGTERM)  # graceful: it drains, then exits on its own
        return self._info(service, secret, new, healthy=True)

    def stop_orphans(self) -> list[str]:
        """Stop the instances a deploy started whose voke died before moving traffic to them:
        they never serve, but read their version until stopped. Also end the ones it moved
        traffic off and died before telling to drain (`_reap`). The instances stopped."""
        with self._registry() as doc:
            return [name for entry in doc["services"].values() for name in self._reap(entry)]

    def repin_stopped(self, targets: dict[str, tuple[str, int]]) -> list[str]:
        """Pin the services of TARGETS that have no live instance to their (secret, version),
        without starting them: the next `env up` starts them there (after a failover, the
        version naming the new leader). The names repinned."""
        repinned = []
        with self._registry() as doc:
            for service, (secret, version) in targets.items():
                entry = doc["services"].setdefault(service, {"secret": secret, "active": None, "others": []})
                self._reap(entry)
                active = entry.get("active")
                if self._live(active) or entry.get("version") == version:
                    continue
                entry["secret"], entry["version"] = secret, version
                repinned.append(service)
        return repinned

    def deploy_many(self, targets: dict[str, tuple[str, int]]) -> list[ServiceInfo]:
        """Deploy several services in parallel; raises the first failure after all finished. An
        interrupt waits for the deploys under way (``interrupts.together``): what serves
        afterwards is what the caller reports."""
        futures = interrupts.together(self.deploy, [(n, s, v) for n, (s, v) in targets.items()])
        results, errors = [], []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return results

    def not_answering(self) -> dict[str, str]:
        """service -> instance, for each serving instance that runs but gives no HTTP answer on
        /health (hung, SIGSTOPped): a slow or failing database login still answers, with 503."""
        doc = self._snapshot()
        live = {
            name: active
            for name in self.consumers
            if (active := (doc["services"].get(name) or {}).get("active")) is not None and self._live(active)
        }
        if not live:
            return {}
        with ThreadPoolExecutor(max_workers=len(live)) as pool:
            answered = list(pool.map(lambda inst: http_answers(_url(inst), ANSWER_SECONDS), live.values()))
        return {
            name: inst["instance"] for (name, inst), ok in zip(live.items(), answered, strict=True) if not ok
        }

    def ensure_started(
        self,
        versions: dict[str, int],
        *,
        repin: bool = False,
        replace: Mapping[str, str] = MappingProxyType({}),
    ) -> list[str]:
        """Start every consumer that has no live instance (env up), pinned to the version it was
        pinned to, or to VERSIONS[secret] if it has none or REPIN (the credentials are new).

        REPLACE (service -> instance, from `not_answering`): while that instance still serves,
        its service is deployed anew the same way, and the instance is killed once another one
        serves. One that answers again by then is kept (the deploy finds it healthy) and is
        not in the names returned: those started, and those replaced."""
        self.stop_orphans()  # what a killed voke left starting or draining (env up after kill -9)
        doc = self._snapshot()
        todo: dict[str, tuple[str, int]] = {}
        hung: dict[str, dict[str, Any]] = {}
        for name, secret in self.consumers.items():
            entry = doc["services"].get(name) or {}
            active = entry.get("active")
            if active is not None and self._live(active):
                if replace.get(name) != active["instance"]:
                    continue
                hung[name] = active
            version = versions[secret] if repin else (entry.get("version") or versions[secret])
            todo[name] = (secret, int(version))
        if todo:
            self.deploy_many(todo)
        kept: list[str] = []
        with self._registry() if hung else nullcontext(doc) as doc:  # (another voke may deploy too)
            for name, inst in hung.items():
                active = (doc["services"].get(name) or {}).get("active")
                if active is not None and active["instance"] == inst["instance"]:
                    kept.append(name)  # it answered the deploy's health check: it serves again
                elif self._live(inst):  # it cannot drain (it does not run): nothing is lost
                    _signal(inst["pid"], signal.SIGKILL)
        return [name for name in todo if name not in kept]

    def stop_all(self, timeout: float = 5) -> list[str]:
        """Stop every instance (env down); waits for them to exit."""
        stopped: list[str] = []
        live: list[dict[str, Any]] = []
        try:
            with self._registry() as doc:
                for name, entry in doc["services"].items():
                    for inst in [entry.get("active"), *entry.get("others", [])]:
                        if self._live(inst):
                            live.append(inst)
                            if inst is entry.get("active"):
                                stopped.append(name)
                    entry["active"] = None
                    entry["others"] = []
                for inst in live:  # before the registry is written: a full disk must not keep them up
                    _signal(inst["pid"], signal.SIGINT)  # stop now (SIGTERM would drain first)
        except OSError as exc:  # the registry could not be rewritten; dead instances are reaped later
            for inst in live:
                _signal(inst["pid"], signal.SIGINT)
            if isinstance(exc, PermissionError):  # another user's registry: said (exit 3), not skipped
                raise
            # (the instances are stopped: env down has done its job, so a warning, not exit 4)
            log.warning(
                "could not update the service registry %s: %s",
                exc.filename or self.registry_file,
                exc.strerror or exc,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(self._live(i) for i in live):
            time.sleep(0.05)
        for inst in live:
            if self._live(inst):
                _signal(inst["pid"], signal.SIGKILL)
        order = list(self.consumers)  # the registry's order depends on which parallel deploy wrote first
        return sorted(stopped, key=lambda n: order.index(n) if n in order else len(order))

    # -- instances --------------------------------------------------------------------------
    def _start(self, service: str, secret: str, version: int) -> dict[str, Any]:
        instance = f"{service}-v{version}-{pysecrets.token_hex(3)}"
        logs = self.dir / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        with self._registry() as doc:
            used = {i["port"] for i in _listed(doc)}
            port = pick_free_port(avoid=[*used, *self.reserved_ports()])
            log_fd = os.open(logs / f"{instance}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(log_fd, "ab") as log_fh:  # private whatever the umask, as all voke keeps
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "voketag_ops.adapters.local.service_app",
                        "--name",
                        service,
                        "--instance",
                        instance,
                        "--port",
                        str(port),
                        "--home",
                        str(self.home),
                        "--secret",
                        secret,
                        "--version",
                        str(version),
                        "--drain",
                        str(self.drain_seconds),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=log_fh,
                    start_new_session=True,  # survives voke's exit and its Ctrl-C, like a real service
                    close_fds=True,
                    env=_service_environment(),
                )
            record = {
                "instance": instance,
                "pid": proc.pid,
                "port": port,
                "version": version,
                "secret": secret,
                "role": "starting",
                "owner": os.getpid(),
                "started_at": iso(datetime.now(timezone.utc)),
            }
            entry = doc["services"].setdefault(service, {"secret": secret, "active": None, "others": []})
            entry["others"].append(record)
        self._procs = getattr(self, "_procs", {})
        self._procs[proc.pid] = proc  # reap it if it exits while we wait
        return record

    def _wait_healthy(self, inst: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        deadline = time.monotonic() + self.start_timeout
        body: dict[str, Any] = {}
        proc = self._procs.get(inst["pid"])
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False, {"error": "exited"}
            ok, body = http_health(_url(inst), timeout=2)
            if ok:
                return True, body
            time.sleep(0.05)
        return False, body

    def _info(self, service: str, secret: str, inst: dict[str, Any], *, healthy: bool | None) -> ServiceInfo:
        return ServiceInfo(
            name=service,
            url=_url(inst),
            secret=secret,
            secret_version=int(inst["version"]),
            healthy=healthy,
            instance=inst["instance"],
        )


def _url(inst: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{inst['port']}/health"


_APP = b"voketag_ops.adapters.local.service_app"


def _started_for(pid: int | str, home: Path, instance: str | None = None) -> bool:
    """Whether PID's command line is that of a service process started for HOME (named
    INSTANCE, when given): a pid the registry kept may since be any process's, another home's
    service or another user's included."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    pairs = set(itertools.pairwise(args))
    return (
        _APP in args
        and (b"--home", str(home).encode()) in pairs
        and (instance is None or (b"--instance", instance.encode()) in pairs)
    )


def _alive(pid: int | None, home: Path, instance: str | None) -> bool:
    """Whether PID is a running service process of HOME named INSTANCE (any instance: None).
    One another user runs (root started it on this user's VOKE_HOME) is alive: signalling it
    is then an error naming its owner (`_signal`), not a service silently left running."""
    if not pid or not _started_for(pid, home, instance):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is not alive
    except (OSError, IndexError):
        return False


def _instances_of(home: Path) -> list[int]:
    """Pids of the service processes started for HOME (read from /proc: none elsewhere)."""
    try:
        names = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []
    return [int(name) for name in names if _started_for(name, home)]


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # another user's (root started it on this user's VOKE_HOME): exit 3
        from voketag_ops.files import account, user_named

        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            raise ConfigError(f"cannot signal service process {pid}: permission denied") from None
        raise ConfigError(
            f"cannot signal service process {pid}: it runs as {user_named(owner)}, not as you",
            hint=f"stop it as {account(owner) or f'uid {owner}'}: kill {pid}",
        ) from None


def _terminate(pid: int, home: Path, instance: str | None) -> None:
    """Stop PID, a service process of HOME named INSTANCE (any instance: None), now (no drain)."""
    if not _alive(pid, home, instance):
        return
    _signal(pid, signal.SIGINT)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _alive(pid, home, instance):
        time.sleep(0.05)
    if _alive(pid, home, instance):
        _signal(pid, signal.SIGKILL)
