"""LineAssembler: bytes split anywhere give the same lines, offsets and cursors."""

from __future__ import annotations

import itertools
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from collector_plugin.lines import Line, LineAssembler, LineSourceConfig

# Text rich in what breaks naive splitting: multi-byte characters, CR, LF, long runs.
ALPHABET = st.sampled_from(["a", "b", " ", "\n", "\r", "\r\n", "中", "é", "😀", "\ufffd", "[INFO] ", "x" * 40])
texts = st.lists(ALPHABET, max_size=80).map("".join)


def feed_split(
    asm: LineAssembler, data: bytes, cuts: list[int], *, flush_at: frozenset[int] = frozenset()
) -> list[Line]:
    out: list[Line] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for i, (a, b) in enumerate(itertools.pairwise(points)):
        out += asm.feed(data[a:b], a)
        if i in flush_at:
            out += asm.flush()
    out += asm.flush(final=True)
    return out


def reassemble(lines: list[Line]) -> list[str]:
    """Join continued pieces to the record before them."""
    out: list[str] = []
    for line in lines:
        if line.continued and out:
            out[-1] += line.text
        else:
            out.append(line.text)
    return out


def expected_lines(text: str) -> list[str]:
    parts = text.split("\n")
    out = [p[:-1] if p.endswith("\r") else p for p in parts]
    last = out.pop()  # a CR that ends the log ends its line, as at a CRLF
    if last:
        out.append(last)
    return out


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 10_000), max_size=20), limit=st.integers(4, 64))
def test_any_split_gives_same_lines_as_one_feed(data: bytes, cuts: list[int], limit: int) -> None:
    whole = feed_split(LineAssembler(limit), data, [])
    assert feed_split(LineAssembler(limit), data, cuts) == whole


@given(text=texts, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_valid_utf8_round_trips(text: str, cuts: list[int]) -> None:
    lines = feed_split(LineAssembler(carriage_return="keep"), text.encode(), cuts)
    assert [line.text for line in lines] == expected_lines(text)
    assert not any(line.continued for line in lines)
    unterminated = text.rsplit("\n", 1)[-1] not in ("", "\r")
    assert [line.partial for line in lines] == [False] * (len(lines) - unterminated) + [True] * unterminated


@given(text=texts, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_offsets_point_at_each_line(text: str, cuts: list[int]) -> None:
    data = text.encode()
    for line in feed_split(LineAssembler(16), data, cuts):
        raw = line.text.encode()
        assert data[line.offset : line.offset + len(raw)] == raw


@given(text=texts, cuts=st.lists(st.integers(0, 10_000), max_size=20), limit=st.integers(4, 50))
def test_long_lines_split_into_pieces_that_concatenate(text: str, cuts: list[int], limit: int) -> None:
    lines = feed_split(LineAssembler(limit, carriage_return="keep"), text.encode(), cuts)
    assert reassemble(lines) == expected_lines(text)
    for line in lines:
        assert len(line.text.encode()) <= limit


@given(
    text=texts,
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    flushes=st.frozensets(st.integers(0, 20)),
    limit=st.integers(4, 50),
)
def test_flushed_partial_lines_continue_without_loss(
    text: str, cuts: list[int], flushes: frozenset[int], limit: int
) -> None:
    lines = feed_split(LineAssembler(limit, carriage_return="keep"), text.encode(), cuts, flush_at=flushes)
    assert reassemble(lines) == expected_lines(text)


@given(text=texts, cuts=st.lists(st.integers(0, 10_000), max_size=20), crash=st.integers(0, 10_000))
@settings(max_examples=200)
def test_restart_at_pending_offset_loses_and_repeats_nothing(text: str, cuts: list[int], crash: int) -> None:
    data = text.encode()
    crash %= len(data) + 1
    first = LineAssembler(12)
    before = feed_split_no_final(first, data[:crash], cuts)
    resumed = LineAssembler(12, offset=first.pending_offset, continued=first.pending_continued)
    after = resumed.feed(data[first.pending_offset :], first.pending_offset) + resumed.flush(final=True)
    assert before + after == feed_split(LineAssembler(12), data, [])


def feed_split_no_final(asm: LineAssembler, data: bytes, cuts: list[int]) -> list[Line]:
    out: list[Line] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        out += asm.feed(data[a:b], a)
    return out


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_invalid_utf8_becomes_replacement_never_an_error(data: bytes, cuts: list[int]) -> None:
    lines = feed_split(LineAssembler(8), data, cuts, flush_at=frozenset(range(0, 10, 2)))
    for line in lines:
        assert line.text.encode("utf-8", "surrogatepass").decode() == line.text


def test_character_split_between_feeds_comes_out_intact() -> None:
    asm = LineAssembler()
    data = "日志😀\n".encode()
    lines = [line for i in range(len(data)) for line in asm.feed(data[i : i + 1], i)]
    assert lines == [Line("日志😀", 0)]


def test_crlf_drops_only_the_cr_before_lf() -> None:
    asm = LineAssembler(carriage_return="keep")
    assert asm.feed(b"a\r\nb\rc\n\r\n", 0) == [Line("a", 0), Line("b\rc", 3), Line("", 7)]
    # By default the lone CR overwrites, as in a terminal; a CRLF's CR is still just dropped.
    assert LineAssembler().feed(b"a\r\nb\rc\n\r\n", 0) == [Line("a", 0), Line("c", 5), Line("", 7)]


def test_pending_offset_is_the_start_of_the_partial_line() -> None:
    asm = LineAssembler()
    asm.feed(b"one\ntw", 0)
    assert (asm.pending_offset, asm.end_offset) == (4, 6)
    assert asm.feed(b"o\n", 6) == [Line("two", 4)]
    assert asm.pending_offset == 8


def test_feed_must_be_contiguous_while_something_is_pending() -> None:
    asm = LineAssembler()
    asm.feed(b"abc", 0)
    with pytest.raises(ValueError):
        asm.feed(b"d", 5)


def test_flush_keeps_an_incomplete_character_and_cr_for_later() -> None:
    asm = LineAssembler()
    asm.feed("ab中".encode()[:-1], 0)
    assert asm.flush() == [Line("ab", 0, partial=True)]
    assert asm.pending_offset == 2
    assert asm.feed("中\r".encode()[-2:], 4) == []
    assert asm.flush() == [Line("中", 2, continued=True, partial=True)]
    assert asm.feed(b"\nnext\n", 6) == [Line("next", 7)]


def test_final_flush_emits_everything() -> None:
    asm = LineAssembler()
    asm.feed(b"ab\xe4", 0)
    assert asm.flush(final=True) == [Line("ab\ufffd", 0, partial=True)]
    assert not asm.has_pending


def test_long_line_pieces_never_split_a_character() -> None:
    asm = LineAssembler(max_line_bytes=7)
    lines = asm.feed("中中中中\n".encode(), 0)
    assert lines == [Line("中中", 0), Line("中中", 6, continued=True)]


def test_partial_long_line_is_emitted_before_its_end_arrives() -> None:
    asm = LineAssembler(max_line_bytes=4)
    assert asm.feed(b"abcdefghi", 0) == [Line("abcd", 0), Line("efgh", 4, continued=True)]
    assert asm.pending_offset == 8 and asm.pending_continued
    assert asm.feed(b"\n", 9) == [Line("i", 8, continued=True)]


def test_multiline_groups_tracebacks_under_their_first_line() -> None:
    asm = LineAssembler(line_start_pattern=r"\S")
    data = b'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\nnext\n'
    lines = asm.feed(data, 0)
    assert lines == [
        Line('Traceback (most recent call last):\n  File "x.py", line 1', 0),
        Line("ValueError: bad", 57),
    ]
    assert asm.pending_offset == 73
    assert asm.flush(final=True) == [Line("next", 73)]


def test_multiline_group_is_emitted_by_flush() -> None:
    asm = LineAssembler(line_start_pattern=r"\S")
    asm.feed(b"Error\n  at a\n", 0)
    assert asm.flush() == [Line("Error\n  at a", 0)]
    assert asm.feed(b"  at b\nNew\n", 13) == [Line("  at b", 13)]


def test_multiline_group_is_bounded_by_max_line_bytes() -> None:
    asm = LineAssembler(max_line_bytes=10, line_start_pattern=r"\S")
    lines = asm.feed(b"E\n 1234\n 5678\nF\n", 0)
    assert lines == [Line("E\n 1234", 0), Line(" 5678", 8)]


@given(text=texts, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_multiline_any_split_gives_same_records(text: str, cuts: list[int]) -> None:
    data = text.encode()
    whole = feed_split(LineAssembler(32, r"[^ ]", carriage_return="keep"), data, [])
    assert feed_split(LineAssembler(32, r"[^ ]", carriage_return="keep"), data, cuts) == whole
    # Groups hold whole lines joined by LF; continued pieces belong to the line before them.
    assert "\n".join(reassemble(whole)) == "\n".join(expected_lines(text))


def test_a_cr_that_ends_the_log_ends_its_line() -> None:
    asm = LineAssembler(max_line_bytes=4)
    assert asm.feed(b"abcd\r", 0) == []
    assert asm.flush(final=True) == [Line("abcd", 0, partial=True)]
    assert asm.pending_offset == 5


# --- terminal behaviour: CR overwrites, ANSI escapes are stripped, Loki's limits hold ---
# (deadline=None: how busy the machine is must not fail a test)

ESCAPES = [
    "\x1b[32m",
    "\x1b[0m",
    "\x1b[2K",
    "\x1b[1A",
    "\x1b]0;title\x07",
    "\x1b]8;;http://x/\x1b\\",
    "\x1b7",
    "\x1b(B",
]
TERMINAL = st.sampled_from(["a", "b", " ", "\n", "\r", "\r", "\r\n", "中", "😀", "loss", "x" * 30, *ESCAPES])
terminal_texts = st.lists(TERMINAL, max_size=80).map("".join)
# As bytes, with invalid UTF-8 too; escapes stay whole tokens so the models below can find them.
TOKENS = st.one_of(TERMINAL.map(str.encode), st.sampled_from([b"\xe4", b"\xff", b"\xf0\x9f"]))
terminal_bytes = st.lists(TOKENS, max_size=80).map(b"".join)


def strip_escapes(text: str) -> str:
    for esc in ESCAPES:
        text = text.replace(esc, "")
    return text


def visible(line: str) -> str:
    """A terminal's view of one line (without its LF): the text after the last CR."""
    return strip_escapes(line.rsplit("\r", 1)[-1])


def terminal_lines(text: str) -> list[str]:
    """What a terminal shows, line by line; a CR that ends the log ends its line, as at a CRLF."""
    *complete, last = text.split("\n")
    out = [visible(line.removesuffix("\r")) for line in complete]
    if shown := visible(last.removesuffix("\r")):
        out.append(shown)
    return out


def progress_model(text: str, every: int) -> list[tuple[str, bool]]:
    """Each line's final state, preceded by a sample at the first CR at or after every ``every``-th update."""
    *complete, last = text.split("\n")
    out: list[tuple[str, bool]] = []
    for i, line in enumerate([*complete, last]):
        *overwritten, shown = line.removesuffix("\r").split("\r")
        updates = 0
        for state in overwritten:
            updates += 1
            if updates >= every and strip_escapes(state):
                out.append((strip_escapes(state), True))
                updates = 0
        if i < len(complete) or strip_escapes(shown):
            out.append((strip_escapes(shown), False))
    return out


def feed_tracked(
    asm: LineAssembler, data: bytes, cuts: list[int], flush_at: frozenset[int] = frozenset()
) -> tuple[list[Line], list[int]]:
    """Like feed_split, and the pending offset after each call."""
    out: list[Line] = []
    pending: list[int] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for i, (a, b) in enumerate(itertools.pairwise(points)):
        out += asm.feed(data[a:b], a)
        pending.append(asm.pending_offset)
        if i in flush_at:
            out += asm.flush()
            pending.append(asm.pending_offset)
    out += asm.flush(final=True)
    pending.append(asm.pending_offset)
    return out, pending


def full(lines: list[Line]) -> list[tuple[object, ...]]:
    """Lines with the byte ranges that equality ignores."""
    return [tuple(line) for line in lines]


def shows_nothing(data: bytes) -> bool:
    return not any(terminal_lines(data.decode("utf-8", "replace")))


@given(text=terminal_texts, cuts=st.lists(st.integers(0, 10_000), max_size=20))
@settings(deadline=None)
def test_visible_text_is_what_a_terminal_shows(text: str, cuts: list[int]) -> None:
    lines = feed_split(LineAssembler(progress_every=0), text.encode(), cuts)
    assert [line.text for line in lines] == terminal_lines(text)
    assert not any(line.continued or line.progress for line in lines)


@given(text=terminal_texts, cuts=st.lists(st.integers(0, 10_000), max_size=20), every=st.integers(1, 4))
@settings(deadline=None)
def test_progress_samples_come_every_n_updates(text: str, cuts: list[int], every: int) -> None:
    lines = feed_split(LineAssembler(progress_every=every), text.encode(), cuts)
    assert [(line.text, line.progress) for line in lines] == progress_model(text, every)


@given(
    data=terminal_bytes,
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    limit=st.integers(4, 64),
    every=st.integers(0, 4),
    cr=st.sampled_from(["overwrite", "keep"]),
    ansi=st.sampled_from(["strip", "keep"]),
    pattern=st.sampled_from([None, r"[^ ]"]),
)
@settings(max_examples=300, deadline=None)
def test_any_chunking_gives_the_same_lines_and_ranges(
    data: bytes,
    cuts: list[int],
    limit: int,
    every: int,
    cr: Literal["overwrite", "keep"],
    ansi: Literal["strip", "keep"],
    pattern: str | None,
) -> None:
    def make() -> LineAssembler:
        return LineAssembler(limit, pattern, carriage_return=cr, progress_every=every, ansi=ansi)

    assert full(feed_split(make(), data, cuts)) == full(feed_split(make(), data, []))


@given(
    data=terminal_bytes,
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    flushes=st.frozensets(st.integers(0, 20)),
    limit=st.integers(20, 64),  # pieces hold whole escape sequences,
    every=st.integers(0, 4),
    cr=st.sampled_from(["overwrite", "keep"]),
    pattern=st.sampled_from([None, r"[^ ]"]),
)
@settings(max_examples=300, deadline=None)
def test_every_byte_is_accounted_for_once_and_offsets_increase(
    data: bytes,
    cuts: list[int],
    flushes: frozenset[int],
    limit: int,
    every: int,
    cr: Literal["overwrite", "keep"],
    pattern: str | None,
) -> None:
    asm = LineAssembler(limit, pattern, carriage_return=cr, progress_every=every)
    lines, pending = feed_tracked(asm, data, cuts, flushes)
    covered = 0
    for line in lines:
        # Between two lines only the terminators of a line already emitted may go unrecorded.
        assert line.start >= covered and shows_nothing(data[covered : line.start])
        assert line.start <= line.offset < line.end
        assert len(line.text.encode()) <= limit
        covered = line.end
    assert [line.offset for line in lines] == sorted({line.offset for line in lines})
    assert pending == sorted(pending) and pending[-1] == len(data) and not asm.has_pending
    assert shows_nothing(data[covered:])


@given(
    data=terminal_bytes,
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    flushes=st.frozensets(st.integers(0, 20)),
    crash=st.integers(0, 10_000),
    limit=st.integers(4, 40),
    every=st.integers(0, 3),
    pattern=st.sampled_from([None, r"[^ ]"]),
)
@settings(max_examples=300, deadline=None)
def test_resuming_at_the_cursor_gives_the_same_records(
    data: bytes, cuts: list[int], flushes: frozenset[int], crash: int, limit: int, every: int, pattern: str | None
) -> None:
    """A crash after any feed or flush: an assembler created at the committed cursor continues identically."""
    crash %= len(data) + 1
    first = LineAssembler(limit, pattern, progress_every=every)
    points = sorted({c % (crash + 1) for c in cuts} | {0, crash})
    for i, (a, b) in enumerate(itertools.pairwise(points)):
        first.feed(data[a:b], a)
        if i in flushes:
            first.flush()
    cursor, continued = first.pending_offset, first.pending_continued
    went_on = first.feed(data[crash:], crash) + first.flush(final=True)
    resumed = LineAssembler(limit, pattern, progress_every=every, offset=cursor, continued=continued)
    replayed = resumed.feed(data[cursor:], cursor) + resumed.flush(final=True)
    assert full(replayed) == full(went_on)


def test_a_progress_bar_keeps_only_its_last_update_in_memory() -> None:
    asm = LineAssembler(progress_every=100)
    updates = [f"\r{i // 1000:3d}%|{'#' * (i // 10_000)}| {i}/100000".encode() for i in range(100_000)]
    data = b"".join(updates) + b"\rdone\n"
    longest = max(len(u) for u in updates)
    out: list[Line] = []
    pos, step = 0, 1
    while pos < len(data):
        out += asm.feed(data[pos : pos + step], pos)
        pos += step
        step = step % 997 + 13  # reads of varying size, some inside an update
        assert asm.buffered_bytes <= longest
        assert asm.end_offset - asm.pending_offset <= 101 * longest  # a crash re-reads at most 100 updates
    samples = [line for line in out if line.progress]
    # The first CR ends the empty text before the bar, the k-th one update k - 2: samples at CRs 100, 200, ...
    assert len(samples) == (100_000 + 1) // 100
    assert samples[0].text == updates[98][1:].decode()
    assert out[-1] == Line("done", len(data) - 5)


def test_progress_sample_resumes_like_the_line_start() -> None:
    data = b"".join(b"\r%d%%" % i for i in range(10)) + b"\n"
    whole = LineAssembler(progress_every=3).feed(data, 0)
    assert [(line.text, line.progress) for line in whole] == [("1%", True), ("4%", True), ("7%", True), ("9%", False)]
    asm = LineAssembler(progress_every=3)
    asm.feed(data[:17], 0)  # up to the byte after the CR that closed "4%" (so that CR is no CRLF's)
    cursor = asm.pending_offset
    assert data[cursor - 3 : cursor] == b"4%\r"
    resumed = LineAssembler(progress_every=3, offset=cursor)
    assert resumed.feed(data[cursor:], cursor) == whole[2:]


def test_carriage_return_keep_leaves_the_text_alone() -> None:
    asm = LineAssembler(carriage_return="keep", progress_every=1)
    assert asm.feed(b" 1%\r 2%\r\n", 0) == [Line(" 1%\r 2%", 0)]


def test_colour_codes_are_stripped_even_when_split_between_reads() -> None:
    data = b"\x1b[32mloss\x1b[0m 0.5 \x1b]0;epoch 1\x07done\x1b[K\n"
    asm = LineAssembler()
    lines = [line for i in range(len(data)) for line in asm.feed(data[i : i + 1], i)]
    assert lines == [Line("loss 0.5 done", 0)]
    assert LineAssembler(ansi="keep").feed(data, 0) == [Line(data[:-1].decode(), 0)]


def test_flush_keeps_an_unfinished_escape_sequence_for_later() -> None:
    asm = LineAssembler()
    asm.feed(b"step 3 \x1b[3", 0)
    assert asm.flush() == [Line("step 3 ", 0, partial=True)]
    assert asm.feed(b"2mok\n", 10) == [Line("ok", 7, continued=True)]


def test_pieces_never_cut_an_escape_sequence() -> None:
    asm = LineAssembler(max_line_bytes=8)
    lines = asm.feed(b"abcde\x1b[32mfgh\x1b[0m\n", 0)
    assert lines == [Line("abcde", 0), Line("fgh", 5, continued=True)]


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 10_000), max_size=10), limit=st.integers(4, 40))
@settings(deadline=None)
def test_lines_fit_loki_even_when_invalid_bytes_grow_into_replacement_characters(
    data: bytes, cuts: list[int], limit: int
) -> None:
    for line in feed_split(LineAssembler(limit), data, cuts, flush_at=frozenset(range(0, 10, 3))):
        assert len(line.text.encode()) <= limit


def test_invalid_bytes_are_split_so_loki_takes_them() -> None:
    lines = LineAssembler(max_line_bytes=8).feed(b"\xff" * 8 + b"\n", 0)
    assert [line.text for line in lines] == ["\ufffd\ufffd", "\ufffd\ufffd", "\ufffd\ufffd", "\ufffd\ufffd"]
    assert [line.offset for line in lines] == [0, 2, 4, 6]


def test_default_max_line_bytes_is_within_loki_and_larger_is_rejected() -> None:
    assert LineSourceConfig().max_line_bytes <= 256_000
    assert LineSourceConfig(max_line_bytes=256_000).max_line_bytes == 256_000
    with pytest.raises(ValidationError) as info:
        LineSourceConfig(max_line_bytes=262_144)
    (error,) = info.value.errors()
    assert error["loc"] == ("max_line_bytes",)
    assert "256,000" in error["msg"] and "Loki" in error["msg"]


def test_config_keys_reach_the_assembler() -> None:
    config = LineSourceConfig(carriage_return="keep", ansi="keep", progress_every=0, max_line_bytes=64)
    asm = LineAssembler.from_config(config, offset=3)
    assert asm.feed(b"\x1b[1ma\rb\n", 3) == [Line("\x1b[1ma\rb", 3)]
    with pytest.raises(ValidationError):
        LineSourceConfig(carriage_return="erase")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        LineSourceConfig(progress_every=-1)
