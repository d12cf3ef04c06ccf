"""LineAssembler: bytes split anywhere give the same lines, offsets and cursors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_plugin.lines import Line, LineAssembler

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
    lines = feed_split(LineAssembler(), text.encode(), cuts)
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
    lines = feed_split(LineAssembler(limit), text.encode(), cuts)
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
    lines = feed_split(LineAssembler(limit), text.encode(), cuts, flush_at=flushes)
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
    asm = LineAssembler()
    assert asm.feed(b"a\r\nb\rc\n\r\n", 0) == [Line("a", 0), Line("b\rc", 3), Line("", 7)]


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
    whole = feed_split(LineAssembler(32, r"[^ ]"), data, [])
    assert feed_split(LineAssembler(32, r"[^ ]"), data, cuts) == whole
    # Groups hold whole lines joined by LF; continued pieces belong to the line before them.
    assert "\n".join(reassemble(whole)) == "\n".join(expected_lines(text))


def test_a_cr_that_ends_the_log_ends_its_line() -> None:
    asm = LineAssembler(max_line_bytes=4)
    assert asm.feed(b"abcd\r", 0) == []
    assert asm.flush(final=True) == [Line("abcd", 0, partial=True)]
    assert asm.pending_offset == 5
