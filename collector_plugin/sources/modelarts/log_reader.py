"""What the two byte-log readers share: cursor, line assembly, flush timing, restarts, metrics.

A log reader turns byte spans of one log into :class:`~collector_plugin.records.Span` objects.
Its cursor is ``{"offset": N, "continued": bool, "epoch": E}``: ``offset`` is the first byte not
yet emitted (a restart re-reads a partial tail, never skips it), ``continued`` says the bytes
there carry on a record already emitted (after a flush), and ``epoch`` counts the times the log
restarted shorter, so the lines of a restarted log get uids distinct from the old ones at the
same offsets. ``seen`` (``[bytes_read, records, gaps, restarts, read_from]``) carries what
:class:`DrainCounts` counted up to the cursor, so a drain replayed after a crash reports the
same counts. ``severity`` (``[number, text]``, where ``continued``) is what the continued record
inherits from the line's start, so its replay carries the severity its first copy did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from collector_plugin.api import (
    Attributes,
    BadCursor,
    CursorCodec,
    Line,
    LineAssembler,
    LineMapper,
    LineRecords,
    LineSourceConfig,
    ReaderStatus,
    SourceContext,
    Span,
)
from collector_plugin.sources.modelarts.client import ModelArtsClient
from collector_plugin.sources.modelarts.records import LOG_ATTRIBUTE_PREFIX

FINGERPRINT_BYTES = 64  # bytes before the position compared on each poll to spot a rewritten log


@dataclass
class DrainCounts:
    """What readers of a log saw of it, carried from cursor to cursor: reported once it is drained.

    Counted by readers, not known to the API: bytes of a log read by a receiver that lost its
    checkpoint, or with a cursor written before these counts existed, are not in them.
    ``read_from``: where reading began (``start_at: end`` skips the head by choice).
    """

    bytes_read: int = 0
    records: int = 0
    gaps: int = 0
    restarts: int = 0
    read_from: int = 0

    def dump(self, held: int) -> list[int]:
        """The counts as of the cursor: ``held`` bytes read past it are read (and counted) again."""
        return [self.bytes_read - held, self.records, self.gaps, self.restarts, self.read_from]

    @classmethod
    def load(cls, value: object, offset: int) -> DrainCounts:
        if value is None:
            return cls(read_from=offset)  # an older cursor: what came before it is not known
        if not isinstance(value, list) or len(value) != 5 or not all(type(v) is int and v >= 0 for v in value):
            raise ValueError("seen")
        return cls(*value)


@dataclass(frozen=True)
class LogCursor:
    """Where a log's next unread line starts; ``before``: the bytes just before it (restart check)."""

    offset: int = 0
    continued: bool = False
    epoch: int = 0
    before: bytes = b""
    seen: list[int] | None = None
    severity: tuple[int, str] | None = None  # what a continued record here inherits

    def dumps(self, codec: CursorCodec) -> str:
        data: dict[str, object] = {"offset": self.offset, "continued": self.continued, "epoch": self.epoch}
        if self.continued and self.severity is not None and self.severity[0]:
            data["severity"] = [self.severity[0], self.severity[1]]
        if self.before:
            data["before"] = self.before.hex()
        if self.seen is not None:
            data["seen"] = self.seen
        return codec.dumps(data)

    @classmethod
    def loads(cls, text: str, codec: CursorCodec) -> LogCursor:
        """Parse a cursor this module wrote; :class:`BadCursor` on anything else."""
        data = codec.loads(text)
        offset = data.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise codec.fail("offset")
        try:
            before = bytes.fromhex(str(data.get("before", "")))[-FINGERPRINT_BYTES:]
            seen = data.get("seen")
            DrainCounts.load(seen, offset)
            severity = data.get("severity")
            if severity is not None:
                number, text = severity
                if type(number) is not int or not isinstance(text, str):
                    raise ValueError("severity")
                severity = (number, text)
            continued = bool(data.get("continued", False))
            return cls(offset, continued, int(data.get("epoch", 0)), before, seen, severity)
        except (ValueError, TypeError):
            raise codec.fail("before/epoch/seen/severity") from None


class ByteLogReader:
    """Base of the readers of one log: everything but how bytes are fetched.

    Subclasses call :meth:`start` once they know where reading begins, then :meth:`spans` for
    each contiguous piece of bytes, and :meth:`restarted`, :meth:`flush_span` as needed.
    """

    def __init__(
        self,
        *,
        key: str,
        source: str,
        config: LineSourceConfig,
        context: SourceContext,
        client: ModelArtsClient,
        shared: Attributes,
        resource: Attributes,
        cursor: str | None,
        ended: bool = False,
    ) -> None:
        self.key = key
        self.source = source
        self.config = config
        self.context = context
        self.client = client
        self.shared = shared
        self.resource = resource
        self.status = ReaderStatus()
        self.codec = CursorCodec(source)
        self.resume: LogCursor | None = None if cursor is None else LogCursor.loads(cursor, self.codec)
        self.epoch = self.resume.epoch if self.resume else 0
        self.counts: DrainCounts | None = (
            DrainCounts.load(self.resume.seen, self.resume.offset) if self.resume is not None else None
        )
        self.completed = False
        # A drain is the last read of a log whose job ended, or of one read live before: a
        # one-shot read to the end of a running job's log (``tail``) is not one.
        self.drains = ended
        self.assembler: LineAssembler | None = None
        self.recent = b""  # the last bytes read before the position: a rewritten log shows here
        self.mapper = self._mapper()
        self.times = context.journal.open(self.mapper.target, self.resume.offset if self.resume else 0)
        self.grew_ns = context.clock_ns()

    def _mapper(self) -> LineMapper:
        target = self.key if self.epoch == 0 else f"{self.key}#{self.epoch}"
        mapper = LineMapper(
            scope=self.client.project_id,
            source=self.source,
            target=target,
            shared=self.shared,
            resource=self.resource,
            prefix=LOG_ATTRIBUTE_PREFIX,
        )
        resume = self.resume
        if resume is not None and resume.epoch == self.epoch and resume.severity is not None:
            mapper.continued_severity = resume.severity  # a replay's continued record: as its first copy
        return mapper

    def start(self, offset: int, continued: bool = False) -> LineAssembler:
        if self.counts is None:
            self.counts = DrainCounts(read_from=offset)
        self.recent = b""
        self.assembler = LineAssembler.from_config(self.config, offset=offset, continued=continued)
        return self.assembler

    def first_offset(self, size: int | None, window: bytes | None) -> int:
        """Where a first read starts: ``beginning``: 0; ``end``: the start of the last, unfinished
        line if ``window`` (the log's last bytes) shows it, else the end."""
        if self.config.start_at == "beginning" or not size:
            return 0
        if window is None:
            return size
        newline = window.rfind(b"\n")
        if newline < 0:
            return 0 if len(window) == size else size
        return size - len(window) + newline + 1

    def resume_at_cursor(self, cursor: LogCursor) -> None:
        """Start where a committed cursor says, knowing the bytes that preceded it."""
        self.start(cursor.offset, cursor.continued)
        self.recent = cursor.before

    @property
    def position(self) -> int:
        """Where the next byte to read lies."""
        return self.assembler.end_offset if self.assembler else 0

    def cursor(self) -> str:
        asm = self.assembler
        assert asm is not None
        held = asm.end_offset - asm.pending_offset  # read, but not yet emitted as a line
        before = self.recent[: len(self.recent) - held] if held < len(self.recent) else b""
        seen = self.counts.dump(held) if self.counts is not None else None
        continued = asm.pending_continued
        severity = self.mapper.continued_severity if continued else None
        return LogCursor(asm.pending_offset, continued, self.epoch, before, seen, severity).dumps(self.codec)

    def spans(self, data: bytes, offset: int) -> Iterator[Span]:
        """Feed ``data`` (at byte ``offset``): its records, a span per at most
        :data:`~collector_plugin.lines.DEFAULT_MAX_BATCH_LINES`, each with the cursor after it.

        Lazy, so a span of bare LFs never holds more records than that at once.
        """
        asm = self.assembler
        assert asm is not None
        if data:
            self.grew_ns = self.context.clock_ns()
        start = 0
        for lines, size in asm.feed_batches(data, offset):
            end = start + size
            if self.counts is not None:
                self.counts.bytes_read += size
            self.recent = (
                data[end - FINGERPRINT_BYTES : end]
                if end >= FINGERPRINT_BYTES
                else (self.recent + data[start:end])[-FINGERPRINT_BYTES:]
            )
            now = self.context.clock_ns()
            self.times.stamp(offset + start, offset + end, now)  # before the records go out: a replay reuses it
            yield Span(self.key, self._records(lines, now), self.cursor(), size)
            start = end

    def _records(self, lines: list[Line], now: int) -> LineRecords:
        if self.counts is not None:
            self.counts.records += len(lines)
        steps = self.times.steps(lines[0].offset, lines[-1].offset, now) if lines else [(0, now)]
        return self.mapper.lines(lines, steps)

    def empty_span(self) -> Span:
        """A span that only commits the cursor (where a first read starts)."""
        return Span(self.key, [], self.cursor(), 0)

    def flush_span(self, *, draining: bool) -> Span | None:
        """Emit the partial tail once the log stopped growing for ``flush_after`` (or at the end)."""
        asm = self.assembler
        if asm is None or not asm.has_pending:
            return None
        now = self.context.clock_ns()
        if not draining and now - self.grew_ns < self.config.flush_after * 1e9:
            return None
        lines = asm.flush(final=draining)
        if not lines:
            return None
        records = self._records(lines, now)
        return Span(self.key, records, self.cursor(), 0)

    def restarted(self, size: int) -> Span:
        """The log is shorter than what was read: emit the old tail and say so; read from 0."""
        asm = self.assembler
        assert asm is not None
        now = self.context.clock_ns()
        records = list(self._records(asm.flush(final=True), now))
        seen_at = self.times.at(max(0, asm.end_offset - 1), now)
        records.append(self.mapper.restarted(size=size, cursor=asm.end_offset, observed_ns=seen_at))
        self.epoch += 1
        if self.counts is not None:
            self.counts.restarts += 1
        self.mapper = self._mapper()
        self.times = self.context.journal.open(self.mapper.target)
        self.start(0)
        self.grew_ns = now
        self.context.metrics.restart()
        self.context.logger.warning(
            "%s: log restarted (now %d bytes, %d already read); reading it again from the start",
            self.key,
            size,
            records[-1].attributes[f"{LOG_ATTRIBUTE_PREFIX}.previous_size"],
        )
        return Span(self.key, records, self.cursor(), 0)

    def gap(self, end: int, reason: str) -> Span:
        """Bytes from the position to ``end`` cannot be read: emit the tail, say so, go on at ``end``."""
        asm = self.assembler
        assert asm is not None
        now = self.context.clock_ns()
        records = list(self._records(asm.flush(final=True), now))
        start = asm.end_offset
        self.times.stamp(start, end, now)
        records.append(self.mapper.gap(start=start, end=end, reason=reason, observed_ns=self.times.at(start, now)))
        if self.counts is not None:
            self.counts.gaps += 1
        self.start(end)
        self.context.metrics.gap()
        self.context.logger.warning("%s: bytes %d-%d could not be read (%s); skipped", self.key, start, end, reason)
        return Span(self.key, records, self.cursor(), 0)

    def begin_poll(self, *, draining: bool) -> None:
        """Called as each poll starts: a live poll makes a later draining poll a drain."""
        if not draining:
            self.drains = True

    def complete_span(self, size: int | None, *, draining: bool) -> Span | None:
        """Once per reader, when a drain read to the end: a record of what was read (see
        :meth:`LineMapper.complete`). None otherwise (not a drain, already said, still behind)."""
        counts = self.counts
        if not (draining and self.drains) or self.completed or self.status.behind or counts is None:
            return None
        self.completed = True
        now = self.context.clock_ns()
        position = self.position
        self.times.stamp(position, position + 1, now)  # its time, journaled: a replayed drain reuses it
        record = self.mapper.complete(
            size=size,
            position=position,
            bytes_read=counts.bytes_read,
            records=counts.records,
            gaps=counts.gaps,
            restarts=counts.restarts,
            read_from=counts.read_from,
            observed_ns=self.times.at(position, now),
        )
        complete = bool(record.attributes[f"{LOG_ATTRIBUTE_PREFIX}.complete"])
        self.context.metrics.log_complete(complete)
        if not complete:
            self.context.logger.warning("%s: drained incomplete: %s", self.key, record.body)
        return Span(self.key, [record], self.cursor(), 0)

    def rewritten(self, window: bytes, window_start: int) -> bool:
        """Whether ``window`` (log bytes from ``window_start``) contradicts the bytes last read.

        A job that restarts writes a new log; when it has already grown past the position by
        the next poll, its size alone cannot tell, but the bytes before the position can.
        """
        start = self.position - len(self.recent)
        if not self.recent or start < window_start or self.position > window_start + len(window):
            return False
        return window[start - window_start : self.position - window_start] != self.recent

    def lag(self, size: int) -> None:
        self.status.lag_bytes = max(0, size - self.position)


__all__ = ["BadCursor", "ByteLogReader", "DrainCounts", "LogCursor"]
