"""Helpers for tests, ours and users': an in-memory OTLP transport and checkpoint store, a source context.

``MemoryTransport`` decodes every request with opentelemetry-proto, so what a test asserts on is
what a collector would have read::

    transport = MemoryTransport()
    pipeline = Pipeline(transport, MemoryCheckpointStore(), resource_for, ...)
    ...
    assert [r["body"] for r in transport.records] == ["line 1", "line 2"]
    assert transport.records[0]["attributes"]["log.record.uid"] == "..."

Faults: ``fail_next(n)`` (retryable or permanent) and ``recover()``, ``refuse_when(pred)`` (a permanent error for
any request holding a record that matches), ``reject_next(n)`` (partial success), ``block()`` /
``release()`` (the collector hangs until released).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from collector_plugin.errors import ExportError
from collector_plugin.export import RetryableExportError
from collector_plugin.http import HttpClients
from collector_plugin.otlp import any_value_to_python
from collector_plugin.records import Span
from collector_plugin.source import Connection, Reader, SourceContext
from collector_plugin.telemetry import Metrics, SourceCounters

DecodedRecord = dict[str, Any]


def decode_request(payload: bytes) -> list[DecodedRecord]:
    """Decode an ``ExportLogsServiceRequest`` into one plain dict per log record.

    Keys: body, attributes (incl. ``log.record.uid``), severity_number, severity_text,
    time_unix_nano, observed_time_unix_nano, event_name, resource (dict), scope_name, scope_version.
    """
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    request.ParseFromString(payload)
    out: list[DecodedRecord] = []
    for resource_logs in request.resource_logs:
        resource = {kv.key: any_value_to_python(kv.value) for kv in resource_logs.resource.attributes}
        for scope_logs in resource_logs.scope_logs:
            for rec in scope_logs.log_records:
                out.append(
                    {
                        "body": any_value_to_python(rec.body),
                        "attributes": {kv.key: any_value_to_python(kv.value) for kv in rec.attributes},
                        "severity_number": int(rec.severity_number),
                        "severity_text": rec.severity_text,
                        "time_unix_nano": rec.time_unix_nano,
                        "observed_time_unix_nano": rec.observed_time_unix_nano,
                        "event_name": rec.event_name,
                        "resource": resource,
                        "scope_name": scope_logs.scope.name,
                        "scope_version": scope_logs.scope.version,
                    }
                )
    return out


class MemoryTransport:
    """A :class:`~collector_plugin.export.Transport` that keeps what it accepted, decoded.

    ``records``: every accepted record (dicts as :func:`decode_request` makes them), in order of
    acceptance. ``batches``: the accepted requests, each a list of such dicts. ``attempts``: every
    ``send`` call, accepted or not.
    """

    def __init__(self) -> None:
        self.records: list[DecodedRecord] = []
        self.batches: list[list[DecodedRecord]] = []
        self.attempts = 0
        self.closed = False
        self._failures = 0
        self._fail_retryable = True
        self._reject: list[int] = []
        self._refuse: Callable[[DecodedRecord], bool] | None = None
        self._open = asyncio.Event()
        self._open.set()
        self.on_accept: Callable[[list[DecodedRecord]], None] | None = None

    def fail_next(self, n: int, retryable: bool = True) -> None:
        """Make the next ``n`` sends fail (retryable: the collector is down; else refused for good).

        Replaces any failures still pending; ``fail_next(10**9)`` is "down until :meth:`recover`".
        """
        self._failures = n
        self._fail_retryable = retryable

    def recover(self) -> None:
        """Cancel the failures still pending: the collector is back."""
        self._failures = 0

    def refuse_when(self, predicate: Callable[[DecodedRecord], bool] | None) -> None:
        """Refuse for good (``ExportError``) any request holding a record matching ``predicate``."""
        self._refuse = predicate

    def reject_next(self, n: int) -> None:
        """Answer the next accepted request with ``partial_success.rejected_log_records = n``."""
        self._reject.append(n)

    def block(self) -> None:
        """Hold every send until :meth:`release` (a hung collector)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def send(self, payload: bytes, nrecords: int) -> int:
        self.attempts += 1
        await self._open.wait()
        if self._failures > 0:
            self._failures -= 1
            if self._fail_retryable:
                raise RetryableExportError("connection", "MemoryTransport.fail_next")
            raise ExportError("MemoryTransport.fail_next: refused")
        decoded = decode_request(payload)
        if len(decoded) != nrecords:
            raise AssertionError(f"payload holds {len(decoded)} records, caller said {nrecords}")
        if self._refuse is not None and any(self._refuse(r) for r in decoded):
            raise ExportError("MemoryTransport.refuse_when: refused")
        self.records.extend(decoded)
        self.batches.append(decoded)
        if self.on_accept is not None:
            self.on_accept(decoded)
        return self._reject.pop(0) if self._reject else 0

    async def close(self) -> None:
        self.closed = True

    def uids(self) -> list[str]:
        """``log.record.uid`` of every accepted record, in order."""
        return [str(r["attributes"].get("log.record.uid")) for r in self.records]


class MemoryCheckpointStore:
    """A checkpoint store in a dict; ``commits`` keeps every commit call's cursors, in order."""

    def __init__(self, initial: Mapping[str, str] | None = None) -> None:
        self.cursors: dict[str, str] = dict(initial or {})
        self.commits: list[dict[str, str]] = []
        self.closed = False

    def get(self, key: str) -> str | None:
        return self.cursors.get(key)

    def all(self) -> dict[str, str]:
        return dict(self.cursors)

    def commit(self, cursors: Mapping[str, str]) -> None:
        snapshot = dict(cursors)
        self.commits.append(snapshot)
        self.cursors.update(snapshot)

    def close(self) -> None:
        self.closed = True


def source_context(
    source: str = "",
    *,
    connections: Mapping[str, Connection] | None = None,
    clock_ns: Callable[[], int] | None = None,
    metrics: Metrics | None = None,
    transport: Any = None,
) -> SourceContext:
    """A :class:`SourceContext` for a source under test: the given connections, a clock, counters.

    ``http_client(...)`` builds real :class:`~collector_plugin.http.ApiClient` objects; pass an
    ``httpx.MockTransport`` as ``transport`` to answer their requests in the test.
    """
    metrics = metrics or Metrics()
    context = SourceContext(
        source=source,
        connections=dict(connections or {}),
        http_client=HttpClients(metrics, transport=transport),
        metrics=SourceCounters(metrics, source),
    )
    if clock_ns is not None:
        context.clock_ns = clock_ns
    return context


async def poll_all(reader: Reader, *, draining: bool = False) -> list[Span]:
    """Every span one poll of ``reader`` yields."""
    return [span async for span in reader.poll(draining=draining)]
