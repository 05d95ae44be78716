"""voke's own metrics written to Cloud Monitoring (the gRPC fake) from a cloud environment:
coverage per service and overall from `voke coverage report|gate --env NAME`, best effort
(a refusing Monitoring is logged and never changes the gate's answer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.monitoring_v3")

from voketag_ops.adapters.gcp import catalog
from voketag_ops.coverage_testing import coverage_json, lines_file
from voketag_ops.testing.gcp_fakes import FakeGcp, environment_toml

SERVICES = """
[coverage]
target = 80
[coverage.services.admin-service]
paths = ["admin_service/"]
[coverage.services.factory-service]
paths = ["factory_service/"]
"""


@pytest.fixture
def project(tmp_path: Path, make_environ: Any) -> Iterator[tuple[FakeGcp, Path, dict[str, str]]]:
    with FakeGcp() as fake:
        env = fake.environment()
        root = tmp_path / "work"
        root.mkdir()
        (root / "voke.toml").write_text(environment_toml("prod", env) + SERVICES)
        files = {"admin_service/app.py": lines_file(90, 10), "factory_service/app.py": lines_file(60, 40)}
        (root / "coverage.json").write_text(json.dumps(coverage_json(files)))
        environ = {k: v for k, v in make_environ(tmp_path / "home").items() if not k.startswith("GITHUB_")}
        yield fake, root, environ


def _points(fake: FakeGcp) -> dict[str, float]:
    out = {}
    for series in fake.monitoring.written(catalog.COVERAGE):
        assert series.metric.labels["env"] == "prod" and series.resource.type == "global"
        out[series.metric.labels["service"]] = series.points[0].value.double_value
    return out


def test_gate_on_a_cloud_env_writes_coverage_per_service(project, voke):
    fake, root, environ = project
    result = voke("--env", "prod", "coverage", "gate", "coverage.json", "--json", environ=environ, cwd=root)
    assert result.exit_code == 1, result.stdout + result.stderr  # factory-service is below 80
    assert _points(fake) == {"admin-service": 90.0, "factory-service": 60.0, "overall": 75.0}
    assert "Cloud Monitoring" in result.stderr
    report = voke("--env", "prod", "coverage", "report", "coverage.json", environ=environ, cwd=root)
    assert report.exit_code == 0, report.stderr
    assert len(fake.monitoring.written(catalog.COVERAGE)) == 6


def test_a_refusing_monitoring_never_changes_the_gate(project, voke):
    fake, root, environ = project
    fake.monitoring.refuse = "PERMISSION_DENIED"
    args = ("coverage", "gate", "coverage.json", "--fail-under", "60", "--json")
    result = voke("--env", "prod", *args, environ=environ, cwd=root)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.json["ok"] is True and "coverage not written" in result.stderr
    failing = voke("--env", "prod", "coverage", "gate", "coverage.json", "--json", environ=environ, cwd=root)
    assert failing.exit_code == 1 and failing.json["error"]["type"] == "CheckFailed"
    assert not fake.monitoring.written(catalog.COVERAGE)


def test_an_unknown_env_is_a_configuration_error(project, voke):
    _fake, root, environ = project
    result = voke("--env", "nope", "coverage", "gate", "coverage.json", "--json", environ=environ, cwd=root)
    assert result.exit_code == 3, result.stdout
