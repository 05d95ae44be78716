"""What `rotate cleanup` makes of the versions the local repoint (`dr failover`, `dr failback`,
`env move-port`) adds to the services' connection secret, on the local secret store alone: the
version that was `current` until a repoint or rotation keeps its 24 hours."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from voketag_ops.adapters.local.secrets import LocalSecretStore
from voketag_ops.config import LocalSettings, Settings
from voketag_ops.workflows.dr import repoint_report, repoint_services

SECRET = "db-app"  # rotation.db_users' default connection secret
HOME_PORT, OTHER_PORT = 5433, 5434


def _seeded(tmp_path):
    home = tmp_path / "home"
    settings = Settings(local=LocalSettings(home=home))
    store = LocalSecretStore(home)
    store.create(SECRET)
    made = []
    for role in ("app_b", "app_a"):  # previous first, current last, as `env up` makes them
        cred = {"username": role, "password": "pw-" + role, "host": "127.0.0.1", "port": HOME_PORT}
        made.append(store.add_version(SECRET, json.dumps(cred).encode()).version)
    store.update(SECRET, etag=store.get(SECRET).etag, aliases={"previous": made[0], "current": made[1]})
    return settings, store


def _repoint(settings, port):
    """The repoint of a failover or failback to a leader on PORT (no service running)."""
    from voketag_ops.adapters.local.environment import LocalEnvironment

    env = LocalEnvironment(settings.local)
    return repoint_services(settings, env, SimpleNamespace(port=port))  # (only its port is read)


def _rotated(settings, store):
    """What a rotation leaves: a new version made `current`, the old one `previous`, and the
    services pinned to the new one (none runs: repinned, as `env up` would start them)."""
    from voketag_ops.workflows.env import LocalPlatform

    meta = store.get(SECRET)
    cred = json.loads(store.access(SECRET, meta.aliases["previous"])) | {"password": "pw-new"}
    new = store.add_version(SECRET, json.dumps(cred).encode()).version
    store.update(
        SECRET, etag=store.get(SECRET).etag, aliases={"previous": meta.aliases["current"], "current": new}
    )
    services = settings.rotation.db_users["app"].services
    pins = {service: (SECRET, new) for service in services}
    assert LocalPlatform(settings).runtime().repin_stopped(pins) == list(services)


def _age(store, days):
    """Every version made DAYS ago (the store's file, as written days ago)."""
    path = store._path(SECRET)
    doc = json.loads(path.read_text())
    made = (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for version in doc["versions"]:
        version["created_at"] = made
    path.write_text(json.dumps(doc))


def _cleanup_plan(voke, make_environ, settings, version):
    """The cleanup actions `rotate cleanup --dry-run` plans for VERSION (only the newest version
    kept: the 3 newest would hide it)."""
    environ = make_environ(settings.local.home, VOKE_ROTATION__KEEP_VERSIONS="1")
    plan = voke("rotate", "cleanup", "--dry-run", "--json", environ=environ)
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    assert "pw-" not in plan.stdout + plan.stderr
    return [a["action"] for a in plan.json["result"]["actions"] if a["version"] == version]


def test_the_version_current_until_a_failback_keeps_its_24_hours(tmp_path, voke, make_environ):
    # Found by review: the repoint copied `current` before `previous`; the previous-copy, newer,
    # counted for cleanup as having been current since the failover, so the version current
    # until the failback was disabled at once.
    settings, store = _seeded(tmp_path)
    _repoint(settings, OTHER_PORT)  # failover
    current = store.get(SECRET).aliases["current"]
    _age(store, 2)
    back = _repoint(settings, HOME_PORT)  # failback
    assert _cleanup_plan(voke, make_environ, settings, current) == []
    assert back["repointed"][0]["versions"]["previous"] < back["repointed"][0]["versions"]["current"]
    _age(store, 2)  # a day after the failback it goes, as a rotated-out version does
    assert _cleanup_plan(voke, make_environ, settings, current) == ["disable"]


def test_the_version_current_until_a_rotation_after_a_failover_keeps_its_24_hours(
    tmp_path, voke, make_environ
):
    settings, store = _seeded(tmp_path)
    _repoint(settings, OTHER_PORT)  # failover
    current = store.get(SECRET).aliases["current"]
    _age(store, 2)
    _rotated(settings, store)
    _rotated(settings, store)  # a second rotation within hours
    assert _cleanup_plan(voke, make_environ, settings, current) == []


def test_the_local_repoint_reports_the_cloud_ones_keys_and_each_version_it_made(tmp_path):
    # Found by review: local `services` had repinned, stopped, stale and note, cloud skipped and
    # host, and their items `port` or `host`: one key set now (`repoint_report`), as in the cloud test.
    settings, store = _seeded(tmp_path)
    before = max(v.version for v in store.get(SECRET).versions)
    report = _repoint(settings, OTHER_PORT)
    assert list(report) == list(repoint_report())
    made = {"previous": before + 1, "current": before + 2}
    assert report["repointed"] == [{"secret": SECRET, "versions": made, "host": None, "port": OTHER_PORT}]
    assert report["made"] == [
        {"secret": SECRET, "alias": a, "version": made[a]} for a in ("previous", "current")
    ]
    assert (report["host"], report["port"], report["skipped"]) == (None, OTHER_PORT, [])
