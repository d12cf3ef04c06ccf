"""Pure, API-neutral mapping: log lines to OpenTelemetry records, stable uids, the resource.

Everything here is a pure function of its inputs (the observed time is passed in), so a replay of
the same data yields the same records, including ``log.record.uid``. What a particular API's
records carry (ModelArts events, service updates) lives with its sources.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from binascii import hexlify
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, overload
from urllib.parse import unquote

from collector_plugin.records import Attributes, AttrValue, Record, RecordRun

if TYPE_CHECKING:
    from collector_plugin.lines import Line
    from collector_plugin.otlp import LineFields

# OpenTelemetry severity numbers (logs data model).
SEV_UNSET, SEV_DEBUG, SEV_INFO, SEV_WARN, SEV_ERROR, SEV_FATAL = 0, 5, 9, 13, 17, 21


_LINE_LEVELS = {
    "DEBUG": SEV_DEBUG,
    "INFO": SEV_INFO,
    "WARN": SEV_WARN,
    "WARNING": SEV_WARN,
    "ERROR": SEV_ERROR,
    "CRITICAL": SEV_FATAL,
    "FATAL": SEV_FATAL,
}
# An upper-case level token near the start of the line, not part of a longer word. The word
# before it is checked by hand: a leading lookbehind keeps ``re`` from skipping ahead to the
# tokens' first letters, and makes the search four times slower.
_LEVEL_TOKEN = re.compile(r"(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)(?![A-Za-z0-9_])")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_LEVEL_SCAN = 160  # characters of a line searched for a level token


def record_uid(*parts: object) -> str:
    """A stable 128-bit id (hex) from what a record is: project, source, target, position."""
    joined = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(joined, digest_size=16).hexdigest()


def line_severity(line: str) -> tuple[int, str]:
    """Severity from the first level token in a line (``[INFO]``, ``ERROR:``, ``WARN`` ...)."""
    pos = 0
    while (match := _LEVEL_TOKEN.search(line, pos, _LEVEL_SCAN)) is not None:
        start = match.start()
        if start == 0 or line[start - 1] not in _WORD_CHARS:
            token = match.group(1)
            return _LINE_LEVELS[token], token
        pos = start + 1  # inside a longer word (``xERROR``): look on
    return SEV_UNSET, ""


def parse_resource_env(value: str) -> dict[str, str]:
    """Parse ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-encoded values)."""
    out: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(val.strip())
    return out


def resource_attributes(
    source_attributes: Mapping[str, AttrValue | None],
    *,
    configured: Mapping[str, AttrValue] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Attributes:
    """A record resource: the source's attributes < OTEL_RESOURCE_ATTRIBUTES < OTEL_SERVICE_NAME < config.

    Keep it low-cardinality: Loki indexes resource attributes as labels.
    """
    attrs: dict[str, AttrValue] = {k: v for k, v in source_attributes.items() if v is not None}
    env = environ or {}
    attrs.update(parse_resource_env(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if env.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = env["OTEL_SERVICE_NAME"]
    attrs.update(configured or {})
    return Attributes((k, v) for k, v in attrs.items() if v != "")


class LineMapper:
    """Builds the records of one log target; its constant attributes are built once.

    ``scope`` namespaces uids (a project, an account); ``prefix`` names the per-record attributes
    (``<prefix>.offset``, ``.continued``, ``.partial``, ``.progress``) and the event names of restart and gap
    records (``<prefix>.restarted``, ``<prefix>.gap``, ``<prefix>.complete``).
    """

    __slots__ = (
        "_a_continued",
        "_a_offset",
        "_a_partial",
        "_a_progress",
        "_fields",
        "_last_severity",
        "_uid_prefix",
        "prefix",
        "resource",
        "scope",
        "shared",
        "source",
        "target",
    )

    def __init__(
        self, *, scope: str, source: str, target: str, shared: Attributes, resource: Attributes, prefix: str = "log"
    ) -> None:
        self.scope = scope
        self.source = source
        self.target = target
        self.shared = shared
        self.resource = resource
        self.prefix = prefix
        self._a_offset, self._a_continued, self._a_partial, self._a_progress = (
            f"{prefix}.{n}" for n in ("offset", "continued", "partial", "progress")
        )
        self._last_severity = (SEV_UNSET, "")
        # record_uid(scope, source, target, offset) with the constant part joined once (hot path)
        self._uid_prefix = "\x1f".join((scope, source, target, "")).encode("utf-8", "surrogatepass")
        self._fields: LineFields | None = None  # made on first use: most mappers never encode lines

    @property
    def continued_severity(self) -> tuple[int, str]:
        """The severity a ``continued`` record inherits next: that of the last line that began one.

        A reader keeps it in its cursor where a record is continued, and sets it again when it
        resumes there, so a replayed piece carries the severity its first copy did.
        """
        return self._last_severity

    @continued_severity.setter
    def continued_severity(self, value: tuple[int, str]) -> None:
        self._last_severity = value

    def lines(self, lines: Sequence[Line], steps: Sequence[tuple[int, int]]) -> LineRecords:
        """The records of ``lines`` (in log order), observed at the times ``steps`` gives their
        offsets (change points, see ``LogTimes.steps``): those :meth:`record` would build."""
        before = self._last_severity
        for line in reversed(lines):
            if not line[2]:  # the severity a continued piece after these lines inherits
                self._last_severity = line_severity(line[0])
                break
        if self._fields is None:
            from collector_plugin.otlp import LineFields  # on first use: `validate` loads no encoder

            self._fields = LineFields(
                self.shared, self._a_offset, (self._a_continued, self._a_partial, self._a_progress)
            )
        return LineRecords(self, lines, steps, before)

    def record(
        self,
        text: str,
        offset: int,
        observed_ns: int,
        *,
        continued: bool = False,
        partial: bool = False,
        progress: bool = False,
    ) -> Record:
        """One record for one line (or one piece of a split line) starting at byte ``offset``.

        ``progress``: a sample of a line still being redrawn by ``\\r`` (a progress bar); its final
        state comes later as an ordinary record.
        """
        if continued:
            severity = self._last_severity
        else:
            severity = self._last_severity = line_severity(text)
        return self._line(text, offset, observed_ns, severity, continued, partial, progress)

    def _line(
        self,
        text: str,
        offset: int,
        observed_ns: int,
        severity: tuple[int, str],
        continued: bool,
        partial: bool,
        progress: bool,
    ) -> Record:
        attributes: dict[str, AttrValue] = {self._a_offset: offset}
        if continued:
            attributes[self._a_continued] = True
        if partial:
            attributes[self._a_partial] = True
        if progress:
            attributes[self._a_progress] = True
        return Record(
            body=text,
            uid=hashlib.blake2b(self._uid_prefix + b"%d" % offset, digest_size=16).hexdigest(),
            observed_ns=observed_ns,
            severity_number=severity[0],
            severity_text=severity[1],
            shared=self.shared,
            attributes=attributes,
            resource=self.resource,
        )

    def restarted(self, *, size: int, cursor: int, observed_ns: int) -> Record:
        """A record saying the log became shorter than what was read: it is read again from 0."""
        return Record(
            body=f"log restarted: it is now {size} bytes, shorter than the {cursor} bytes already read; "
            "reading it again from the start",
            uid=record_uid(self.scope, self.source, self.target, "restart", cursor, size),
            observed_ns=observed_ns,
            time_ns=observed_ns,
            severity_number=SEV_WARN,
            severity_text="WARN",
            event_name=f"{self.prefix}.restarted",
            shared=self.shared,
            attributes={f"{self.prefix}.previous_size": cursor, f"{self.prefix}.size": size},
            resource=self.resource,
        )

    def gap(self, *, start: int, end: int, reason: str, observed_ns: int) -> Record:
        """A record saying bytes ``[start, end)`` could not be read (the API no longer has them)."""
        return Record(
            body=f"log gap: bytes {start}-{end} could not be read ({reason})",
            uid=record_uid(self.scope, self.source, self.target, "gap", start, end),
            observed_ns=observed_ns,
            time_ns=observed_ns,
            severity_number=SEV_WARN,
            severity_text="WARN",
            event_name=f"{self.prefix}.gap",
            shared=self.shared,
            attributes={
                f"{self.prefix}.gap.start": start,
                f"{self.prefix}.gap.end": end,
                f"{self.prefix}.gap.reason": reason,
            },
            resource=self.resource,
        )

    def complete(
        self,
        *,
        size: int | None,
        position: int,
        bytes_read: int,
        records: int,
        gaps: int,
        restarts: int,
        read_from: int,
        observed_ns: int,
    ) -> Record:
        """A record saying a drained log was read to its end (or not): what the reader saw of it.

        ``size``: what the API reports (None: it did not say); ``position``: the first byte not
        read; ``read_from``: where reading began (``start_at: end`` skips the head by choice, so
        that is no gap). Complete means the position is that size and no gap was recorded. The uid depends only on the target and
        the size, so a drain replayed after a crash yields this same record.
        """
        complete = size is not None and position == size and gaps == 0
        p = self.prefix
        attributes: dict[str, AttrValue] = {
            f"{p}.complete": complete,
            f"{p}.bytes_read": bytes_read,
            f"{p}.records": records,
            f"{p}.gaps": gaps,
            f"{p}.restarts": restarts,
            f"{p}.read_from": read_from,
            f"{p}.position": position,
        }
        if size is not None:
            attributes[f"{p}.size"] = size
        said = f"{size} bytes" if size is not None else "an unknown size"
        verdict = "complete" if complete else "INCOMPLETE"
        return Record(
            body=f"log drained, {verdict}: read up to byte {position} of {said} "
            f"({bytes_read} bytes read from byte {read_from}, {records} records, "
            f"{gaps} gaps, {restarts} restarts)",
            uid=record_uid(self.scope, self.source, self.target, "complete", "?" if size is None else size),
            observed_ns=observed_ns,
            time_ns=observed_ns,
            severity_number=SEV_INFO if complete else SEV_WARN,
            severity_text="INFO" if complete else "WARN",
            event_name=f"{p}.complete",
            shared=self.shared,
            attributes=attributes,
            resource=self.resource,
        )


_NO_STEP = 1 << 64
_TOKEN_FIELDS: dict[str, bytes] = {}  # a level token's severity fields, encoded (filled on first use)


class LineRecords(RecordRun):
    """The records of a span's log lines, kept as the lines: encoded in one pass, built on demand.

    Made by :meth:`LineMapper.lines`. :meth:`framed` writes each line's record straight into
    OTLP bytes (the same bytes :meth:`LineMapper.record` and ``encode_framed_log_record`` would
    give, a property test checks); reading the run as a sequence builds those ``Record`` objects.
    """

    __slots__ = ("_before", "_lines", "_mapper", "_steps")

    def __init__(
        self, mapper: LineMapper, lines: Sequence[Line], steps: Sequence[tuple[int, int]], before: tuple[int, str]
    ) -> None:
        self._mapper = mapper
        self._lines = lines
        self._steps = steps
        self._before = before  # the severity a continued first line inherits

    @property
    def resource(self) -> Attributes:
        return self._mapper.resource

    def __len__(self) -> int:
        return len(self._lines)

    def _step(self, offset: int) -> int:
        """The index of the read-time change point that covers ``offset``."""
        return max(0, bisect.bisect_right(self._steps, (offset, _NO_STEP)) - 1)

    def _time(self, offset: int) -> int:
        return self._steps[self._step(offset)][1]

    def _severity(self, index: int) -> tuple[int, str]:
        lines = self._lines
        while index >= 0:
            if not lines[index][2]:
                return line_severity(lines[index][0])
            index -= 1
        return self._before

    def _record(self, line: Line, severity: tuple[int, str]) -> Record:
        text, offset, continued, partial, progress = line[:5]
        return self._mapper._line(text, offset, self._time(offset), severity, continued, partial, progress)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self._lines)
        line = self._lines[index]
        return self._record(line, self._severity(index))

    def __iter__(self) -> Iterator[Record]:
        severity = self._before
        for line in self._lines:
            if not line[2]:
                severity = line_severity(line[0])
            yield self._record(line, severity)

    def framed(self) -> list[bytes]:
        from collector_plugin.otlp import body_prefix, frame_header, observed_field, severity_fields, varint

        if not _TOKEN_FIELDS:
            _TOKEN_FIELDS.update({token: severity_fields(number, token) for token, number in _LINE_LEVELS.items()})
        mapper = self._mapper
        fields = mapper._fields
        assert fields is not None
        shared, offset_prefix, flag_fields, uid_header = (
            fields.shared,
            fields.offset_prefix,
            fields.flags,
            fields.UID_32,
        )
        fixed = len(shared) + len(uid_header) + 32
        uid_base = hashlib.blake2b(mapper._uid_prefix, digest_size=16)  # copied per line: the prefix is hashed once
        search, word, token_fields, unset = _LEVEL_TOKEN.search, _WORD_CHARS, _TOKEN_FIELDS, b""
        steps = self._steps
        low = nxt = 0  # the positions the current read time covers: none before the first line
        observed = b""
        severity = severity_fields(*self._before)
        out: list[bytes] = []
        append = out.append
        for text, offset, continued, partial, progress, _start, _end in self._lines:
            if not low <= offset < nxt:  # another read time (lines come in offset order: rarely a search)
                step = self._step(offset)
                low, nxt = steps[step][0], steps[step + 1][0] if step + 1 < len(steps) else _NO_STEP
                observed = observed_field(steps[step][1])
            if not continued:  # line_severity, inlined for its common outcomes
                match = search(text, 0, _LEVEL_SCAN)
                if match is None:
                    severity = unset
                else:
                    start = match.start()
                    if start == 0 or text[start - 1] not in word:
                        severity = token_fields[match[1]]
                    else:
                        severity = severity_fields(*line_severity(text))
            body = text.encode("utf-8", "replace")
            n = len(body)
            head = body_prefix(n)
            ob = varint(offset)
            at = offset_prefix[len(ob)]
            flags = flag_fields[continued | partial << 1 | progress << 2]
            uid = uid_base.copy()
            uid.update(b"%d" % offset)
            size = fixed + n + len(head) + len(severity) + len(at) + len(ob) + len(flags) + len(observed)
            append(
                b"".join(
                    (
                        frame_header(size),
                        severity,
                        head,
                        body,
                        shared,
                        at,
                        ob,
                        flags,
                        uid_header,
                        hexlify(uid.digest()),
                        observed,
                    )
                )
            )
        return out
