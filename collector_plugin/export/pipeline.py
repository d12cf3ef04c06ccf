"""The delivery coordinator: queue, sends in flight, ordered retries, refused records, commits.

    put(span) ──► encode each record once ──► pending (bounded by records and bytes: put waits)
                                                  │ Batcher: max_records / max_bytes / max_delay
                                                  ▼
                           up to max_in_flight sends, each retried with backoff until acknowledged
                                                  │
                                                  ▼ AckLedger: in queue order
                        CursorStore.commit(latest cursor per target of fully acked spans)

The invariant (shared/ARCHITECTURE.md): a cursor is committed only once every record of its span
and of every earlier span was acknowledged. Nothing is dropped: a collector that is down is
retried forever while sources wait on the full queue. The one exception is a record the collector
refuses for good (HTTP 400, gRPC INVALID_ARGUMENT): the batch is split until that record stands
alone, which is then reported (error log with target and uid, ``records_rejected``) and skipped.

Memory: records and encoded bytes held (pending plus in flight) are both bounded; a single span
larger than the byte bound is still taken, alone, so nothing can deadlock.

Order: with ``max_in_flight`` > 1 two batches travel at once and the collector may receive the
later one first (OTLP promises no order). While a batch is failing, later batches wait for it,
so after an outage the backlog arrives in queue order. ``max_in_flight: 1`` gives strict order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping

from collector_plugin.backoff import Backoff
from collector_plugin.checkpoint import CursorStore
from collector_plugin.config import DEFAULT_QUEUE_MAX_BYTES, BatchConfig, ExporterConfig
from collector_plugin.errors import ExportError, ReceiverError
from collector_plugin.export.batcher import Batch, Batcher, QueuedSpan, Slice, by_resource, slice_bytes
from collector_plugin.export.ledger import AckLedger, split_parts
from collector_plugin.export.settings import resolve_exporter
from collector_plugin.export.transports import RetryableExportError, Transport, make_transport
from collector_plugin.otlp import SCOPE_NAME, OtlpEncoder, encode_framed_log_record, uid_of_framed
from collector_plugin.records import Attributes, RecordRun, Span
from collector_plugin.telemetry import Metrics

log = logging.getLogger("collector_plugin.export")


class Pipeline:
    """Bounded queue -> batches -> transport, and in-order checkpoint commits after acknowledgement."""

    def __init__(
        self,
        transport: Transport,
        store: CursorStore,
        *,
        batch: BatchConfig,
        queue_size: int,
        max_in_flight: int,
        retry_initial: float,
        retry_max: float,
        metrics: Metrics,
        scope_version: str = "",
        scope_name: str = SCOPE_NAME,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        commit_in_thread: bool = False,
    ) -> None:
        self._transport = transport
        self._store = store
        self._encoder = OtlpEncoder(scope_name, scope_version)
        self._queue = Batcher(batch, self._header_size)
        self._ledger = AckLedger()
        self._queue_size = queue_size
        self._queue_max_bytes = queue_max_bytes
        self._retry = Backoff(initial=retry_initial, maximum=retry_max, max_attempts=0)
        self._metrics = metrics

        self._held = 0  # records put and not yet settled (acknowledged or refused)
        self._held_bytes = 0  # their encoded bytes
        self._changed = asyncio.Event()  # pending grew, or a flush was asked for
        self._space = asyncio.Condition()
        self._waiting: deque[object] = deque()  # puts waiting for room, in arrival order
        self._settled = asyncio.Condition()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._senders: set[asyncio.Task[None]] = set()
        self._batch_task: asyncio.Task[None] | None = None
        self._flushing = 0
        self._closing = False
        self._uncommitted: dict[str, str] = {}
        self._in_commit: dict[str, str] = {}
        self._committing = asyncio.Lock()
        self._commit_in_thread = commit_in_thread
        self._failing: set[int] = set()  # batches whose last attempt failed (retryable)
        self._order = asyncio.Condition()

        self.last_export_ok: bool | None = None
        self.last_error: str = ""

    # -- lifecycle

    async def start(self) -> None:
        """Start the batcher task (call from the running event loop)."""
        if self._batch_task is None:
            self._batch_task = asyncio.get_running_loop().create_task(self._run_batcher(), name="export-batcher")

    async def put(self, span: Span) -> None:
        """Queue ``span``; waits while the queue holds ``queue_size`` records or
        ``queue_max_bytes`` encoded bytes (backpressure). Into an empty queue any span fits."""
        if self._closing:
            raise RuntimeError("pipeline is closed")
        if self._batch_task is None:
            raise RuntimeError("pipeline not started")
        records = span.records
        framed = records.framed() if isinstance(records, RecordRun) else [encode_framed_log_record(r) for r in records]
        queued = QueuedSpan(span, framed, -1)
        n = len(queued.framed)
        if n:
            await self._wait_for_room(n, queued.nbytes)
        queued.ident = self._ledger.open(span.target, span.cursor, n)
        if n:
            self._held += n
            self._held_bytes += queued.nbytes
            self._metrics.queue_records.set(self._held)
            self._queue.add(queued, time.monotonic())
            self._changed.set()
        else:
            await self._commit(self._ledger.ready())
        # Give the batcher and the senders a turn: a producer that never waits would otherwise
        # hold the loop until the queue is full, and acknowledgements would queue up behind it.
        await asyncio.sleep(0)

    async def _wait_for_room(self, nrecords: int, nbytes: int) -> None:
        """Wait, first come first served, until the span fits: a span that needs the queue empty
        must not be overtaken for ever by smaller ones that fit sooner."""
        if not self._waiting and self._has_room(nrecords, nbytes):
            return
        token = object()
        async with self._space:
            self._waiting.append(token)
            try:
                await self._space.wait_for(lambda: self._waiting[0] is token and self._has_room(nrecords, nbytes))
            finally:  # also when cancelled: the next in line must not wait for us
                self._waiting.remove(token)
                self._space.notify_all()

    def _has_room(self, nrecords: int, nbytes: int) -> bool:
        return self._held == 0 or (
            self._held + nrecords <= self._queue_size and self._held_bytes + nbytes <= self._queue_max_bytes
        )

    async def flush(self, timeout: float) -> bool:
        """Send everything queued now and wait until it is acknowledged and committed."""
        self._flushing += 1
        self._changed.set()
        try:
            async with self._settled:
                await asyncio.wait_for(self._settled.wait_for(self._is_settled), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._flushing -= 1

    async def close(self, timeout: float) -> bool:
        """Stop taking spans, deliver and commit what is held within ``timeout``, then stop.

        Returns False if some records were still unacknowledged when the time ran out (their
        cursors stay uncommitted, so they are read again after a restart).
        """
        self._closing = True
        done = await self.flush(timeout) if self._batch_task is not None else self._is_settled()
        tasks = [t for t in (self._batch_task, *self._senders) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._batch_task = None
        await self._commit(self._ledger.ready())
        await self._transport.close()
        return done

    def _is_settled(self) -> bool:
        return self._held == 0 and not self._ledger and not self._uncommitted and not self._in_commit

    @property
    def queued_records(self) -> int:
        """Records put and not yet acknowledged."""
        return self._held

    @property
    def queued_bytes(self) -> int:
        """Encoded bytes of the records put and not yet acknowledged (pending and in flight)."""
        return self._held_bytes

    # -- batching

    async def _run_batcher(self) -> None:
        while True:
            if not self._queue:
                self._changed.clear()
                await self._changed.wait()
                continue
            if not self._queue.due(time.monotonic(), force=self._flushing > 0 or self._closing):
                self._changed.clear()
                wait = self._queue.wait_time(time.monotonic())
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                    continue
            await self._slots.acquire()
            batch = self._queue.take(time.monotonic())
            if batch is None:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(batch))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    def _header_size(self, resource: Attributes) -> int:
        return len(self._encoder.resource(resource)) + len(self._encoder.scope) + 16

    # -- delivery

    async def _deliver(self, batch: Batch) -> None:
        try:
            await self._send_until_done(batch.slices, batch.nrecords, batch.nbytes, batch.seq)
        finally:
            self._slots.release()

    async def _send_until_done(self, slices: list[Slice], nrecords: int, nbytes: int, seq: int) -> None:
        """Send ``slices``; retry forever on retryable errors; split on a permanent refusal."""
        payload = self._encoder.assemble(by_resource(slices))
        attempt = 0
        while True:
            await self._wait_turn(seq)
            started = time.monotonic()
            try:
                rejected = await self._transport.send(payload, nrecords)
            except RetryableExportError as exc:
                self._failing.add(seq)
                attempt += 1
                delay = self._retry.delay(attempt, exc.retry_after)
                self._note_failure(exc.reason, str(exc))
                log.warning(
                    "export of %d records failed (%s); retrying in %.1fs (attempt %d)",
                    nrecords,
                    exc,
                    delay,
                    attempt,
                )
                await asyncio.sleep(delay)
                continue
            except ExportError as exc:
                self._note_failure("refused", str(exc))
                await self._recovered(seq)
                del payload  # the halves are assembled anew: free this copy while they are sent
                await self._isolate(slices, nrecords, nbytes, exc, seq)
                return
            except Exception as exc:  # a transport bug must not stall delivery silently: retry, loudly
                self._failing.add(seq)
                attempt += 1
                delay = self._retry.delay(attempt, None)
                self._note_failure("unexpected", f"{type(exc).__name__}: {exc}")
                log.error(
                    "export of %d records raised %s: %s; retrying in %.1fs",
                    nrecords,
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=attempt == 1,
                )
                await asyncio.sleep(delay)
                continue
            await self._recovered(seq)
            self._metrics.export_latency.observe(time.monotonic() - started)
            self._metrics.records_exported.inc(nrecords - rejected)
            self.last_export_ok = True
            self.last_error = ""
            if rejected:
                self._metrics.records_rejected.inc(rejected)
                log.error(
                    "collector rejected %d of %d records (partial success); targets: %s",
                    rejected,
                    nrecords,
                    ", ".join(sorted({s.target for s, _, _ in slices})),
                )
            await self._settle(slices, nrecords, nbytes, refused=False)
            return

    async def _wait_turn(self, seq: int) -> None:
        """While an earlier batch is failing, wait for it: after an outage, batches arrive in order."""
        if self._failing and min(self._failing) < seq:
            async with self._order:
                await self._order.wait_for(lambda: not self._failing or min(self._failing) >= seq)

    async def _recovered(self, seq: int) -> None:
        if seq in self._failing:
            self._failing.discard(seq)
            async with self._order:
                self._order.notify_all()

    async def _isolate(self, slices: list[Slice], nrecords: int, nbytes: int, exc: ExportError, seq: int) -> None:
        """Split a refused batch in halves until the refused records stand alone; report those."""
        if nrecords == 1:
            span, index, _ = slices[0]
            self._metrics.records_rejected.inc()
            log.error(
                "collector refused a record for good, skipping it: target=%s log.record.uid=%s: %s",
                span.target,
                uid_of_framed(span.framed[index]),
                exc,
            )
            await self._settle(slices, nrecords, nbytes, refused=True)
            return
        for part in split_parts(slices):
            count = sum(stop - start for _, start, stop in part)
            await self._send_until_done(part, count, slice_bytes(part), seq)

    def _note_failure(self, reason: str, message: str) -> None:
        self._metrics.export_failures.labels(reason=reason).inc()
        self.last_export_ok = False
        self.last_error = message

    # -- acknowledgement and commits

    async def _settle(self, slices: list[Slice], nrecords: int, nbytes: int, *, refused: bool) -> None:
        """Records the collector is done with (acknowledged, or refused for good): free their
        room in the queue and commit the cursors the ledger releases."""
        parts = [(span.ident, start, stop) for span, start, stop in slices]
        cursors = self._ledger.reject(parts) if refused else self._ledger.ack(parts)
        self._held -= nrecords
        self._held_bytes -= nbytes
        self._metrics.queue_records.set(self._held)
        await self._commit(cursors)
        async with self._space:
            self._space.notify_all()

    async def _commit(self, cursors: Mapping[str, str]) -> None:
        """Commit ``cursors`` with any whose earlier commit failed (the store retries them).

        One commit at a time, in order: with ``commit_in_thread`` (a networked store) the event
        loop keeps serving reads and acknowledgements while the database answers, or times out.
        """
        self._uncommitted.update(cursors)
        async with self._committing:
            pending, self._uncommitted = self._uncommitted, {}
            self._in_commit = pending
            try:
                if pending:
                    if self._commit_in_thread:
                        await asyncio.to_thread(self._store.commit, pending)
                    else:
                        self._store.commit(pending)
            except ReceiverError as exc:
                pending.update(self._uncommitted)  # newer cursors of the same keys win
                self._uncommitted = pending
                self.last_error = str(exc)
                log.error("checkpoint commit failed, will retry with the next batch: %s", exc)
            else:
                if pending:
                    self._metrics.checkpoint_commits.inc()
                    self._metrics.checkpoint_last_commit.set(time.time())
            finally:
                self._in_commit = {}
        if self._is_settled():
            async with self._settled:
                self._settled.notify_all()

    def holds(self, key: str) -> bool:
        """Whether ``key`` has records or a cursor here not yet committed (a handoff waits for False)."""
        return self._ledger.holds(key) or key in self._uncommitted or key in self._in_commit


def build_pipeline(
    cfg: ExporterConfig,
    store: CursorStore,
    metrics: Metrics,
    environ: Mapping[str, str],
    scope_version: str = "",
    transport: Transport | None = None,
    commit_in_thread: bool = False,
) -> Pipeline:
    """A :class:`Pipeline` wired from the ``exporter`` config (and ``OTEL_EXPORTER_OTLP_*``).

    ``transport`` replaces the OTLP transport (tests, the console of ``demo``).
    """
    return Pipeline(
        transport or make_transport(resolve_exporter(cfg, environ)),
        store,
        batch=cfg.batch,
        queue_size=cfg.queue_size,
        queue_max_bytes=cfg.queue_max_bytes,
        max_in_flight=cfg.max_in_flight,
        retry_initial=float(cfg.retry_initial_backoff),
        retry_max=float(cfg.retry_max_backoff),
        metrics=metrics,
        scope_version=scope_version,
        commit_in_thread=commit_in_thread,
    )
