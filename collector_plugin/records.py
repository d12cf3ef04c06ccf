"""The data that flows from sources to the exporter: records, shared attribute sets and spans.

A source yields :class:`Span` objects: records plus the cursor that follows them. The exporter
encodes records straight to OTLP protobuf, so a :class:`Record` is a plain slotted object rather
than an SDK ``LogRecord`` (see shared/PERFORMANCE.md: the SDK path costs ~93 µs per record).
Attributes that are constant for a target live in one :class:`Attributes` object shared by all its
records, so the exporter encodes them once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

AttrValue = Union[str, bool, int, float, bytes, Sequence["AttrValue"], Mapping[str, "AttrValue"]]  # noqa: UP007 (recursive alias: `|` cannot take strings at runtime)
EncodeAttrs = Callable[[tuple[tuple[str, AttrValue], ...]], bytes]


class Attributes:
    """An immutable, ordered attribute set shared by many records (encoded once, cached)."""

    __slots__ = ("_encoded", "items")

    def __init__(self, items: Iterable[tuple[str, AttrValue]] = ()) -> None:
        self.items: tuple[tuple[str, AttrValue], ...] = tuple((k, v) for k, v in items if v is not None)
        self._encoded: bytes | None = None

    @classmethod
    def of(cls, mapping: Mapping[str, AttrValue | None]) -> Attributes:
        return cls((k, v) for k, v in mapping.items() if v is not None)

    def as_dict(self) -> dict[str, AttrValue]:
        return dict(self.items)

    def encoded(self, encode: EncodeAttrs) -> bytes:
        """Return the encoding made by ``encode``, computing it only the first time."""
        if self._encoded is None:
            self._encoded = encode(self.items)
        return self._encoded

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attributes) and self.items == other.items

    def __hash__(self) -> int:
        return hash(tuple(k for k, _ in self.items))

    def __repr__(self) -> str:
        return f"Attributes({dict(self.items)!r})"


EMPTY_ATTRIBUTES = Attributes()


@dataclass(slots=True)
class Record:
    """One OpenTelemetry log record, ready to encode.

    ``uid`` becomes the ``log.record.uid`` attribute: derived from what the record is (project,
    source, target, offset or event identity), so a replay yields the same uid.
    ``resource`` is what the record is sent under (``service.name`` and the like, one
    :class:`Attributes` object shared by a target's records: the source builds it with
    ``SourceContext.resource``).
    """

    body: AttrValue
    uid: str
    observed_ns: int
    time_ns: int = 0
    severity_number: int = 0
    severity_text: str = ""
    event_name: str = ""
    shared: Attributes = EMPTY_ATTRIBUTES
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    resource: Attributes = EMPTY_ATTRIBUTES

    def all_attributes(self) -> dict[str, AttrValue]:
        """Shared and per-record attributes together, plus ``log.record.uid`` (for tests and printing)."""
        out = dict(self.shared.items)
        out.update(self.attributes)
        out["log.record.uid"] = self.uid
        return out


class RecordRun(Sequence[Record]):
    """Records of one resource that encode themselves in one pass: the fast path of delivery.

    A source may put one in a :class:`Span` instead of a list. It reads like a list of
    :class:`Record` objects (built on demand: the console, tests), while delivery asks it for
    :meth:`framed`, which must equal encoding each record on its own
    (``collector_plugin.otlp.encode_framed_log_record``); a property test holds ours to that.
    Catching up, most records are log lines: building a ``Record`` per line and encoding it
    after cost twice the CPU of writing the line's bytes straight away.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def resource(self) -> Attributes:
        """What all of the records are sent under."""

    @abstractmethod
    def framed(self) -> list[bytes]:
        """Each record encoded as a ``ScopeLogs.log_records`` field, in order."""


@dataclass(slots=True)
class Span:
    """Records read from one target, and the cursor to commit once they are all acknowledged.

    ``cursor`` is opaque to everything but the source that made it (a JSON string by convention);
    ``None`` means the span does not move the cursor. ``nbytes`` is the API data it covers, for
    throughput metrics. ``records`` is a list, or a :class:`RecordRun` that encodes itself.
    """

    target: str
    records: Sequence[Record]
    cursor: str | None
    nbytes: int = 0
