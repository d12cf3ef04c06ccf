"""The status page: what every target is doing, as a JSON document and as server-rendered HTML.

:func:`gather` copies what the scheduler, the pipeline's metrics and the API budgets know into
plain :class:`StatusInput` values; :func:`status_document` turns those into a JSON-able document
(pure, so it is tested without a receiver); :func:`render_html` prints it. Both outputs show
only redacted errors and short cursor prefixes: a cursor may hold log bytes in hex and an error
may quote a signed URL. The page stays usable with thousands of targets: urgent states sort
first, counts per state and source come first, and the table is capped at :data:`MAX_ROWS`.
"""

from __future__ import annotations

import asyncio
import html
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Gauge

from collector_plugin.budget import Snapshot
from collector_plugin.logs import redact

if TYPE_CHECKING:  # telemetry serves the page and imports this module
    from collector_plugin.telemetry import Metrics

# Most urgent first: the sort order of the table and of the counts.
STATES = ("failed", "failing", "throttled", "behind", "draining", "polling", "idle")
MAX_ROWS = 500
CURSOR_PREFIX = 12
MAX_ERROR_CHARS = 300
REFRESH_SECONDS = 5


class _TargetState(Protocol):
    """The :class:`~collector_plugin.scheduler.TargetState` fields the page reads."""

    cursor: str | None
    draining: bool
    records: int
    bytes: int
    polls: int
    failures: int
    failed: str
    last_error: str
    last_poll_at: float | None
    news: bool


class _SourceConfig(Protocol):
    @property
    def poll_interval(self) -> Any: ...
    @property
    def max_poll_interval(self) -> Any: ...


class _SourceRuntime(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def config(self) -> _SourceConfig: ...


class _Scheduler(Protocol):
    @property
    def sources(self) -> Sequence[_SourceRuntime]: ...
    def targets(self, source: str) -> Mapping[str, _TargetState]: ...


@dataclass(frozen=True)
class TargetInput:
    """One target as the scheduler saw it; times are ages in seconds (None: never)."""

    source: str
    key: str
    cursor: str | None = None
    records: int = 0
    bytes: int = 0
    polls: int = 0
    failures: int = 0
    failed: str = ""
    last_error: str = ""
    last_poll_age: float | None = None
    draining: bool = False
    news: bool = False
    lag_bytes: float | None = None
    lag_seconds: float | None = None
    poll_interval: float = 5.0
    max_poll_interval: float = 60.0


@dataclass(frozen=True)
class StatusInput:
    """Everything the document is built from, copied out of the live receiver."""

    targets: Sequence[TargetInput]
    budgets: Mapping[str, Snapshot]
    queued_records: float = 0.0
    records_exported: float = 0.0
    records_rejected: float = 0.0
    last_ack_age: float | None = None
    last_export_ok: bool | None = None
    last_export_error: str = ""
    checkpoint_age: float | None = None
    ready: tuple[bool, str] = (True, "ready")


def target_state(t: TargetInput, budget_holding: bool) -> str:
    """The one word that tells an operator what a target is doing (see :data:`STATES`)."""
    if t.failed:
        return "failed"
    if t.failures > 0:
        return "failing"
    if budget_holding and _overdue(t):
        return "throttled"
    if (t.lag_bytes or 0) > 0 or (t.lag_seconds or 0) > 0:
        return "behind"
    if t.draining:
        return "draining"
    if t.last_poll_age is None or t.news:
        return "polling"
    return "idle"


def _overdue(t: TargetInput) -> bool:
    """No poll ended for well over the longest interval it may wait: its calls are held up."""
    return t.last_poll_age is None or t.last_poll_age > 2 * t.max_poll_interval + 1.0


def next_poll_in(t: TargetInput) -> float | None:
    """Seconds until the next poll is due, as an estimate (idle targets back off up to the maximum)."""
    if t.failed or t.last_poll_age is None:
        return None
    if t.failures:
        wait = min(t.max_poll_interval, 2 * t.poll_interval * 2.0 ** (t.failures - 1))
    elif t.news or (t.lag_bytes or 0) > 0:
        wait = t.poll_interval
    else:
        wait = t.poll_interval * 1.5
    return round(max(0.0, wait - t.last_poll_age), 1)


def short_cursor(cursor: str | None) -> str | None:
    """A prefix that tells cursors apart without showing the log bytes some of them carry."""
    if cursor is None:
        return None
    if len(cursor) <= CURSOR_PREFIX:
        return cursor
    return f"{cursor[:CURSOR_PREFIX]}… ({len(cursor)} chars)"


def clean_error(text: str) -> str:
    """Redacted (secrets, signed URLs, credential headers) and cut to a readable length."""
    text = redact(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _age(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _target_row(t: TargetInput, state: str) -> dict[str, Any]:
    return {
        "source": t.source,
        "key": t.key,
        "state": state,
        "cursor": short_cursor(t.cursor),
        "lag_bytes": t.lag_bytes,
        "lag_seconds": _age(t.lag_seconds),
        "records": t.records,
        "bytes": t.bytes,
        "polls": t.polls,
        "failures": t.failures,
        "last_poll_age_seconds": _age(t.last_poll_age),
        "next_poll_in_seconds": next_poll_in(t),
        "last_error": clean_error(t.failed or t.last_error),
    }


def _budget(name: str, snap: Snapshot) -> dict[str, Any]:
    return {
        "name": name,
        "rate": round(snap.rate, 3),
        "ceiling": snap.ceiling,
        "burst": snap.burst,
        "queued": dict(snap.queued),
        "paused_for_seconds": round(snap.paused_for, 1),
        "throttled": snap.throttled,
        "known_limits": [f"{limit.calls}/{limit.window:g}s" for limit in snap.known_limits],
    }


def _holding(snap: Snapshot) -> bool:
    return snap.paused_for > 0 or sum(snap.queued.values()) > 0


def status_document(inp: StatusInput, max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """The JSON-able status: counts, budgets, pipeline, and the most urgent ``max_rows`` targets."""
    holding = any(_holding(s) for s in inp.budgets.values())
    rows = [_target_row(t, target_state(t, holding)) for t in inp.targets]
    rank = {state: i for i, state in enumerate(STATES)}
    rows.sort(key=lambda r: (rank[r["state"]], -(r["lag_bytes"] or 0), r["source"], r["key"]))
    by_state = dict.fromkeys(STATES, 0)
    by_source: dict[str, dict[str, int]] = {}
    for row in rows:
        by_state[row["state"]] += 1
        per = by_source.setdefault(row["source"], dict.fromkeys(STATES, 0))
        per[row["state"]] += 1
    ready, reason = inp.ready
    return {
        "ready": ready,
        "ready_reason": clean_error(reason),
        "counts": {"total": len(rows), "by_state": by_state, "by_source": by_source},
        "targets": rows[:max_rows],
        "targets_shown": min(len(rows), max_rows),
        "budgets": [_budget(name, snap) for name, snap in sorted(inp.budgets.items())],
        "pipeline": {
            "queued_records": inp.queued_records,
            "records_exported": inp.records_exported,
            "records_rejected": inp.records_rejected,
            "last_ack_age_seconds": _age(inp.last_ack_age),
            "last_export_ok": inp.last_export_ok,
            "last_error": clean_error(inp.last_export_error),
        },
        "checkpoint_age_seconds": _age(inp.checkpoint_age),
    }


# -- gathering from a live receiver


def _gauge_values(gauge: Gauge) -> dict[tuple[str, str], float]:
    """``{(source, target): value}`` of a per-target gauge, through the public collect()."""
    values: dict[tuple[str, str], float] = {}
    for family in gauge.collect():
        for sample in family.samples:
            values[(sample.labels["source"], sample.labels["target"])] = sample.value
    return values


def _single(metric: Any) -> float:
    """The value of an unlabelled counter or gauge (its ``_total`` / plain sample)."""
    for family in metric.collect():
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                return float(sample.value)
    return 0.0


def gather_targets(scheduler: _Scheduler, metrics: Metrics, now: float) -> list[TargetInput]:
    """Copy every target's state; ``now`` is the event loop's time (``last_poll_at`` is loop time)."""
    lag_bytes = _gauge_values(metrics.target_lag_bytes)
    lag_seconds = _gauge_values(metrics.target_lag_seconds)
    out: list[TargetInput] = []
    for rt in scheduler.sources:
        base = float(rt.config.poll_interval)
        ceiling = max(base, float(rt.config.max_poll_interval))
        for key, st in list(scheduler.targets(rt.name).items()):
            out.append(
                TargetInput(
                    source=rt.name,
                    key=key,
                    cursor=st.cursor,
                    records=st.records,
                    bytes=st.bytes,
                    polls=st.polls,
                    failures=st.failures,
                    failed=st.failed,
                    last_error=st.last_error,
                    last_poll_age=None if st.last_poll_at is None else max(0.0, now - st.last_poll_at),
                    draining=st.draining,
                    news=st.news,
                    lag_bytes=lag_bytes.get((rt.name, key)),
                    lag_seconds=lag_seconds.get((rt.name, key)),
                    poll_interval=base,
                    max_poll_interval=ceiling,
                )
            )
    return out


def checkpoint_age(metrics: Metrics, wall_now: float | None = None) -> float | None:
    """Seconds since the last checkpoint commit; None before the first one."""
    last = _single(metrics.checkpoint_last_commit)
    if last <= 0:
        return None
    return max(0.0, (time.time() if wall_now is None else wall_now) - last)


def pipeline_figures(metrics: Metrics) -> dict[str, float]:
    return {
        "queued_records": _single(metrics.queue_records),
        "records_exported": _single(metrics.records_exported),
        "records_rejected": _single(metrics.records_rejected),
    }


class _Pipeline(Protocol):
    @property
    def last_export_ok(self) -> bool | None: ...
    @property
    def last_error(self) -> str: ...


class StatusProvider:
    """The listener's ``status`` callable: builds the document on the receiver's event loop.

    The scheduler's tables and the budgets belong to the event loop's thread, so the listener's
    thread never reads them itself; it waits up to ``timeout`` seconds for the loop to answer.
    """

    def __init__(
        self,
        scheduler: _Scheduler,
        pipeline: _Pipeline,
        metrics: Metrics,
        budgets: Callable[[], Mapping[str, Snapshot]],
        ready: Callable[[], tuple[bool, str]],
        last_ack_age: Callable[[], float | None] = lambda: None,
        timeout: float = 10.0,
    ) -> None:
        self._scheduler, self._pipeline, self._metrics = scheduler, pipeline, metrics
        self._budgets, self._ready, self._last_ack_age = budgets, ready, last_ack_age
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the receiver runs on (set by ``Receiver.run``)."""
        self._loop = loop

    def __call__(self) -> dict[str, Any]:
        """Copy on the loop (short), build the document here: the loop keeps polling meanwhile."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the receiver is not running")
        return status_document(asyncio.run_coroutine_threadsafe(self._gather(), loop).result(self._timeout))

    async def _gather(self) -> StatusInput:
        return self.gather(asyncio.get_running_loop().time())

    def gather(self, now: float) -> StatusInput:
        """Copy the live state into a :class:`StatusInput` (call on the receiver's loop)."""
        figures = pipeline_figures(self._metrics)
        return StatusInput(
            targets=gather_targets(self._scheduler, self._metrics, now),
            budgets=self._budgets(),
            queued_records=figures["queued_records"],
            records_exported=figures["records_exported"],
            records_rejected=figures["records_rejected"],
            last_ack_age=self._last_ack_age(),
            last_export_ok=self._pipeline.last_export_ok,
            last_export_error=self._pipeline.last_error,
            checkpoint_age=checkpoint_age(self._metrics),
            ready=self._ready(),
        )


# -- HTML


def _cell(value: Any) -> str:
    if value is None:
        return "<td>–</td>"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return f"<td>{html.escape(str(value))}</td>"


_COLUMNS = (
    ("source", "source"),
    ("key", "target"),
    ("state", "state"),
    ("cursor", "cursor"),
    ("lag_bytes", "lag bytes"),
    ("lag_seconds", "lag s"),
    ("records", "records"),
    ("last_poll_age_seconds", "last poll (s ago)"),
    ("next_poll_in_seconds", "next poll in (s, est.)"),
    ("last_error", "last error"),
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#eee}.failed,.failing{background:#fdd}.throttled,.behind{background:#ffd}
.draining{background:#eef}code{font-size:12px}
"""


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], row_class: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{html.escape(row_class[i])}"' if row_class else ""
        body.append(f"<tr{cls}>" + "".join(_cell(v) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(doc: Mapping[str, Any], refresh: int = REFRESH_SECONDS) -> str:
    """A self-contained page (no script, no external resource) that reloads every ``refresh`` s."""
    counts = doc["counts"]
    states = [s for s in STATES if counts["by_state"].get(s)]
    parts = [
        "<!DOCTYPE html><html><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{int(refresh)}">',
        f"<title>modelarts-receiver status</title><style>{_STYLE}</style></head><body>",
        "<h1>modelarts-receiver status</h1>",
        f'<p id="ready">ready: <b>{"yes" if doc["ready"] else "no"}</b> — {html.escape(doc["ready_reason"])}</p>',
        f"<h2>Targets ({counts['total']})</h2>",
        _table(["source", *states, "total"], _count_rows(counts["by_source"], states)),
        _table(["all", *states], [["all", *(counts["by_state"][s] for s in states)]]),
        "<h2>Pipeline</h2>",
        _table(list(doc["pipeline"]), [list(doc["pipeline"].values())]),
        f"<p>checkpoint age: {html.escape(str(doc['checkpoint_age_seconds']))} s</p>",
        "<h2>API budget</h2>",
        _table(
            ["name", "rate/s", "ceiling/s", "queued", "paused for s", "throttled", "known limits"],
            [_budget_row(b) for b in doc["budgets"]],
        ),
        "<h2>Targets, most urgent first</h2>",
    ]
    rows = doc["targets"]
    if doc["targets_shown"] < counts["total"]:
        parts.append(
            f'<p id="capped">showing the first {doc["targets_shown"]} of {counts["total"]} targets; '
            "/status.json has the counts, the receiver's metrics have every target</p>"
        )
    parts.append(
        _table(
            [label for _, label in _COLUMNS],
            [[row[name] for name, _ in _COLUMNS] for row in rows],
            [row["state"] for row in rows],
        )
    )
    parts.append("</body></html>")
    return "".join(parts)


def _count_rows(by_source: Mapping[str, Mapping[str, int]], states: Sequence[str]) -> list[list[Any]]:
    return [[src, *(per[s] for s in states), sum(per.values())] for src, per in sorted(by_source.items())]


def _budget_row(b: Mapping[str, Any]) -> list[Any]:
    limits = ", ".join(b["known_limits"])
    return [b["name"], b["rate"], b["ceiling"], _queued(b["queued"]), b["paused_for_seconds"], b["throttled"], limits]


def _queued(queued: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in queued.items() if v) or "0"
