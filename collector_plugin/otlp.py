"""Hand-written protobuf encoding of OTLP ``ExportLogsServiceRequest`` messages.

Why by hand: building opentelemetry-proto messages costs ~14 µs per record with ``.add()`` and
~93 µs through the SDK; writing the wire format directly costs a few µs (shared/PERFORMANCE.md).
tests/test_otlp.py checks, field for field, that opentelemetry-proto decodes what we write.

The encoding is split so the pipeline can encode each record once, when it is queued, and later
assemble any subset of encoded records into a request (batching, or splitting a refused batch):

- :func:`encode_log_record` -> one ``LogRecord`` message body;
- :func:`frame_log_record` -> that body as a ``ScopeLogs.log_records`` field;
- :func:`assemble_request` -> a request from framed records grouped by resource.

Integers outside the int64 range cannot be an OTLP ``int_value``; they are sent as their decimal
string rather than being dropped or wrapped. Strings that are not valid Unicode (lone surrogates)
are sent with ``?`` in place of the bad code points rather than failing the whole span.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from collector_plugin.records import Attributes, AttrValue, Record

UID_KEY = "log.record.uid"
SCOPE_NAME = "collector_plugin"

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_U64 = (1 << 64) - 1

_pack_double = struct.Struct("<d").pack
_pack_tag_fixed64 = struct.Struct("<BQ").pack


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Values below 16 KiB (nearly all lengths) come from a table instead of a loop; values below
# 256 MiB (a log's offsets) from two: the low 14 bits' two bytes, then the rest.
_VARINT_TABLE: tuple[bytes, ...] = tuple(_varint_slow(i) for i in range(1 << 14))
_TABLE_LIMIT = len(_VARINT_TABLE)
_VARINT_LOW14 = tuple(bytes(((k & 0x7F) | 0x80, (k >> 7) | 0x80)) for k in range(1 << 14))


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf varint."""
    if value < _TABLE_LIMIT:
        return _VARINT_TABLE[value]
    if value < 0x10000000:
        return _VARINT_LOW14[value & 0x3FFF] + _VARINT_TABLE[value >> 14]
    return _varint_slow(value)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_VARINT_TABLE[n] if n < _TABLE_LIMIT else _varint_slow(n)) + payload


# --- AnyValue / KeyValue -------------------------------------------------------------------------

_STRING_CACHE: dict[str, bytes] = {}
_STRING_CACHE_MAX = 4096


def encode_any_value(value: AttrValue) -> bytes:
    """Encode an ``AnyValue`` message body (the oneof field is always written, even if empty)."""
    kind = type(value)
    if kind is str:
        return _len_field(b"\x0a", value.encode("utf-8", "replace"))  # type: ignore[union-attr]
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        v: int = value  # type: ignore[assignment]
        if _INT64_MIN <= v <= _INT64_MAX:
            return b"\x18" + varint(v & _U64)
        return _len_field(b"\x0a", str(v).encode("utf-8", "replace"))
    if kind is float:
        return b"\x21" + _pack_double(value)
    if kind is bytes:
        return _len_field(b"\x3a", value)  # type: ignore[arg-type]
    return _encode_any_value_generic(value)


def _encode_any_value_generic(value: AttrValue) -> bytes:
    """Subclasses and containers: the rare, slower path."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len_field(b"\x0a", str(value).encode("utf-8", "replace"))
    if isinstance(value, int):
        return encode_any_value(int(value))
    if isinstance(value, float):
        return b"\x21" + _pack_double(float(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _len_field(b"\x3a", bytes(value))
    if isinstance(value, Mapping):
        body = b"".join(_len_field(b"\x0a", encode_key_value(str(k), v)) for k, v in value.items())
        return _len_field(b"\x32", body)
    if isinstance(value, Sequence):
        body = b"".join(_len_field(b"\x0a", encode_any_value(v)) for v in value)
        return _len_field(b"\x2a", body)
    return _len_field(b"\x0a", str(value).encode("utf-8", "replace"))


def encode_key_value(key: str, value: AttrValue) -> bytes:
    """Encode a ``KeyValue`` message body."""
    return _key_bytes(key) + _len_field(b"\x12", encode_any_value(value))


def encode_attributes(items: Iterable[tuple[str, AttrValue]], tag: bytes = b"\x32") -> bytes:
    """Encode attributes as repeated ``KeyValue`` fields with ``tag`` (6 in LogRecord, 1 in Resource)."""
    return b"".join(_len_field(tag, encode_key_value(k, v)) for k, v in items if v is not None)


def _log_attributes(items: tuple[tuple[str, AttrValue], ...]) -> bytes:
    return encode_attributes(items, b"\x32")


def _resource_attributes(items: tuple[tuple[str, AttrValue], ...]) -> bytes:
    return encode_attributes(items, b"\x0a")


# --- LogRecord -----------------------------------------------------------------------------------

_EVENT_NAME: dict[str, bytes] = {}
_UID_KEY_BYTES = _len_field(b"\x0a", UID_KEY.encode("utf-8", "replace"))
_UID_FIELD_FIXED = len(_UID_KEY_BYTES) + 4  # KeyValue bytes besides the uid itself (short uids)


def _cached_len_field(cache: dict[str, bytes], tag: bytes, text: str) -> bytes:
    out = cache.get(text)
    if out is None:
        out = _len_field(tag, text.encode("utf-8", "replace"))
        if len(cache) < _STRING_CACHE_MAX:
            cache[text] = out
    return out


_pack_2 = struct.Struct("BB").pack
_pack_4 = struct.Struct("BBBB").pack


def _key_bytes(key: str) -> bytes:
    """``KeyValue.key`` (field 1) for ``key``; the keys of a deployment are few, so they are cached."""
    kb = _STRING_CACHE.get(key)
    if kb is None:
        kb = _len_field(b"\x0a", key.encode("utf-8", "replace"))
        if len(_STRING_CACHE) < _STRING_CACHE_MAX:
            _STRING_CACHE[key] = kb
    return kb


# Prefixes that depend only on a length (and a key) are computed once: the hot loop then writes
# one cached prefix and the value's bytes.
_UID_PREFIX = tuple(
    _pack_2(0x32, _UID_FIELD_FIXED + n) + _UID_KEY_BYTES + _pack_4(0x12, n + 2, 0x0A, n) for n in range(100)
)
_STR_ATTR_PREFIX: dict[tuple[str, int], bytes] = {}
_INT_ATTR_PREFIX: dict[tuple[str, int], bytes] = {}
_PREFIX_CACHE_MAX = 65536


def _str_attr_prefix(key: str, n: int) -> bytes | None:
    """Field 6 header, ``KeyValue.key`` and the ``AnyValue`` header of a short string attribute."""
    kb = _key_bytes(key)
    total = len(kb) + n + 4
    if total >= 128:
        return None
    prefix = _pack_2(0x32, total) + kb + _pack_4(0x12, n + 2, 0x0A, n)
    if len(_STR_ATTR_PREFIX) < _PREFIX_CACHE_MAX:
        _STR_ATTR_PREFIX[(key, n)] = prefix
    return prefix


class LineFields:
    """The wire pieces of one log target's line records, made once: see ``mapping.LineRecords``.

    A line record is severity, a string body, the target's shared attributes, an int offset
    attribute, up to three ``True`` flag attributes, the uid and the observed time, in the order
    :func:`encode_framed_log_record` writes them; the line path joins these pieces with the
    line's own bytes in one step instead of building a :class:`Record` and encoding it.
    """

    __slots__ = ("flags", "offset_prefix", "shared")

    UID_32 = _UID_PREFIX[32]  # a 32-character (hex) uid's field header

    def __init__(self, shared: Attributes, offset_key: str, flag_keys: tuple[str, str, str]) -> None:
        self.shared = shared.encoded(_log_attributes) if shared.items else b""
        # the offset's field, key and value headers, by the length of its varint
        self.offset_prefix = tuple(int_attribute_prefix(offset_key, n) for n in range(11))
        flag = [_len_field(b"\x32", encode_key_value(k, True)) for k in flag_keys]
        # by continued | partial << 1 | progress << 2
        self.flags = tuple(b"".join(f for bit, f in enumerate(flag) if i >> bit & 1) for i in range(8))


def int_attribute_prefix(key: str, n: int) -> bytes:
    """Field 6, ``KeyValue.key`` and the ``AnyValue`` header of a non-negative int whose varint is ``n`` bytes."""
    prefix = _INT_ATTR_PREFIX.get((key, n))
    if prefix is None:
        kb = _key_bytes(key)
        prefix = b"\x32" + varint(len(kb) + n + 3) + kb + bytes((0x12, n + 1, 0x18))
        if len(_INT_ATTR_PREFIX) < _PREFIX_CACHE_MAX:
            _INT_ATTR_PREFIX[(key, n)] = prefix
    return prefix


_SEVERITY_FIELDS: dict[tuple[int, str], bytes] = {}


def severity_fields(number: int, text: str) -> bytes:
    """``severity_number`` and ``severity_text`` as written for a record with these (cached)."""
    out = _SEVERITY_FIELDS.get((number, text))
    if out is None:
        out = (b"\x10" + varint(number & _U64) if number else b"") + (
            _len_field(b"\x1a", text.encode("utf-8", "replace")) if text else b""
        )
        if len(_SEVERITY_FIELDS) < _STRING_CACHE_MAX:
            _SEVERITY_FIELDS[(number, text)] = out
    return out


def _body_prefix(n: int) -> bytes:
    inner = b"\x0a" + varint(n)
    return b"\x2a" + varint(len(inner) + n) + inner


# Bodies of up to 4 KiB (nearly all lines) take their headers from a table.
_BODY_PREFIXES = tuple(_body_prefix(n) for n in range(4096))


def body_prefix(n: int) -> bytes:
    """The ``body`` field's headers for a string of ``n`` UTF-8 bytes."""
    return _BODY_PREFIXES[n] if n < 4096 else _body_prefix(n)


def observed_field(time_ns: int) -> bytes:
    """``observed_time_unix_nano`` (nothing for 0, as for a record)."""
    return _pack_tag_fixed64(0x59, time_ns & _U64) if time_ns else b""


def frame_header(n: int) -> bytes:
    """The ``ScopeLogs.log_records`` field header of an ``n``-byte record."""
    return b"\x12" + varint(n)


def _encode_into(buf: bytearray, record: Record) -> None:
    """Write the ``LogRecord`` fields of ``record`` into ``buf``.

    The common shapes (short strings, small non-negative ints) take cached prefixes; anything else
    takes the general path.
    """
    if record.time_ns:
        buf += _pack_tag_fixed64(0x09, record.time_ns & _U64)
    if record.severity_number or record.severity_text:
        buf += severity_fields(record.severity_number, record.severity_text)
    body = record.body
    if type(body) is str:
        vb = body.encode("utf-8", "replace")
        buf += body_prefix(len(vb))
        buf += vb
    else:
        buf += _len_field(b"\x2a", encode_any_value(body))
    shared = record.shared
    if shared.items:
        buf += shared.encoded(_log_attributes)
    attributes = record.attributes
    if attributes:
        for key, value in attributes.items():
            kind = type(value)
            if kind is str:
                vb = value.encode("utf-8", "replace")  # type: ignore[union-attr]
                n = len(vb)
                prefix = _STR_ATTR_PREFIX.get((key, n)) or _str_attr_prefix(key, n)
                if prefix is not None:
                    buf += prefix
                    buf += vb
                    continue
            elif kind is int and 0 <= value < 0x8000000000000000:  # type: ignore[operator]
                vb = varint(value)  # type: ignore[arg-type]
                buf += _INT_ATTR_PREFIX.get((key, len(vb))) or int_attribute_prefix(key, len(vb))
                buf += vb
                continue
            elif value is None:
                continue
            buf += _len_field(b"\x32", encode_key_value(key, value))
    ub = record.uid.encode("utf-8", "replace")
    n = len(ub)
    if n < 100:
        buf += _UID_PREFIX[n]
        buf += ub
    else:
        buf += _len_field(b"\x32", _UID_KEY_BYTES + _len_field(b"\x12", _len_field(b"\x0a", ub)))
    buf += observed_field(record.observed_ns)
    if record.event_name:
        buf += _cached_len_field(_EVENT_NAME, b"\x62", record.event_name)


def encode_log_record(record: Record) -> bytes:
    """Encode one ``LogRecord`` message body; ``record.uid`` becomes ``log.record.uid``."""
    buf = bytearray()
    _encode_into(buf, record)
    return bytes(buf)


def encode_framed_log_record(record: Record) -> bytes:
    """:func:`encode_log_record` already framed as a ``ScopeLogs.log_records`` field (one copy less)."""
    buf = bytearray()
    _encode_into(buf, record)
    return frame_header(len(buf)) + buf


def uid_of_framed(framed: bytes) -> str:
    """The ``log.record.uid`` of a record :func:`encode_framed_log_record` made ("" if it has none).

    Delivery keeps only the encoded bytes of queued records; this reads a uid back for the rare
    record the collector refuses, so no uid string is held per queued record.
    """
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    _, start = _read_varint(framed, 1)
    record = LogRecord.FromString(framed[start:])
    return next((kv.value.string_value for kv in record.attributes if kv.key == UID_KEY), "")


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def frame_log_record(encoded: bytes) -> bytes:
    """Wrap an encoded ``LogRecord`` as field 2 (``log_records``) of ``ScopeLogs``."""
    return _len_field(b"\x12", encoded)


def encode_resource(attributes: Attributes) -> bytes:
    """Encode ``ResourceLogs.resource`` (field 1) from ``attributes``; cached on the object."""
    return _len_field(b"\x0a", attributes.encoded(_resource_attributes))


def encode_scope(name: str, version: str) -> bytes:
    """Encode ``ScopeLogs.scope`` (field 1)."""
    scope = _len_field(b"\x0a", name.encode("utf-8", "replace")) if name else b""
    if version:
        scope += _len_field(b"\x12", version.encode("utf-8", "replace"))
    return _len_field(b"\x0a", scope)


def assemble_request(groups: Iterable[tuple[bytes, bytes, Sequence[bytes]]]) -> bytes:
    """Build an ``ExportLogsServiceRequest`` from ``(resource, scope, framed_records)`` groups.

    ``resource`` and ``scope`` are what :func:`encode_resource` and :func:`encode_scope` return;
    each group becomes one ``ResourceLogs`` with one ``ScopeLogs``.
    """
    out: list[bytes] = []
    for resource, scope, framed in groups:
        scope_logs = scope + b"".join(framed)
        resource_logs = resource + _len_field(b"\x12", scope_logs)
        out.append(_len_field(b"\x0a", resource_logs))
    return b"".join(out)


class OtlpEncoder:
    """Encodes records into requests; a resource is encoded once (cached on its Attributes)."""

    def __init__(self, scope_name: str = SCOPE_NAME, scope_version: str = "") -> None:
        self.scope = encode_scope(scope_name, scope_version)

    def resource(self, resource: Attributes) -> bytes:
        """The encoded ``resource`` field of ``resource``."""
        return encode_resource(resource)

    def assemble(self, by_resource: Mapping[Attributes, Sequence[bytes]]) -> bytes:
        """Build a request from framed records grouped by resource."""
        return assemble_request((self.resource(r), self.scope, framed) for r, framed in by_resource.items())

    def encode(self, records: Iterable[Record]) -> bytes:
        """Encode ``records`` into one request: a ``ResourceLogs`` per distinct resource, in order."""
        by_resource: dict[Attributes, list[bytes]] = {}
        for record in records:
            framed = encode_framed_log_record(record)
            group = by_resource.get(record.resource)
            if group is None:
                by_resource[record.resource] = [framed]
            else:
                group.append(framed)
        return self.assemble(by_resource)


def encode_export_request(records: Sequence[Record], scope_name: str = SCOPE_NAME, scope_version: str = "") -> bytes:
    """Encode ``records`` as one ``ExportLogsServiceRequest`` (see :class:`OtlpEncoder`)."""
    return OtlpEncoder(scope_name, scope_version).encode(records)


def encoded_size(record: Record) -> int:
    """Bytes ``record`` takes in a request (exact; the pipeline uses the encoding itself)."""
    return len(encode_framed_log_record(record))


def any_value_to_python(value: Any) -> Any:
    """An opentelemetry-proto ``AnyValue`` as str/bool/int/float/bytes/list/dict (None if unset).

    The decoding twin of what this module encodes: for tests, the console and anyone reading
    requests back.
    """
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)
