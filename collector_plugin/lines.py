"""Pure line assembly: bytes in, complete lines out (owned by the log sources).

A log arrives in spans of bytes that split lines (and multi-byte characters) anywhere. The
:class:`LineAssembler` keeps the bytes after the last LF until their line ends, decodes only
complete lines (so a character split between two spans comes out intact, and invalid UTF-8
becomes U+FFFD), splits lines longer than ``max_line_bytes`` at character boundaries into
pieces marked ``continued``, and optionally groups multiline records (tracebacks). Its
:attr:`~LineAssembler.pending_offset` is the byte position a reader may commit: everything
before it has been emitted.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pydantic import Field

from collector_plugin.durations import Duration
from collector_plugin.source import SourceConfig

DEFAULT_MAX_LINE_BYTES = 262_144  # Loki's default max line size
_REPLACEMENT = "\ufffd"


class LineSourceConfig(SourceConfig):
    """Keys shared by sources that read logs as bytes and split them into lines."""

    flush_after: Duration = Field(
        default=5.0, description="Emit a partial last line once the log has not grown for this long."
    )
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES, ge=64, description="Longer lines are split into continued records."
    )
    line_start_pattern: str | None = Field(
        default=None, description="Regex marking the first line of a multiline record (e.g. tracebacks)."
    )


class Line(NamedTuple):
    """One record's worth of log text.

    ``offset`` is the byte position of its first byte in the log. ``continued``: it carries on
    the record emitted before it (a piece of a long line, or the rest of a flushed partial line).
    ``partial``: emitted before its line ended (by :meth:`LineAssembler.flush`).
    """

    text: str
    offset: int
    continued: bool = False
    partial: bool = False


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


class LineAssembler:
    """Turns contiguous byte spans of one log into :class:`Line` objects, in order.

    ``offset`` is where the first fed byte lies; ``continued`` says that what comes first
    continues a record already emitted (restored from a cursor after a flush).
    """

    __slots__ = (
        "_continued",
        "_group",
        "_group_bytes",
        "_group_offset",
        "_start",
        "_tail",
        "_tail_offset",
        "max_line_bytes",
    )

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        line_start_pattern: str | None = None,
        *,
        offset: int = 0,
        continued: bool = False,
    ) -> None:
        if max_line_bytes < 4:
            raise ValueError("max_line_bytes must be at least 4 (one UTF-8 character)")
        self.max_line_bytes = max_line_bytes
        self._start = re.compile(line_start_pattern) if line_start_pattern else None
        self._tail = b""
        self._tail_offset = offset
        self._continued = continued
        self._group: list[str] = []
        self._group_offset = 0
        self._group_bytes = 0

    @property
    def pending_offset(self) -> int:
        """Position of the first byte not yet emitted: the cursor a reader may commit."""
        return self._group_offset if self._group else self._tail_offset

    @property
    def pending_continued(self) -> bool:
        """Whether the record starting at :attr:`pending_offset` continues an emitted one."""
        return False if self._group else self._continued

    @property
    def end_offset(self) -> int:
        """Position right after the last byte fed: where the next :meth:`feed` must start."""
        return self._tail_offset + len(self._tail)

    @property
    def has_pending(self) -> bool:
        """True while bytes or grouped lines wait to be emitted."""
        return bool(self._tail or self._group)

    def feed(self, data: bytes, offset: int) -> list[Line]:
        """Add ``data`` (which starts at byte ``offset`` of the log); return the lines it completes.

        Raises ValueError when ``offset`` does not continue what was fed before (a jump is
        allowed only while nothing is pending).
        """
        if offset != self.end_offset:
            if self.has_pending:
                raise ValueError(f"feed at offset {offset}, expected {self.end_offset}")
            self._tail_offset = offset
        if not data:
            return []
        out: list[Line] = []
        buf = self._tail + data if self._tail else bytes(data)
        if b"\n" not in buf:
            self._tail = buf
            self._split_tail(out)
            return out
        parts = buf.split(b"\n")
        self._tail = parts.pop()
        pos = self._tail_offset
        limit = self.max_line_bytes
        simple = self._start is None
        for raw in parts:
            size = len(raw) + 1
            if raw[-1:] == b"\r":
                raw = raw[:-1]
            if simple and not self._continued and len(raw) <= limit:
                out.append(Line(raw.decode("utf-8", "replace"), pos))
            else:
                self._line(raw, pos, out)
            pos += size
        self._tail_offset = pos
        self._split_tail(out)
        return out

    def flush(self, *, final: bool = False) -> list[Line]:
        """Emit what is pending: the open multiline group, then the partial last line.

        The partial line is marked ``partial`` and what later follows it ``continued``. Unless
        ``final`` (the log ended), a trailing ``\\r`` or incomplete UTF-8 sequence is kept back,
        since the next bytes may complete it; when ``final``, a trailing ``\\r`` ends the line
        like a CRLF would.
        """
        out: list[Line] = []
        if self._group:
            self._emit_group(out)
        tail = self._tail
        cr = tail[-1:] == b"\r"
        keep = 0 if final else _incomplete_suffix(tail) or int(cr)
        if len(tail) > keep:
            used = len(tail) - keep
            text = tail[: used - 1] if final and cr else tail[:used]
            if text or not final:
                out.append(Line(text.decode("utf-8", "replace"), self._tail_offset, self._continued, True))
            self._continued = True
            self._tail = tail[used:]
            self._tail_offset += used
        return out

    def _line(self, raw: bytes, pos: int, out: list[Line]) -> None:
        """Emit one complete line (without its LF) that starts at ``pos``."""
        continued = self._continued
        self._continued = False
        if len(raw) > self.max_line_bytes:
            if self._group:
                self._emit_group(out)
            start = self._pieces(raw, len(raw), pos, continued, out)
            out.append(Line(raw[start:].decode("utf-8", "replace"), pos + start, True))
        elif continued:
            if raw:
                out.append(Line(raw.decode("utf-8", "replace"), pos, True))
        else:
            self._add(raw.decode("utf-8", "replace"), pos, len(raw), out)

    def _add(self, text: str, pos: int, nbytes: int, out: list[Line]) -> None:
        """Group a complete line with its multiline record, or emit it when not grouping.

        A group that would outgrow ``max_line_bytes`` is emitted and the line starts a new one.
        """
        start = self._start
        if start is None:
            out.append(Line(text, pos))
            return
        if self._group:
            if start.match(text) is None and self._group_bytes + 1 + nbytes <= self.max_line_bytes:
                self._group.append(text)
                self._group_bytes += 1 + nbytes
                return
            self._emit_group(out)
        self._group = [text]
        self._group_offset = pos
        self._group_bytes = nbytes

    def _emit_group(self, out: list[Line]) -> None:
        out.append(Line("\n".join(self._group), self._group_offset))
        self._group = []

    def _pieces(self, raw: bytes, content: int, pos: int, continued: bool, out: list[Line]) -> int:
        """Emit ``max_line_bytes`` pieces of ``raw[:content]`` while more remains; return the rest's start."""
        limit = self.max_line_bytes
        start = 0
        while content - start > limit:
            cut = _char_cut(raw, start + limit, start)
            out.append(Line(raw[start:cut].decode("utf-8", "replace"), pos + start, continued))
            continued = True
            start = cut
        return start

    def _split_tail(self, out: list[Line]) -> None:
        """Emit the leading pieces of a partial line that is already longer than the limit."""
        tail = self._tail
        content = len(tail) - (1 if tail[-1:] == b"\r" else 0)
        if content <= self.max_line_bytes:
            return
        if self._group:
            self._emit_group(out)
        start = self._pieces(tail, content, self._tail_offset, self._continued, out)
        self._continued = True
        self._tail = tail[start:]
        self._tail_offset += start


__all__ = ["DEFAULT_MAX_LINE_BYTES", "Line", "LineAssembler", "LineSourceConfig"]
