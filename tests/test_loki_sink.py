"""The Loki stand-in's own rules (tests/loki_sink.py): labels, timestamps, lines, limits, dedup, late acks.

Requests are built with opentelemetry-proto directly, not with our encoder, so these tests check
the sink against Loki's rules and not against the receiver it is meant to judge.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from loki_sink import MAX_LINE_BYTES, LokiSink, LokiView, any_value_string, label_name
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList

RESOURCE = {
    "service.name": "modelarts-training",
    "service.instance.id": "job-1/worker-0",
    "cloud.region": "sim-1",
    "cloud.provider": "huawei_cloud",
    "modelarts.project.id": "p1",
}


def value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=value(x)) for k, x in v.items()]))
    return AnyValue(string_value=v)


def request(*records: dict[str, Any], resource: dict[str, Any] | None = None) -> bytes:
    """One request of one resource; each record a dict of LogRecord fields plus ``attributes``."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for k, v in (RESOURCE if resource is None else resource).items():
        rl.resource.attributes.add(key=k, value=value(v))
    sl = rl.scope_logs.add()
    sl.scope.name = "collector_plugin"
    for fields in records:
        fields = dict(fields)
        attrs = fields.pop("attributes", {})
        body = fields.pop("body", "line")
        rec = sl.log_records.add(**fields)
        rec.body.CopyFrom(value(body))
        for k, v in attrs.items():
            rec.attributes.add(key=k, value=value(v))
    return req.SerializeToString()


def line(offset: int, text: str = "line", observed: int = 1_000, **extra: Any) -> dict[str, Any]:
    return {"body": text, "observed_time_unix_nano": observed, "attributes": {"modelarts.log.offset": offset}, **extra}


def only_stream(view: LokiView) -> tuple[dict[str, str], list[Any]]:
    assert len(view.streams) == 1
    labels, entries = next(iter(view.streams.items()))
    return dict(labels), entries


def test_stream_labels_are_the_default_index_list_and_the_rest_is_metadata() -> None:
    view = LokiView()
    view.push(request(line(0), resource={**RESOURCE, "k8s.pod.name": "p-0", "deployment.environment": "prod"}))
    labels, [entry] = only_stream(view)
    assert labels == {
        "service_name": "modelarts-training",
        "service_instance_id": "job-1/worker-0",
        "cloud_region": "sim-1",
        "k8s_pod_name": "p-0",
        "deployment_environment": "prod",
    }
    assert entry.meta("cloud_provider") == "huawei_cloud"
    assert entry.meta("modelarts_project_id") == "p1"
    assert entry.meta("modelarts_log_offset") == "0"
    assert entry.meta("scope_name") == "collector_plugin"


def test_a_resource_without_service_name_is_unknown_service() -> None:
    view = LokiView()
    view.push(request(line(0), resource={"cloud.region": "r"}))
    assert only_stream(view)[0] == {"service_name": "unknown_service", "cloud_region": "r"}


def test_label_names_are_normalised_as_loki_does() -> None:
    assert label_name("service.instance.id") == "service_instance_id"
    assert label_name("a-b/c") == "a_b_c"
    assert label_name("0day") == "key_0day"
    assert label_name("_x") == "key_x"
    assert label_name("__x") == "__x"


def test_timestamp_is_the_records_time_else_observed_and_observed_is_metadata_only_beside_a_time() -> None:
    view = LokiView()
    view.push(
        request(
            {"body": "timed", "time_unix_nano": 5, "observed_time_unix_nano": 9},
            {"body": "observed only", "observed_time_unix_nano": 7},
            {"body": "neither"},
        )
    )
    _, entries = only_stream(view)
    timed, observed, neither = entries
    assert (timed.timestamp_ns, timed.meta("observed_timestamp")) == (5, "9")
    assert (observed.timestamp_ns, observed.meta("observed_timestamp")) == (7, None)
    assert neither.timestamp_ns > 1_600_000_000 * 10**9  # Loki's receive time


def test_fields_of_a_record_become_metadata() -> None:
    view = LokiView()
    view.push(
        request(
            {
                "body": "e",
                "time_unix_nano": 1,
                "severity_number": 17,
                "severity_text": "Error",
                "event_name": "modelarts.training_job.event",
                "trace_id": bytes(range(16)),
                "span_id": bytes(range(8)),
                "flags": 1,
                "attributes": {"event_name": "shadowed", "nested": {"a": 1, "b": {"c": True}}},
            }
        )
    )
    [entry] = only_stream(view)[1]
    md = dict(entry.metadata)
    assert md["severity_number"] == "17" and md["severity_text"] == "Error"
    assert md["event_name"] == "modelarts.training_job.event"  # the field wins over the attribute
    assert md["trace_id"] == bytes(range(16)).hex() and md["span_id"] == bytes(range(8)).hex()
    assert md["flags"] == "1"
    assert (md["nested_a"], md["nested_b_c"]) == ("1", "true")


def test_a_body_is_rendered_as_pcommon_as_string() -> None:
    assert any_value_string(value({"b": 1.0, "a": ["<x>", 2]} | {"a": "<&>"})) == '{"a":"<&>","b":1}'
    assert any_value_string(value(1e-7)) == "1e-7"
    assert any_value_string(value(1e16)) == "10000000000000000"
    assert any_value_string(value(False)) == "false"
    assert any_value_string(value(-3)) == "-3"
    assert any_value_string(AnyValue(bytes_value=b"\x00\xff")) == "AP8="
    assert any_value_string(AnyValue()) == ""


def test_identical_entries_collapse_and_any_difference_keeps_both() -> None:
    view = LokiView()
    view.push(request(line(0), line(10, "other")))
    view.push(request(line(0), line(10, "other")))  # a byte-identical replay
    assert (view.received, view.entry_count, view.deduplicated) == (4, 2, 2)
    view.push(request(line(0, observed=2_000)))  # re-read with a new observed time: a second entry
    view.push(request(line(20)))  # the same text and time at another offset: a distinct line
    view.push(request({**line(0), "severity_number": 9}))
    view.push(request(line(0), resource={**RESOURCE, "service.instance.id": "job-1/worker-1"}))  # another stream
    assert view.entry_count == 6 and view.deduplicated == 2
    assert len(view.streams) == 2


def test_lines_over_256000_bytes_are_rejected_and_counted() -> None:
    view = LokiView()
    fits = "é" * (MAX_LINE_BYTES // 2)  # 256,000 bytes in 128,000 characters
    errors = view.push(request(line(0, fits), line(1, fits + "x"), line(2, "small")))
    assert [e.meta("modelarts_log_offset") for e in only_stream(view)[1]] == ["0", "2"]
    assert [(r.reason, r.line_bytes, r.offset) for r in view.rejected] == [("line_too_long", MAX_LINE_BYTES + 1, "1")]
    assert len(errors) == 1 and "line_too_long" in errors[0]


def test_too_much_structured_metadata_is_rejected() -> None:
    view = LokiView()
    many = {f"a{i}": i for i in range(130)}
    big = {"blob": "x" * 64_000}
    view.push(request({**line(0), "attributes": many}, {**line(1), "attributes": big}))
    assert [r.reason for r in view.rejected] == ["structured_metadata_too_many", "structured_metadata_too_large"]
    assert view.entry_count == 0


records = st.builds(
    line,
    offset=st.integers(0, 5),
    text=st.sampled_from(["a", "b", "loss=nan"]),
    observed=st.integers(1, 3),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(records, min_size=1, max_size=6), min_size=1, max_size=8))
def test_the_view_keeps_exactly_the_distinct_entries(batches: list[list[dict[str, Any]]]) -> None:
    """Whatever is pushed, in whatever batches and repetitions: one entry per distinct
    (offset, text, time), the first copy's arrival order kept, every other copy counted."""
    view = LokiView()
    for batch in batches:
        view.push(request(*batch))
    pushed = [
        (r["attributes"]["modelarts.log.offset"], r["body"], r["observed_time_unix_nano"]) for b in batches for r in b
    ]
    distinct = list(dict.fromkeys(pushed))
    entries = only_stream(view)[1]
    assert [(int(e.meta("modelarts_log_offset") or -1), e.line, e.timestamp_ns) for e in entries] == distinct
    assert view.received == len(pushed)
    assert view.deduplicated == len(pushed) - len(distinct)


def test_http_store_then_acknowledge_late_when_held() -> None:
    with LokiSink() as sink:
        sink.hold()
        answers: list[int] = []

        def post() -> None:
            answers.append(httpx.post(sink.endpoint, content=request(line(0)), timeout=30).status_code)

        poster = threading.Thread(target=post)
        poster.start()
        sink.wait_for(lambda s: s.held == 1, "the request to be stored and held")
        assert sink.view.entry_count == 1 and answers == []  # stored, not acknowledged
        sink.release()
        poster.join(timeout=30)
        assert answers == [200]
        # the sink counts the answer as sent once its handler returns, just after the client read it
        sink.wait_for(lambda s: s.held == 0, "the held count to drop after the answer")
        # hold(after=1): the next request is answered, the one after it held.
        sink.hold(after=1)
        assert httpx.post(sink.endpoint, content=request(line(1)), timeout=30).status_code == 200
        poster = threading.Thread(target=post)
        poster.start()
        sink.wait_for(lambda s: s.held == 1, "the second request to be held")
        sink.release()
        poster.join(timeout=30)
        assert answers == [200, 200]
        assert sink.view.deduplicated == 1  # the re-posted line(0)


def test_http_answers_400_for_a_rejected_line_and_keeps_the_rest() -> None:
    with LokiSink() as sink:
        answer = httpx.post(sink.endpoint, content=request(line(0, "x" * (MAX_LINE_BYTES + 1)), line(1)), timeout=30)
    assert answer.status_code == 400 and "line_too_long" in answer.text
    assert sink.view.entry_count == 1 and len(sink.view.rejected) == 1


def test_ack_delay_stores_first_and_answers_later() -> None:
    with LokiSink(ack_delay=3.0) as sink:
        answers: list[int] = []
        poster = threading.Thread(
            target=lambda: answers.append(httpx.post(sink.endpoint, content=request(line(0)), timeout=30).status_code)
        )
        poster.start()
        sink.wait_for(lambda s: s.held == 1, "the request to be stored, its answer delayed")
        assert sink.view.entry_count == 1 and answers == []
        poster.join(timeout=30)
        assert answers == [200]
        # the sink counts the answer as sent once its handler returns, just after the client read it
        sink.wait_for(lambda s: s.held == 0, "the held count to drop after the answer")
