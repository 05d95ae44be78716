"""Cloud Monitoring (gRPC only: monitoring_v3 has no REST transport): read the Cloud SQL
replication metrics, write voke's own metrics under catalog.METRIC_PREFIX.

Cloud SQL samples every 60 s and a point can take up to 165 s to appear, so reads look
back over a window and take the newest point; no point means "unknown" (None), never 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from voketag_ops.adapters.gcp import catalog
from voketag_ops.adapters.gcp._common import GcpContext, translating
from voketag_ops.errors import UsageError, VokeError
from voketag_ops.ports import ReplicationInfo


class CloudMonitoring:
    """Reads and writes time series in one project."""

    def __init__(self, ctx: GcpContext, *, lookback_seconds: float = 600, client: Any = None) -> None:
        self.ctx = ctx
        self.lookback = lookback_seconds
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import monitoring_v3
            from google.cloud.monitoring_v3.services.metric_service.transports import (
                MetricServiceGrpcTransport,
            )

            self._client = self.ctx.grpc_client(
                monitoring_v3.MetricServiceClient, MetricServiceGrpcTransport, "monitoring"
            )
        return self._client

    @contextmanager
    def translate(self, what: str) -> Iterator[None]:
        """The one place Monitoring errors become voke errors (all: backend trouble, exit 4)."""
        with translating(what, {}):
            yield

    def _series(self, metric: str, filters: Mapping[str, str], seconds: float | None = None) -> list[Any]:
        from google.cloud import monitoring_v3

        now = time.time()
        interval = monitoring_v3.TimeInterval(
            end_time={"seconds": int(now)}, start_time={"seconds": int(now - (seconds or self.lookback))}
        )
        query = " AND ".join([f'metric.type = "{metric}"', *[f'{k} = "{v}"' for k, v in filters.items()]])
        with self.translate(f"time series {metric}"):
            return self.ctx.call(
                lambda **kw: list(
                    self.client.list_time_series(
                        name=f"projects/{self.ctx.project}",
                        filter=query,
                        interval=interval,
                        view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
                        **kw,
                    )
                )
            )

    @staticmethod
    def _newest(series: list[Any]) -> float | None:
        points = [p for s in series for p in s.points]
        if not points:
            return None
        newest = max(points, key=lambda p: p.interval.end_time.timestamp())
        value = newest.value
        kind = value._pb.WhichOneof("value")
        return float(getattr(value, kind)) if kind in ("double_value", "int64_value") else None

    def latest(self, metric: str, filters: Mapping[str, str]) -> float | None:
        """The newest point of METRIC matching FILTERS within the lookback window."""
        return self._newest(self._series(metric, filters))

    def archive_failures(self, primary: str) -> int | None:
        """WAL segments PRIMARY failed to archive in the last hour: 0 when some were archived and
        none failed, None when neither is on record (unknown)."""
        project = self.ctx.project
        where = {"resource.labels.database_id": f"{project}:{primary}"}
        failures = self._series(catalog.LOG_ARCHIVE_FAILURES, where, seconds=3600)
        if failures:
            return sum(int(p.value.int64_value) for s in failures for p in s.points)
        return 0 if self._series(catalog.LOG_ARCHIVE_SUCCESSES, where, seconds=3600) else None

    def replication(self, primary: str, replica: str) -> ReplicationInfo:
        project = self.ctx.project
        lag = self.latest(catalog.REPLICA_LAG, {"resource.labels.database_id": f"{project}:{replica}"})
        byte_lag = self.latest(
            catalog.REPLICA_BYTE_LAG,
            {
                "resource.labels.database_id": f"{project}:{primary}",
                "metric.labels.replica_name": replica,
                "metric.labels.replica_lag_type": "replay_location",
            },
        )
        count = self.archive_failures(primary)
        return ReplicationInfo(
            replica=replica,
            lag_seconds=lag if lag is None or lag >= 0 else None,
            lag_bytes=int(byte_lag) if byte_lag is not None else None,
            archive_failures=count,
            inactive=lag is not None and lag < 0,  # Cloud SQL's "replication inactive"
        )

    def write(self, metric: str, value: float, labels: Mapping[str, str]) -> None:
        """One point of one of voke's own gauges (never another prefix)."""
        self.write_many([(metric, value, labels)])

    def write_many(self, points: Sequence[tuple[str, float, Mapping[str, str]]]) -> None:
        """One point each of several of voke's gauges (distinct labels), in one API call."""
        unknown = sorted({metric for metric, _, _ in points} - catalog.VOKE_METRICS)
        if unknown:
            raise UsageError(f"{unknown[0]} is not one of voke's metrics (prefix {catalog.METRIC_PREFIX})")
        for metric, _, labels in points:  # the descriptor terraform/ declares takes these alone
            if sorted(labels) != sorted(catalog.METRIC_LABELS[metric]):
                raise UsageError(
                    f"{metric}: labels {sorted(labels)}, its descriptor's are {list(catalog.METRIC_LABELS[metric])}"
                )
        if not points:
            return
        from google.cloud import monitoring_v3

        now = int(time.time())
        series = [
            monitoring_v3.TimeSeries(
                metric={"type": metric, "labels": dict(labels)},
                resource={"type": "global", "labels": {"project_id": self.ctx.project}},
                points=[
                    {
                        "interval": {"end_time": {"seconds": now}},
                        "value": {"int64_value": int(value)}
                        if metric in catalog.INT64_METRICS
                        else {"double_value": float(value)},
                    }
                ],
            )
            for metric, value, labels in points
        ]
        with self.translate(f"write {', '.join(sorted({m for m, _, _ in points}))}"):
            self.ctx.call(
                self.client.create_time_series,
                name=f"projects/{self.ctx.project}",
                time_series=series,
                idempotent=False,
            )

    def write_quietly(self, metric: str, value: float, labels: Mapping[str, str]) -> bool:
        """write(), but a point Monitoring does not take (an outage, a refusal: INVALID_ARGUMENT for
        a point written sooner than the sampling period allows) never fails what it reports on."""
        try:
            self.write(metric, value, labels)
            return True
        except VokeError as exc:
            from voketag_ops.logs import get_logger

            get_logger(__name__).warning("could not write %s: %s", metric, exc.message)
            return False
