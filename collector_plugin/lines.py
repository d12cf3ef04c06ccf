"""Pure line assembly: bytes in, the lines a terminal would show out (owned by the log sources).

A log arrives in spans of bytes that split lines (and multi-byte characters, CRLFs, escape
sequences) anywhere. The :class:`LineAssembler` keeps the bytes after the last LF until their
line ends, decodes only complete text (so a character split between two spans comes out intact,
and invalid UTF-8 becomes U+FFFD), and, like a terminal:

- a ``\\r`` not followed by ``\\n`` returns to the line start, so a line shows the text after its
  last lone ``\\r`` (progress bars). Overwritten text is dropped at once, so a bar that updates
  for hours holds one update in memory; every ``progress_every``-th update of a still open line
  is emitted as a sample marked ``progress``;
- ANSI escape sequences (colours, cursor moves, OSC) are stripped, so LogQL filters match.

Lines longer than ``max_line_bytes`` (counted as Loki counts them: the UTF-8 bytes of the text
sent) are split at character boundaries, outside escape sequences, into pieces marked
``continued``; multiline records (tracebacks) are optionally grouped.

Everything emitted depends only on the bytes and their offsets, never on how they were chunked:
replays after a crash must be byte-identical. :attr:`~LineAssembler.pending_offset` is the byte
position a reader may commit (everything before it has been emitted); an assembler created there
(with :attr:`~LineAssembler.pending_continued`) emits what the first one would have. That is why
updates are counted from that position: it only moves at a line start, a progress sample, a
piece or a flush, and the count restarts at each of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal, NamedTuple

from pydantic import Field, field_validator

from collector_plugin.durations import Duration
from collector_plugin.source import SourceConfig

LOKI_MAX_LINE_BYTES = 256_000  # Loki's max_line_size "256KB", with KB = 1000: longer lines are discarded
DEFAULT_MAX_LINE_BYTES = LOKI_MAX_LINE_BYTES
DEFAULT_PROGRESS_EVERY = 100  # tqdm redraws at most ~10 times a second: about one sample per 10 s
MAX_ESCAPE_BYTES = 256  # an escape sequence still open after this many bytes is not kept whole
DEFAULT_MAX_BATCH_LINES = 8192  # lines per batch of feed_batches: ~4 MB of records, even for a log of bare LFs
_BATCH_SLACK = 16  # lines a feed may emit beyond what its bytes account for (the held tail's pieces, a group)

_CR, _ESC = 13, 27  # `int in bytes` is a memchr; `bytes in bytes` costs ten times more per line

CarriageReturn = Literal["overwrite", "keep"]
Ansi = Literal["strip", "keep"]

# ECMA-48: CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL or ESC \), and the short
# ESC (intermediates) final forms (ESC 7, ESC ( B, ...).
_ESCAPE = re.compile(
    rb"\x1b(?:\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[\x20-\x2f]*[\x30-\x7e])"
)
# The same, or a prefix that the next bytes may still complete (at the end of the searched range).
_ESCAPE_OR_OPEN = re.compile(
    rb"\x1b(?:\[[\x30-\x3f]*[\x20-\x2f]*(?:[\x40-\x7e]|\Z)|\][^\x07\x1b]*(?:\x07|\x1b\\|\x1b?\Z)|[\x20-\x2f]*(?:[\x30-\x7e]|\Z))"
)


class LineSourceConfig(SourceConfig):
    """Keys shared by sources that read logs as bytes and split them into lines."""

    flush_after: Duration = Field(
        default=5.0, description="Emit a partial last line once the log has not grown for this long."
    )
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES,
        ge=64,
        description="Longer lines are split into continued records (at most Loki's 256,000).",
    )
    line_start_pattern: str | None = Field(
        default=None, description="Regex marking the first line of a multiline record (e.g. tracebacks)."
    )
    carriage_return: CarriageReturn = Field(
        default="overwrite",
        description="overwrite: a lone CR returns to the line start, as in a terminal; keep: CRs stay in the text.",
    )
    progress_every: int = Field(
        default=DEFAULT_PROGRESS_EVERY,
        ge=0,
        description="Emit the visible state of a CR-updated open line every this many updates (0: never).",
    )
    ansi: Ansi = Field(default="strip", description="strip: remove ANSI escape sequences from lines; keep: leave them.")

    @field_validator("max_line_bytes")
    @classmethod
    def _within_loki(cls, value: int) -> int:
        if value > LOKI_MAX_LINE_BYTES:
            raise ValueError(
                f"{value} is above Loki's max_line_size of {LOKI_MAX_LINE_BYTES:,} bytes (256KB, KB = 1000): "
                "Loki would discard such lines"
            )
        return value


class Line(NamedTuple):
    """One record's worth of log text.

    ``offset`` is the byte position of its first visible byte in the log (the record's identity).
    ``continued``: it carries on the record emitted before it (a piece of a long line, or the rest
    of a flushed partial line). ``partial``: emitted before its line ended (by
    :meth:`LineAssembler.flush`). ``progress``: a sample of a line still being overwritten by
    ``\\r`` updates; the line's final state follows later as an ordinary line.
    ``start``/``end``: the bytes ``[start, end)`` of the log this line accounts for (overwritten
    text and terminators included). They are bookkeeping, not content, so equality ignores them.
    """

    text: str
    offset: int
    continued: bool = False
    partial: bool = False
    progress: bool = False
    start: int = -1
    end: int = -1

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Line):
            return self[:5] == other[:5]
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, Line):
            return self[:5] != other[:5]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self[:5])


def _char_cut(data: bytes, pos: int, lo: int) -> int:
    """The last UTF-8 character boundary at or before ``pos`` (and after ``lo``); else ``pos``."""
    cut = pos
    for _ in range(4):
        if data[cut] & 0xC0 != 0x80:
            return cut
        cut -= 1
        if cut <= lo:
            break
    return pos


def _incomplete_suffix(data: bytes) -> int:
    """Length of a trailing UTF-8 sequence that may still be completed by the next bytes."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 == 0x80:
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return back if need > back else 0
    return 0


def _open_escape(data: bytes, lo: int, hi: int) -> int:
    """Start of an escape sequence in ``data[lo:hi]`` that is not complete before ``hi``; else ``hi``."""
    if data.find(b"\x1b", max(lo, hi - MAX_ESCAPE_BYTES), hi) < 0:
        return hi
    last: re.Match[bytes] | None = None
    for match in _ESCAPE_OR_OPEN.finditer(data, max(lo, hi - MAX_ESCAPE_BYTES), hi):
        last = match
    if last is not None and last.end() == hi and _ESCAPE.fullmatch(data, last.start(), hi) is None:
        return last.start()
    return hi


def _piece_end(data: bytes, start: int, budget: int, limit: int) -> int:
    """End of the longest piece from ``start``, in blocks, whose bytes complete at most ``budget`` lines.

    A block's worst case (every byte an LF or CR, pieces of ``limit / 12`` bytes) fits the
    budget, and a piece takes at least one block, so every piece makes progress.
    """
    block = max(1, (budget - 1) * limit // (2 * limit + 12))
    end, used = start, 0
    while end < len(data):
        stop = min(end + block, len(data))
        cost = 2 * (data.count(b"\n", end, stop) + data.count(b"\r", end, stop)) - (-12 * (stop - end) // limit)
        if used + cost > budget and end > start:
            break
        used += cost
        end = stop
    return end


_new_line = tuple.__new__  # builds a Line without NamedTuple's Python-level __new__ (hot loop)


class LineAssembler:
    """Turns contiguous byte spans of one log into :class:`Line` objects, in order.

    ``offset`` is where the first fed byte lies; ``continued`` says that what comes first
    continues a record already emitted (restored from a cursor after a flush).
    """

    __slots__ = (
        "_continued",
        "_cover",
        "_cover_continued",
        "_group",
        "_group_bytes",
        "_group_end",
        "_group_offset",
        "_overwrite",
        "_progress_every",
        "_start",
        "_strip",
        "_tail",
        "_tail_offset",
        "_updates",
        "max_line_bytes",
    )

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        line_start_pattern: str | None = None,
        *,
        offset: int = 0,
        continued: bool = False,
        carriage_return: CarriageReturn = "overwrite",
        progress_every: int = DEFAULT_PROGRESS_EVERY,
        ansi: Ansi = "strip",
    ) -> None:
        if max_line_bytes < 4:
            raise ValueError("max_line_bytes must be at least 4 (one UTF-8 character)")
        if progress_every < 0:
            raise ValueError("progress_every must be 0 (no samples) or more")
        self.max_line_bytes = max_line_bytes
        self._start = re.compile(line_start_pattern) if line_start_pattern else None
        self._overwrite = carriage_return == "overwrite"
        self._progress_every = progress_every
        self._strip = ansi == "strip"
        self._tail = b""  # the open line's bytes from its current (not overwritten) text on
        self._tail_offset = offset
        self._cover = offset  # first byte no emitted line accounts for
        self._continued = continued
        self._cover_continued = continued
        self._updates = 0  # lone CRs since the cover last moved
        self._group: list[str] = []
        self._group_offset = 0
        self._group_bytes = 0
        self._group_end = 0

    @classmethod
    def from_config(cls, config: LineSourceConfig, *, offset: int = 0, continued: bool = False) -> LineAssembler:
        """The assembler a source's line keys describe."""
        return cls(
            config.max_line_bytes,
            config.line_start_pattern,
            offset=offset,
            continued=continued,
            carriage_return=config.carriage_return,
            progress_every=config.progress_every,
            ansi=config.ansi,
        )

    @property
    def pending_offset(self) -> int:
        """Position of the first byte not yet emitted: the cursor a reader may commit."""
        return self._cover

    @property
    def pending_continued(self) -> bool:
        """Whether the record starting at :attr:`pending_offset` continues an emitted one."""
        return False if self._group else self._cover_continued

    @property
    def end_offset(self) -> int:
        """Position right after the last byte fed: where the next :meth:`feed` must start."""
        return self._tail_offset + len(self._tail)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the open line held in memory (overwritten text is not kept)."""
        return len(self._tail)

    @property
    def has_pending(self) -> bool:
        """True while bytes or grouped lines wait to be emitted."""
        return self._cover < self.end_offset

    def feed(self, data: bytes, offset: int) -> list[Line]:
        """Add ``data`` (which starts at byte ``offset`` of the log); return the lines it completes.

        Raises ValueError when ``offset`` does not continue what was fed before (a jump is
        allowed only while nothing is pending).
        """
        if offset != self.end_offset:
            if self.has_pending:
                raise ValueError(f"feed at offset {offset}, expected {self.end_offset}")
            self._tail_offset = self._cover = offset
        if not data:
            return []
        out: list[Line] = []
        buf = self._tail + data if self._tail else bytes(data)
        pos = self._tail_offset
        if b"\n" not in buf:
            self._open(buf, pos, out)
            return out
        parts = buf.split(b"\n")
        rest = parts.pop()
        limit = self.max_line_bytes
        fast = self._start is None and not self._continued  # plain lines skip the general path (hot loop)
        keep_cr = not self._overwrite
        strip = self._strip
        first = pos
        cover = self._cover
        append = out.append
        for raw in parts:
            size = len(raw) + 1
            if raw[-1:] == b"\r":
                raw = raw[:-1]
            if fast and len(raw) <= limit and (keep_cr or _CR not in raw):
                text = (_ESCAPE.sub(b"", raw) if strip and _ESC in raw else raw).decode("utf-8", "replace")
                if "\ufffd" not in text or len(text.encode()) <= limit:
                    append(_new_line(Line, (text, pos, False, False, False, cover, pos + size)))
                    pos += size
                    cover = pos
                    continue
            self._cover = cover
            if pos != first:
                self._updates = 0  # only the first line continues the updates counted before
            self._complete(raw, pos, pos + size, out)
            cover = self._cover
            pos += size
            fast = self._start is None
        self._cover = cover
        self._cover_continued = self._continued = False
        self._updates = 0
        self._tail = b""
        self._tail_offset = pos
        self._open(rest, pos, out)
        return out

    def feed_batches(
        self, data: bytes, offset: int, max_lines: int = DEFAULT_MAX_BATCH_LINES
    ) -> Iterator[tuple[list[Line], int]]:
        """:meth:`feed` ``data`` piece by piece; yield each piece's lines (at most ``max_lines``) and its size.

        A span of bare LFs would otherwise make one line per byte at once (262,144 records for
        256 KiB). Between pieces :attr:`pending_offset` and :attr:`pending_continued` make a
        cursor, and the lines are those of one :meth:`feed` (chunking never changes them). A
        piece is cut where its bytes cannot complete more lines: each LF or CR may complete two
        (a line or sample, and a group), each ``max_line_bytes / 12`` bytes one more piece.
        """
        if max_lines < 2 * _BATCH_SLACK:
            raise ValueError(f"max_lines must be at least {2 * _BATCH_SLACK}")
        budget = max_lines - _BATCH_SLACK
        start = 0
        while True:
            end = _piece_end(data, start, budget, self.max_line_bytes)
            piece = data[start:end] if start or end < len(data) else data
            yield self.feed(piece, offset + start), end - start
            if end >= len(data):
                return
            start = end

    def flush(self, *, final: bool = False) -> list[Line]:
        """Emit what is pending: the open multiline group, then the partial last line.

        The partial line is marked ``partial`` and what later follows it ``continued``. Unless
        ``final`` (the log ended), a trailing ``\\r``, incomplete UTF-8 sequence or incomplete
        escape sequence is kept back, since the next bytes may complete it; when ``final``, a
        trailing ``\\r`` ends the line like a CRLF would. A partial line that shows nothing is
        not emitted (held back, or dropped when ``final``).
        """
        out: list[Line] = []
        if self._group:
            self._emit_group(out)
        tail = self._tail
        cr = tail[-1:] == b"\r"
        keep = 0 if final else max(_incomplete_suffix(tail) or int(cr), self._escape_suffix(tail))
        used = len(tail) - keep
        if used <= 0:
            return out
        content = used - 1 if final and cr else used
        text = self._text(tail[:content])
        end = self._tail_offset + used
        if text:
            self._fit(tail, 0, content, self._tail_offset, end, out, partial=True, text=text)
        elif not final:
            return out
        self._advance(end, True)
        self._tail = tail[used:]
        self._tail_offset = end
        return out

    def _text(self, raw: bytes) -> str:
        """What a terminal shows of ``raw`` (one line's text without CRs to interpret)."""
        if self._strip and _ESC in raw:
            raw = _ESCAPE.sub(b"", raw)
        return raw.decode("utf-8", "replace")

    def _escape_suffix(self, data: bytes) -> int:
        """Length of a trailing escape sequence the next bytes may complete (when stripping)."""
        return len(data) - _open_escape(data, 0, len(data)) if self._strip else 0

    def _advance(self, end: int, continued: bool, *, recount: bool = True) -> None:
        """Everything before ``end`` is accounted for; what follows continues a record or not.

        Updates are counted from here on (``recount``), as an assembler resumed here would.
        """
        self._cover = end
        self._continued = self._cover_continued = continued
        if recount:
            self._updates = 0

    def _complete(self, raw: bytes, pos: int, end: int, out: list[Line]) -> None:
        """Emit one complete line: ``raw`` (without its LF or CRLF) starts at ``pos``, ends at ``end``."""
        start = self._updates_in(raw, pos, len(raw), out)
        start = self._long(raw, start, len(raw), pos, out)
        continued = self._continued
        text = self._text(raw[start:])
        big = "\ufffd" in text and len(text.encode()) > self.max_line_bytes
        if continued or big:
            if continued and not text:
                self._advance(end, False)  # a flushed line's terminator: nothing left to show
                return
            if self._group:
                self._emit_group(out)
            self._fit(raw, start, len(raw), pos, end, out, text=text)
            self._advance(end, False)
        else:
            self._add(text, pos + start, len(text.encode()), end, out)
        self._continued = False
        self._updates = 0

    def _open(self, rest: bytes, pos: int, out: list[Line]) -> None:
        """Take in the open line's bytes ``rest`` (no LF) starting at ``pos``; keep what is not emitted."""
        content = len(rest) - (1 if rest[-1:] == b"\r" else 0)  # a trailing CR may be a CRLF's
        start = self._updates_in(rest, pos, content, out)
        start = self._long(rest, start, content, pos, out)
        self._tail = rest[start:]
        self._tail_offset = pos + start

    def _updates_in(self, raw: bytes, pos: int, stop: int, out: list[Line]) -> int:
        """Apply the lone CRs in ``raw[:stop]``: drop the overwritten text, sample progress.

        Returns where the text after the last of them starts (0 when keeping CRs).
        """
        if not self._overwrite:
            return 0
        start = 0
        cr = raw.find(b"\r", 0, stop)
        every = self._progress_every
        while cr >= 0:
            start = self._long(raw, start, cr, pos, out)
            self._updates += 1
            if every and self._updates >= every:
                self._sample(raw, start, cr, pos, out)
            self._continued = False
            start = cr + 1
            cr = raw.find(b"\r", start, stop)
        return start

    def _sample(self, raw: bytes, start: int, cr: int, pos: int, out: list[Line]) -> None:
        """Emit the visible state ``raw[start:cr]`` of an open line as a progress sample."""
        text = self._text(raw[start:cr])
        if not text:
            return  # nothing to show: sample at the next update instead
        if self._group:
            self._emit_group(out)
        self._fit(raw, start, cr, pos, pos + cr + 1, out, progress=True, text=text)
        self._advance(pos + cr + 1, False)

    def _long(self, raw: bytes, start: int, stop: int, pos: int, out: list[Line]) -> int:
        """Emit ``max_line_bytes`` pieces of ``raw[start:stop]`` while more remains; return the rest's start."""
        limit = self.max_line_bytes
        if stop - start <= limit:
            return start
        if self._group:
            self._emit_group(out)
        while stop - start > limit:
            cut = self._cut(raw, start, stop)
            out.append(
                Line(self._text(raw[start:cut]), pos + start, self._continued, False, False, self._cover, pos + cut)
            )
            self._advance(pos + cut, True)
            start = cut
        return start

    def _fit(
        self,
        raw: bytes,
        start: int,
        stop: int,
        pos: int,
        end: int,
        out: list[Line],
        *,
        text: str,
        partial: bool = False,
        progress: bool = False,
    ) -> None:
        """Emit ``raw[start:stop]`` (``text``) as one line ending at ``end``, split if Loki would count it too long.

        Only U+FFFD replacing invalid bytes makes text longer than its bytes, so this rarely splits.
        """
        continued = self._continued
        if "\ufffd" in text and len(text.encode()) > self.max_line_bytes:
            while (cut := self._cut(raw, start, stop)) < stop:
                out.append(
                    Line(self._text(raw[start:cut]), pos + start, continued, False, progress, self._cover, pos + cut)
                )
                self._cover = pos + cut
                continued = True
                start = cut
            text = self._text(raw[start:stop])
        out.append(Line(text, pos + start, continued, partial, progress, self._cover, end))
        self._cover = end

    def _cut(self, raw: bytes, start: int, stop: int) -> int:
        """Where the piece of ``raw[start:stop]`` starting at ``start`` ends.

        At most ``max_line_bytes`` as Loki counts them (after escape stripping and U+FFFD
        replacement), at a character boundary and not inside an escape sequence. It depends only
        on the bytes before it, so any chunking of the input gives the same pieces.
        """
        limit = self.max_line_bytes
        cut = stop if stop - start <= limit else _char_cut(raw, start + limit, start)
        while True:
            if self._strip and cut < stop:
                esc = _open_escape(raw, start, cut)
                if esc > start:
                    cut = esc
            size = len(self._text(raw[start:cut]).encode())
            if size <= limit:
                return cut
            cut = _char_cut(raw, start + max(1, (cut - start) * limit // size), start)

    def _add(self, text: str, pos: int, nbytes: int, end: int, out: list[Line]) -> None:
        """Group a complete line with its multiline record, or emit it when not grouping.

        A group that would outgrow ``max_line_bytes`` is emitted and the line starts a new one.
        """
        start = self._start
        if start is None:
            out.append(Line(text, pos, False, False, False, self._cover, end))
            self._advance(end, False)
            return
        if self._group:
            if start.match(text) is None and self._group_bytes + 1 + nbytes <= self.max_line_bytes:
                self._group.append(text)
                self._group_bytes += 1 + nbytes
                self._group_end = end
                return
            self._emit_group(out)
        self._group = [text]
        self._group_offset = pos
        self._group_bytes = nbytes
        self._group_end = end

    def _emit_group(self, out: list[Line]) -> None:
        out.append(Line("\n".join(self._group), self._group_offset, False, False, False, self._cover, self._group_end))
        self._group = []
        self._advance(self._group_end, False, recount=False)  # the group ends where the open line starts


__all__ = [
    "DEFAULT_MAX_BATCH_LINES",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_PROGRESS_EVERY",
    "LOKI_MAX_LINE_BYTES",
    "Line",
    "LineAssembler",
    "LineSourceConfig",
]
