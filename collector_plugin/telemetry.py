"""Self-telemetry: Prometheus metrics, and /metrics /healthz /readyz on one small listener.

Each receiver owns a :class:`Metrics` with its own registry, so tests can run several receivers
in one process. Metric names follow Prometheus conventions with the prefix ``modelarts_receiver_``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "modelarts_receiver_"


class Metrics:
    """Every metric the receiver exposes; see README "Self-telemetry" for the list."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.api_requests = Counter(
            PREFIX + "api_requests", "ModelArts API requests by endpoint and outcome.", ["endpoint", "outcome"], registry=r
        )
        self.api_errors = Counter(
            PREFIX + "api_errors", "ModelArts API error answers by error_code.", ["endpoint", "error_code"], registry=r
        )
        self.api_retries = Counter(PREFIX + "api_retries", "Requests retried.", ["endpoint", "reason"], registry=r)
        self.throttle_wait_seconds = Counter(
            PREFIX + "throttle_wait_seconds", "Seconds spent waiting on the rate limit or Retry-After.", registry=r
        )
        self.bytes_read = Counter(PREFIX + "bytes_read", "Log bytes read from the API.", ["source"], registry=r)
        self.records_read = Counter(PREFIX + "records_read", "Records produced by sources.", ["source"], registry=r)
        self.records_exported = Counter(
            PREFIX + "records_exported", "Records acknowledged by the collector.", registry=r
        )
        self.records_rejected = Counter(
            PREFIX + "records_rejected",
            "Records the collector reported as rejected (partial success).",
            registry=r,
        )
        self.export_failures = Counter(
            PREFIX + "export_failures", "Export attempts that failed (and were retried).", ["reason"], registry=r
        )
        self.export_latency = Histogram(
            PREFIX + "export_latency_seconds", "Time from sending a batch to its acknowledgement.", registry=r
        )
        self.queue_records = Gauge(PREFIX + "queue_records", "Records waiting to be exported.", registry=r)
        self.target_lag_bytes = Gauge(
            PREFIX + "target_lag_bytes", "Log bytes not yet read, per target.", ["source", "target"], registry=r
        )
        self.target_lag_seconds = Gauge(
            PREFIX + "target_lag_seconds", "Age of the oldest unread event, per target.", ["source", "target"], registry=r
        )
        self.checkpoint_commits = Counter(PREFIX + "checkpoint_commits", "Checkpoint commits.", registry=r)
        self.checkpoint_last_commit = Gauge(
            PREFIX + "checkpoint_last_commit_timestamp_seconds", "Unix time of the last checkpoint commit.", registry=r
        )
        self.targets_discovered = Gauge(
            PREFIX + "targets_discovered", "Targets known per source.", ["source"], registry=r
        )
        self.targets_active = Gauge(PREFIX + "targets_active", "Targets being polled per source.", ["source"], registry=r)
        self.target_errors = Counter(
            PREFIX + "target_errors", "Polls of a target that failed.", ["source", "error"], registry=r
        )
        self.gaps = Counter(
            PREFIX + "gaps_detected", "Data the API no longer had (recorded as a gap record).", ["source"], registry=r
        )
        self.restarts_detected = Counter(
            PREFIX + "log_restarts_detected", "Logs that became shorter than the cursor.", ["source"], registry=r
        )
