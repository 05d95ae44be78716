"""One contract for the SecretStore port, run against LocalSecretStore and against
GcpSecretStore talking (through the real google-cloud-secret-manager client) to the
in-process Secret Manager fake: same behaviour, same errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voketag_ops.errors import EtagMismatchError, NotFoundError, UsageError
from voketag_ops.ports import SecretStore


@pytest.fixture(params=["local", "gcp", pytest.param("gcp-system", marks=pytest.mark.system)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "local":
        from voketag_ops.adapters.local.secrets import LocalSecretStore

        yield LocalSecretStore(tmp_path / "home")
        return
    if request.param == "gcp-system":
        yield from _real_project()
        return
    pytest.importorskip("google.cloud.secretmanager_v1")
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore
    from voketag_ops.testing.gcp_fakes import FakeGcp

    with FakeGcp() as fake:
        yield GcpSecretStore(fake.context())


def _real_project() -> Iterator[Any]:
    """The same contract against real Secret Manager, in secrets named voke-systest-<run>-*
    that are deleted afterwards. Needs VOKE_SYSTEM_TESTS=1, VOKE_SYSTEM_PROJECT and ADC."""
    import os
    import uuid

    project = os.environ.get("VOKE_SYSTEM_PROJECT")
    if os.environ.get("VOKE_SYSTEM_TESTS") != "1" or not project:
        pytest.skip("real Google Cloud: set VOKE_SYSTEM_TESTS=1 and VOKE_SYSTEM_PROJECT (and ADC)")
    pytest.importorskip("google.cloud.secretmanager_v1")
    import google.auth
    import google.auth.exceptions

    try:
        google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError:
        pytest.skip("no Application Default Credentials")
    from voketag_ops.adapters.gcp._common import GcpContext
    from voketag_ops.adapters.gcp.secrets import GcpSecretStore

    store = GcpSecretStore(GcpContext(project=project), prefix=f"voke-systest-{uuid.uuid4().hex[:8]}-")
    try:
        yield store
    finally:
        for meta in store.list():
            store.client.delete_secret(name=f"projects/{project}/secrets/{store.secret_id(meta.name)}")


def test_implements_the_port(store):
    assert isinstance(store, SecretStore)


def test_create_is_idempotent_and_get_of_a_missing_secret_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.get("db-app")
    first = store.create("db-app")
    again = store.create("db-app")
    assert first.name == again.name == "db-app"
    assert again.versions == () and again.aliases == {} and again.annotations == {}
    assert [m.name for m in store.list()] == ["db-app"]


def test_versions_are_numbered_from_one_and_read_by_number_or_alias(store):
    store.create("s")
    v1 = store.add_version("s", b"one")
    v2 = store.add_version("s", b"two")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.state == "enabled" and v1.created_at
    assert store.access("s", 1) == b"one" and store.access("s", "2") == b"two"
    meta = store.get("s")
    store.update("s", etag=meta.etag, aliases={"current": 2, "previous": 1})
    assert store.access("s", "current") == b"two"
    meta = store.get("s")
    assert meta.aliases == {"current": 2, "previous": 1}
    assert meta.version(2).aliases == ("current",) and meta.alias("previous") == 1


def test_latest_is_never_read(store):
    store.create("s")
    store.add_version("s", b"x")
    with pytest.raises(UsageError):
        store.access("s", "latest")


def test_missing_versions_and_aliases_are_not_found(store):
    store.create("s")
    store.add_version("s", b"x")
    with pytest.raises(NotFoundError):
        store.access("s", 7)
    with pytest.raises(NotFoundError):
        store.access("s", "nope")
    with pytest.raises(NotFoundError):
        store.add_version("missing", b"x")
    with pytest.raises(NotFoundError):
        store.set_state("s", 9, "disabled")


def test_update_is_a_compare_and_swap_on_the_etag(store):
    store.create("s")
    store.add_version("s", b"x")
    meta = store.get("s")
    store.update("s", etag=meta.etag, annotations={"voke-rotation": json.dumps({"id": "r1"})})
    with pytest.raises(EtagMismatchError):
        store.update("s", etag=meta.etag, annotations={"voke-rotation": "lost"})
    fresh = store.get("s")
    assert json.loads(fresh.annotations["voke-rotation"]) == {"id": "r1"}
    assert fresh.etag != meta.etag


def test_none_removes_aliases_and_annotations(store):
    store.create("s")
    store.add_version("s", b"x")
    meta = store.get("s")
    meta = store.update("s", etag=meta.etag, aliases={"pending": 1}, annotations={"a": "1", "b": "2"})
    meta = store.update("s", etag=meta.etag, aliases={"pending": None}, annotations={"a": None})
    assert meta.aliases == {} and meta.annotations == {"b": "2"}
    assert store.get("s").annotations == {"b": "2"}


def test_an_alias_cannot_point_at_a_missing_or_destroyed_version(store):
    store.create("s")
    store.add_version("s", b"x")
    store.add_version("s", b"y")
    store.set_state("s", 1, "destroyed")
    meta = store.get("s")
    for number in (1, 5):
        with pytest.raises(NotFoundError):
            store.update("s", etag=meta.etag, aliases={"current": number})
    assert store.get("s").aliases == {}


def test_annotations_are_limited_to_16_kib(store):
    store.create("s")
    meta = store.get("s")
    with pytest.raises(UsageError):
        store.update("s", etag=meta.etag, annotations={"big": "x" * (17 * 1024)})


def test_states_disable_enable_destroy(store):
    store.create("s")
    store.add_version("s", b"x")
    store.add_version("s", b"y")
    disabled = store.set_state("s", 1, "disabled")
    assert disabled.state == "disabled" and disabled.state_changed_at
    with pytest.raises(NotFoundError):
        store.access("s", 1)
    assert store.set_state("s", 1, "enabled").state == "enabled"
    assert store.access("s", 1) == b"x"
    meta = store.get("s")
    store.update("s", etag=meta.etag, aliases={"previous": 1})
    destroyed = store.set_state("s", 1, "destroyed")
    assert destroyed.state == "destroyed"
    meta = store.get("s")
    assert "previous" not in meta.aliases  # aliases never point at a destroyed version
    with pytest.raises(NotFoundError):
        store.access("s", 1)
    with pytest.raises(UsageError):
        store.set_state("s", 1, "enabled")
    assert store.access("s", 2) == b"y"
    assert [v.state for v in meta.versions] == ["destroyed", "enabled"]


def test_disabled_versions_keep_their_state_change_time_for_cleanup(store):
    store.create("s")
    store.add_version("s", b"x")
    store.add_version("s", b"y")
    store.set_state("s", 1, "disabled")
    v1 = store.get("s").version(1)
    assert v1.state == "disabled" and v1.state_changed_at >= v1.created_at
