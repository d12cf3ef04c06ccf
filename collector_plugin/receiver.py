"""Assembly: config in, a running receiver out (client, sources, pipeline, scheduler, telemetry).

This is the only module that knows every room; each room stays ignorant of the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from collector_plugin import __version__
from collector_plugin.auth import make_auth
from collector_plugin.backoff import Backoff
from collector_plugin.config import Config
from collector_plugin.errors import ReceiverError
from collector_plugin.export import Pipeline, Transport, build_pipeline, make_transport
from collector_plugin.http import ApiClient, HttpClients
from collector_plugin.journal import ReadJournal
from collector_plugin.logs import register_secret
from collector_plugin.plugins import RegisteredSource
from collector_plugin.replicas import Coordinator, FencedCursors, Listings, default_member_id
from collector_plugin.scheduler import Scheduler, SourceRuntime
from collector_plugin.settings import Settings, resolve
from collector_plugin.source import Connection, SourceContext
from collector_plugin.sources.modelarts.client import CONNECTION as MODELARTS
from collector_plugin.sources.modelarts.client import RETRYABLE_CODES
from collector_plugin.status import StatusProvider
from collector_plugin.store import CursorStore, Store, open_store
from collector_plugin.telemetry import Health, Metrics, SourceCounters, TelemetryServer, WatchedStore

log = logging.getLogger("collector_plugin.receiver")


@dataclass(frozen=True)
class ShutdownSummary:
    """What a run did, for the last log line and the CLI: read, delivered, unsent, API calls."""

    read_by_source: Mapping[str, int]
    delivered: int
    unsent: int
    api_calls: int
    targets: Mapping[str, int]

    @property
    def read(self) -> int:
        return sum(self.read_by_source.values())


def _sample_total(metrics: Metrics, family: str, label: str | None = None) -> tuple[int, dict[str, int]]:
    """A counter's total, and its totals by ``label`` (read from the registry: metrics are the record)."""
    total = 0.0
    by_label: dict[str, int] = {}
    for metric in metrics.registry.collect():
        if metric.name != family:
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_total") and metric.type == "counter":
                continue
            total += sample.value
            if label is not None:
                key = sample.labels.get(label, "")
                by_label[key] = by_label.get(key, 0) + int(sample.value)
    return int(total), by_label


def summarize(metrics: Metrics, targets: Mapping[str, int]) -> ShutdownSummary:
    """The summary of a run so far, from its metrics and the scheduler's target counts."""
    from collector_plugin.telemetry import PREFIX

    _, read = _sample_total(metrics, PREFIX + "records_read", "source")
    delivered, _ = _sample_total(metrics, PREFIX + "records_exported")
    unsent, _ = _sample_total(metrics, PREFIX + "queue_records")
    api_calls, _ = _sample_total(metrics, PREFIX + "api_requests")
    return ShutdownSummary(read, delivered, unsent, api_calls, dict(targets))


@dataclass
class Receiver:
    """A wired receiver. ``run(stop)`` polls until ``stop`` is set, then drains and commits."""

    config: Config
    http: HttpClients
    store: Store
    pipeline: Pipeline
    scheduler: Scheduler
    metrics: Metrics
    telemetry: TelemetryServer | None = None
    started: bool = field(default=False)
    health: Health | None = None
    status: StatusProvider | None = None
    summary: ShutdownSummary | None = None  # set when run() returns
    coordinator: Coordinator | None = None  # several replicas (checkpoint.url): this one's leases

    def ready(self) -> tuple[bool, str]:
        """Config valid and store open (we exist); the last export succeeded or nothing was sent;
        no failure that needs a human has lasted ``telemetry.unready_after`` (:class:`Health`)."""
        if not self.started:
            return False, "starting"
        if self.pipeline.last_export_ok is False:
            return False, f"last export failed: {self.pipeline.last_error}"
        if self.coordinator is not None:
            ok, why = self.coordinator.ready()
            if not ok:
                return ok, why
        return (True, "ready") if self.health is None else self.health.check()

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until ``stop``; return True when everything held was delivered and committed."""
        if self.status is not None:
            self.status.attach(asyncio.get_running_loop())
        if self.telemetry is not None:
            try:
                self.telemetry.start()
            except ReceiverError:  # e.g. the port is taken: release what build_receiver opened
                await self.http.aclose()
                self.store.close()
                raise
        await self.pipeline.start()
        self.started = True
        log.info(
            "receiver started",
            extra={"sources": [rt.name for rt in self.scheduler.sources], "version": __version__},
        )
        leases_stop = asyncio.Event()
        leases = None
        if self.coordinator is not None:
            leases = asyncio.create_task(self.coordinator.run(leases_stop), name="leases")
        try:
            await self.scheduler.run(stop)
        finally:
            grace = float(self.config.shutdown.grace_period)
            if self.coordinator is not None:
                self.coordinator.winding_down = True  # keep renewing while the pipeline flushes
            clean = await self.pipeline.close(grace)
            if self.coordinator is not None and leases is not None:
                await self.coordinator.release_all()  # others take them at once, at committed cursors
                leases_stop.set()
                await asyncio.gather(leases, return_exceptions=True)
                self.coordinator.close()
            await self.http.aclose()
            self.store.close()
            if self.telemetry is not None:
                self.telemetry.stop()
            self.summary = summarize(self.metrics, self.scheduler.active_targets)
            _log_summary(self.summary, clean, grace)
        return clean


def _log_summary(summary: ShutdownSummary, clean: bool, grace: float) -> None:
    fields = {
        "flushed": clean,
        "records_read": summary.read,
        "records_delivered": summary.delivered,
        "records_unsent": summary.unsent,
        "api_calls": summary.api_calls,
        "targets": dict(summary.targets),
    }
    if clean:
        log.info("receiver stopped: %d records delivered, none unsent", summary.delivered, extra=fields)
    else:
        log.warning(
            "receiver stopped: %d records unsent after the %gs grace period (their cursors are not committed:"
            " they are read again on the next start); %d delivered",
            summary.unsent,
            grace,
            summary.delivered,
            extra=fields,
        )


def register_secrets(config: Config) -> None:
    """Tell the log redaction about every secret in the config (SK, tokens, password, header values)."""
    auth = config.modelarts.auth
    for secret in (auth.sk, auth.security_token, auth.token, auth.password):
        if secret is not None:
            register_secret(secret.get_secret_value())
    for value in config.exporter.headers.values():
        register_secret(value)


def build_http(config: Config, metrics: Metrics, *, transport: object | None = None) -> HttpClients:
    """The HTTP client factory with the limits ``modelarts:`` configures (timeout, retries, rate)."""
    ma = config.modelarts
    return HttpClients(
        metrics,
        transport=transport,  # type: ignore[arg-type]
        timeout=float(ma.timeout),
        retry=Backoff(float(ma.retry.initial_backoff), float(ma.retry.max_backoff), ma.retry.max_attempts),
        rate_limit=ma.rate_limit.requests_per_second,
        burst=ma.rate_limit.burst,
        max_concurrency=ma.max_concurrency,
        verify=ma.ca_file or ma.verify_tls,
    )


def build_connections(config: Config, http: HttpClients) -> dict[str, Connection]:
    """The connections the config describes: today the ``modelarts`` one (its auth and project)."""
    ma = config.modelarts
    verify: bool | str = ma.ca_file or ma.verify_tls
    client: ApiClient = http(
        MODELARTS,
        base_url=ma.base_url,
        auth=make_auth(ma.auth, region=ma.region, project_id=ma.project_id, verify=verify),
        retryable_codes=RETRYABLE_CODES,
    )
    return {MODELARTS: Connection(client, {"project_id": ma.project_id, "region": ma.region})}


def source_context(
    name: str,
    settings: Settings,
    http: HttpClients,
    connections: Mapping[str, Connection],
    metrics: Metrics,
    journal: ReadJournal | None = None,
) -> SourceContext:
    """What one source gets: connections, the client factory, its resource and counters."""
    return SourceContext(
        source=name,
        connections=connections,
        http_client=http,
        resource=settings.resource.resource,
        logger=logging.getLogger(f"collector_plugin.sources.{name}"),
        metrics=SourceCounters(metrics, name),
        journal=journal or ReadJournal(),
    )


def build_receiver(
    config: Config | Settings,
    registry: Mapping[str, RegisteredSource],
    *,
    environ: Mapping[str, str] | None = None,
    transport: Transport | None = None,
    api_transport: object | None = None,
    telemetry: bool = True,
    jitter: bool = True,
) -> Receiver:
    """Wire a receiver from resolved settings (or a validated config, resolved against ``environ``).

    ``transport`` replaces the OTLP transport (tests).
    """
    settings = config if isinstance(config, Settings) else resolve(config, os.environ if environ is None else environ)
    config = settings.config
    register_secrets(config)
    metrics = Metrics()
    http = build_http(config, metrics, transport=api_transport)
    connections = build_connections(config, http)
    store = open_store(config.checkpoint.model_copy(update={"path": settings.checkpoint_path}))
    health = Health(metrics, float(config.telemetry.unready_after))
    journal = ReadJournal(store)  # read times live with the cursors they are pruned by
    coordinator = None
    cursors: CursorStore = store
    if config.checkpoint.url:  # several replicas: fenced leases decide who reads and commits what
        member = config.checkpoint.member_id or default_member_id()
        coordinator = Coordinator(
            store.leases,
            store,
            member,
            float(config.checkpoint.lease_ttl),
            metrics,
            budget=http,
            listings=store if isinstance(store, Listings) else None,
        )
        cursors = FencedCursors(store, coordinator, metrics)
    pipeline = build_pipeline(
        config.exporter,
        WatchedStore(cursors, health),
        metrics,
        {},  # only read when transport is None, and it is not: settings.exporter is resolved
        scope_version=__version__,
        transport=transport or make_transport(settings.exporter),
        commit_in_thread=coordinator is not None,  # a database round trip must not stall the loop
    )
    runtimes = [
        SourceRuntime(
            name, registry[name].cls(cfg, source_context(name, settings, http, connections, metrics, journal)), cfg
        )
        for name, cfg in config.sources.items()
    ]
    scheduler = Scheduler(runtimes, pipeline, store, metrics, jitter=jitter, ownership=coordinator)
    receiver = Receiver(config, http, store, pipeline, scheduler, metrics, health=health, coordinator=coordinator)
    if coordinator is not None:
        coordinator.attach(scheduler, pipeline)
    receiver.status = StatusProvider(
        scheduler, pipeline, metrics, http.budget_snapshots, receiver.ready, health.last_ack_age
    )
    if telemetry and settings.telemetry.listen:
        receiver.telemetry = TelemetryServer(
            settings.telemetry.listen, metrics, receiver.ready, status=receiver.status, tick=health.sample
        )
    return receiver
