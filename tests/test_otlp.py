"""The hand-written OTLP encoding decodes, field for field, to what opentelemetry-proto reads."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from collector_plugin.otlp import (
    OtlpEncoder,
    encode_export_request,
    encode_framed_log_record,
    encode_log_record,
    encoded_size,
    frame_log_record,
    uid_of_framed,
    varint,
)
from collector_plugin.records import Attributes, Record
from collector_plugin.testing import decode_request

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
U64 = st.integers(min_value=0, max_value=2**64 - 1)
texts = st.text(max_size=40)
scalars = st.one_of(
    texts,
    st.booleans(),
    INT64,
    st.floats(allow_nan=False),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
attr_dicts = st.dictionaries(st.text(max_size=16).filter(lambda k: k != "log.record.uid"), values, max_size=5)
services = st.sampled_from(["modelarts-training", "modelarts-inference", "other"])


def as_plain(value: Any) -> Any:
    """What a decoded value should equal: tuples become lists, out-of-range ints their text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return str(value)
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    return value


@st.composite
def records(draw: st.DrawFn, shared_pool: list[Attributes]) -> Record:
    return Record(
        body=draw(values),
        uid=draw(texts),
        observed_ns=draw(U64),
        time_ns=draw(U64),
        severity_number=draw(st.integers(min_value=0, max_value=24)),
        severity_text=draw(texts),
        event_name=draw(texts),
        shared=draw(st.sampled_from(shared_pool)),
        attributes=draw(attr_dicts),
        resource=resource_for(draw(services)),
    )


SHARED_POOL = [
    Attributes(),
    Attributes([("modelarts.job.id", "job-1"), ("modelarts.task.id", "worker-0")]),
    Attributes([("n", 3), ("ratio", 0.5), ("ok", True), ("tags", ["a", "b"]), ("中文", "日志 🚀")]),
]


_RESOURCES: dict[str, Attributes] = {}


def resource_for(service: str) -> Attributes:
    """One shared resource per service, as a source keeps one per target."""
    if service not in _RESOURCES:
        _RESOURCES[service] = Attributes(
            [("service.name", service), ("cloud.provider", "huawei_cloud"), ("k8s.pod.uid", "")]
        )
    return _RESOURCES[service]


def expected(record: Record) -> dict[str, Any]:
    attributes = {k: as_plain(v) for k, v in record.shared.items}
    attributes.update({k: as_plain(v) for k, v in record.attributes.items()})
    attributes["log.record.uid"] = record.uid
    return {
        "body": as_plain(record.body),
        "attributes": attributes,
        "severity_number": record.severity_number,
        "severity_text": record.severity_text,
        "time_unix_nano": record.time_ns,
        "observed_time_unix_nano": record.observed_ns,
        "event_name": record.event_name,
        "resource": record.resource.as_dict(),
        "scope_name": "collector_plugin",
        "scope_version": "1.2.3",
    }


def grouped_by_service(recs: list[Record]) -> list[Record]:
    """The order the request holds: one ResourceLogs per service, in order of first appearance."""
    order: dict[Attributes, list[Record]] = {}
    for r in recs:
        order.setdefault(r.resource, []).append(r)
    return [r for group in order.values() for r in group]


@settings(max_examples=150, deadline=None)
@given(st.lists(records(SHARED_POOL), max_size=6))
def test_request_decodes_field_for_field(recs: list[Record]) -> None:
    payload = encode_export_request(recs, "collector_plugin", "1.2.3")
    decoded = decode_request(payload)
    assert decoded == [expected(r) for r in grouped_by_service(recs)]


@given(values)
def test_body_of_any_type_round_trips(body: Any) -> None:
    record = Record(body=body, uid="u", observed_ns=0)
    [decoded] = decode_request(encode_export_request([record], "s", ""))
    assert decoded["body"] == as_plain(body)


def test_empty_and_zero_fields_decode_as_unset_but_body_stays_a_string() -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    record = Record(body="", uid="", observed_ns=0)
    request = ExportLogsServiceRequest()
    request.ParseFromString(encode_export_request([record], "s", "v"))
    log = request.resource_logs[0].scope_logs[0].log_records[0]
    assert log.body.WhichOneof("value") == "string_value"
    assert log.body.string_value == ""
    assert log.time_unix_nano == 0 and log.observed_time_unix_nano == 0
    assert [kv.key for kv in log.attributes] == ["log.record.uid"]


def test_ints_beyond_int64_are_sent_as_their_text() -> None:
    record = Record(body=2**64, uid="u", observed_ns=1, attributes={"big": -(2**70), "edge": -(2**63)})
    [decoded] = decode_request(encode_export_request([record], "s", ""))
    assert decoded["body"] == str(2**64)
    assert decoded["attributes"]["big"] == str(-(2**70))
    assert decoded["attributes"]["edge"] == -(2**63)


def test_special_floats_round_trip() -> None:
    attrs = {"inf": math.inf, "ninf": -math.inf, "neg0": -0.0, "tiny": 5e-324}
    [decoded] = decode_request(
        encode_export_request([Record(body=1.5, uid="u", observed_ns=1, attributes=attrs)], "s", "")
    )
    assert decoded["attributes"] == {**attrs, "log.record.uid": "u"}
    assert math.copysign(1.0, decoded["attributes"]["neg0"]) == -1.0


def test_shared_attributes_and_resource_are_encoded_once() -> None:
    calls: list[str] = []
    resource = Attributes([("service.name", "modelarts-training")])

    def counting(items: tuple[tuple[str, Any], ...]) -> bytes:
        calls.append(str(items))
        return b"\x0a\x00"

    resource.encoded(counting)  # primes the cache: the encoder must reuse it, never encode again
    shared = Attributes([("modelarts.job.id", "j")])
    encoder = OtlpEncoder("s", "")
    recs = [Record(body=str(i), uid=str(i), observed_ns=1, shared=shared, resource=resource) for i in range(3)]
    first = encoder.encode(recs)
    assert encoder.encode(recs) == first
    assert len(calls) == 1
    shared_bytes = shared.encoded(lambda items: b"not used: already cached")
    assert shared_bytes != b"not used: already cached"


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=20))
def test_varint_matches_protobuf(numbers: list[int]) -> None:
    from google.protobuf.internal import encoder

    for n in numbers:
        out: list[bytes] = []
        encoder._VarintEncoder()(out.append, n, True)
        assert varint(n) == b"".join(out)


def test_encoded_size_is_the_framed_record_length() -> None:
    record = Record(body="x" * 200, uid="u" * 30, observed_ns=5, attributes={"a": "b"})
    assert encoded_size(record) == len(frame_log_record(encode_log_record(record)))
    assert encoded_size(record) > 230


def test_lone_surrogates_are_replaced_not_fatal() -> None:
    record = Record(body="bad \udcff byte", uid="u\ud800", observed_ns=1, attributes={"k": "v\udfff"})
    [decoded] = decode_request(encode_export_request([record], "s", ""))
    assert decoded["body"] == "bad ? byte"
    assert decoded["attributes"] == {"k": "v?", "log.record.uid": "u?"}


@settings(max_examples=60, deadline=None)
@given(
    body=st.text(max_size=300),
    uid=st.text(max_size=150),
    key=st.text(max_size=150),
    text=st.text(max_size=200),
    number=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_length_boundaries_of_the_fast_paths(body: str, uid: str, key: str, text: str, number: int) -> None:
    attributes: dict[str, Any] = {key: text, key + "#n": number}
    record = Record(body=body, uid=uid, observed_ns=1, attributes=attributes)
    [decoded] = decode_request(encode_export_request([record], "s", ""))
    assert decoded["body"] == body
    assert decoded["attributes"] == {**attributes, "log.record.uid": uid}


def test_large_body_and_many_attributes() -> None:
    body = "长" * 20_000
    attributes: dict[str, Any] = {f"k{i}": "v" * i for i in range(300)}
    record = Record(body=body, uid="u" * 5000, observed_ns=1, attributes=attributes)
    [decoded] = decode_request(encode_export_request([record], "s", ""))
    assert decoded["body"] == body
    assert decoded["attributes"] == {**attributes, "log.record.uid": "u" * 5000}


def test_every_length_around_the_one_byte_boundaries() -> None:
    records = []
    for n in range(0, 260):
        records.append(
            Record(
                body="b" * n,
                uid="u" * n,
                observed_ns=n,
                attributes={"k" * (n % 140 + 1): "v" * n, "i" * (n % 130 + 1): (1 << (n % 64)) - 1},
            )
        )
    decoded = decode_request(encode_export_request(records, "s", ""))
    assert [d["body"] for d in decoded] == [r.body for r in records]
    assert [d["attributes"] for d in decoded] == [r.all_attributes() for r in records]


@settings(max_examples=200)
@given(
    uid=st.text(max_size=300),
    body=st.text(max_size=300),
    attributes=st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda k: k != "log.record.uid"),
        st.one_of(st.text(max_size=40), st.integers(0, 2**40)),
    ),
)
def test_a_refused_record_uid_is_read_back_from_its_encoded_bytes(
    uid: str, body: str, attributes: dict[str, Any]
) -> None:
    record = Record(body=body, uid=uid, observed_ns=1, attributes=attributes)
    expected = uid.encode("utf-8", "replace").decode("utf-8")  # as encoding keeps it (lone surrogates replaced)
    assert uid_of_framed(encode_framed_log_record(record)) == expected
