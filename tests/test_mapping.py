"""The mapping contract: attributes, severities, uids and redaction."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from collector_plugin.http import ApiClient
from collector_plugin.journal import LogTimes, MemoryJournal
from collector_plugin.lines import Line
from collector_plugin.logs import REDACTED
from collector_plugin.mapping import (
    _LINE_LEVELS,
    LineMapper,
    line_severity,
    parse_resource_env,
    record_uid,
    resource_attributes,
)
from collector_plugin.otlp import encode_framed_log_record
from collector_plugin.records import EMPTY_ATTRIBUTES, Attributes, AttrValue
from collector_plugin.source import Connection, SourceContext
from collector_plugin.sources.modelarts.client import SERVICE_INFERENCE, SERVICE_TRAINING, modelarts_resource
from collector_plugin.sources.modelarts.records import (
    EVENT_SERVICE_UPDATE,
    EVENT_TRAINING_JOB,
    event_job_attributes,
    event_record,
    event_severity,
    normalise_event_source,
    service_update_record,
    task_log_attributes,
    v1_log_attributes,
)


def test_line_severity_tokens() -> None:
    cases = {
        "[ModelArts Service Log][INFO][2021/05/18 14:28:14,207]: done": (9, "INFO"),
        "2024-01-01 10:00:00 [WARNING] low memory": (13, "WARNING"),
        "WARN disk almost full": (13, "WARN"),
        "[ERROR] boom": (17, "ERROR"),
        "ERROR: boom": (17, "ERROR"),
        "CRITICAL out of memory": (21, "CRITICAL"),
        "FATAL: exiting": (21, "FATAL"),
        "DEBUG step=3": (5, "DEBUG"),
        "INFO:root:epoch 3": (9, "INFO"),
        "epoch 3 loss=0.12 errors=0": (0, ""),
        "INFORMATION is not a level": (0, ""),
        "": (0, ""),
    }
    for line, expected in cases.items():
        assert line_severity(line) == expected, line


# The definition, with the lookbehind the fast search checks by hand.
_DEFINITION = re.compile(r"(?<![A-Za-z0-9_])(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)(?![A-Za-z0-9_])")
_PIECES = st.sampled_from(
    ["INFO", "WARN", "WARNING", "ERROR", "DEBUG", "FATAL", "CRITICAL", "INF", "_", "x", " ", "[", "é"]
)


@given(st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=60))
def test_line_severity_is_the_first_level_token_in_the_first_160_characters(pieces: list[str]) -> None:
    line = "".join(pieces)
    match = _DEFINITION.search(line, 0, 160)
    expected = (_LINE_LEVELS[match.group(1)], match.group(1)) if match else (0, "")
    assert line_severity(line) == expected


def test_event_severity_and_source() -> None:
    assert event_severity("Info") == (9, "Info")
    assert event_severity("Warning") == (13, "Warning")
    assert event_severity("Error") == (17, "Error")
    assert event_severity("Notice") == (0, "Notice")
    assert [normalise_event_source(s) for s in ("K8s", "K8S", "k8s", "job", "Task", "Other")] == [
        "K8S",
        "K8S",
        "K8S",
        "Job",
        "Task",
        "Other",
    ]


TRAINING = Attributes([("service.name", SERVICE_TRAINING)])


def test_task_line_record() -> None:
    mapper = LineMapper(
        scope="p",
        source="training_task_logs",
        target="t/j/w",
        shared=task_log_attributes("j", "worker-0", "job-a"),
        resource=TRAINING,
        prefix="modelarts.log",
    )
    record = mapper.record("[ERROR] 训练失败 🔥", 4096, observed_ns=7)
    assert record.body == "[ERROR] 训练失败 🔥"
    assert record.severity_number == 17
    assert record.observed_ns == 7
    assert record.resource is TRAINING
    attrs = record.all_attributes()
    assert attrs["modelarts.training_job.id"] == "j"
    assert attrs["modelarts.training_job.name"] == "job-a"
    assert attrs["modelarts.task.id"] == "worker-0"
    assert attrs["modelarts.log.offset"] == 4096
    assert attrs["log.record.uid"] == record.uid
    # A continued piece inherits the severity of the line it continues.
    piece = mapper.record("rest of the line", 4096 + 262144, observed_ns=8, continued=True)
    assert piece.severity_number == 17 and piece.attributes["modelarts.log.continued"] is True


def test_progress_sample_is_marked_and_a_plain_line_is_not() -> None:
    mapper = LineMapper(
        scope="p",
        source="s",
        target="t",
        shared=task_log_attributes("j", "worker-0"),
        resource=TRAINING,
        prefix="modelarts.log",
    )
    sample = mapper.record(" 40%|####      | 4/10", 12, observed_ns=1, progress=True)
    assert sample.attributes["modelarts.log.progress"] is True
    assert "modelarts.log.progress" not in mapper.record("100%|##########| 10/10", 40, observed_ns=2).attributes


def test_v1_attributes() -> None:
    attrs = v1_log_attributes(10, 11, "log1.log").as_dict()
    assert attrs == {
        "modelarts.training_job.id": "10",
        "modelarts.training_job.version.id": "11",
        "log.file.name": "log1.log",
    }


@given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=1, max_value=10**12))
def test_uid_is_stable_and_offset_sensitive(offset: int, observed: int) -> None:
    def mapper() -> LineMapper:
        return LineMapper(scope="p", source="s", target="t", shared=task_log_attributes("j", "w"), resource=TRAINING)

    first = mapper().record("line", offset, observed_ns=observed)
    again = mapper().record("line", offset, observed_ns=observed + 1)
    other = mapper().record("line", offset + 1, observed_ns=observed)
    assert first.uid == again.uid
    assert first.uid != other.uid
    assert len(first.uid) == 32


def test_uid_parts_are_separated() -> None:
    assert record_uid("a", "bc") != record_uid("ab", "c")


def test_event_record() -> None:
    record = event_record(
        project_id="p",
        shared=event_job_attributes("job-1", "my-job"),
        job_id="job-1",
        time_ns=1_669_449_821_000_000_000,
        level="Error",
        message="Training job failed.",
        source="K8s",
        identity="1669449821000|0",
        observed_ns=5,
    )
    assert record.body == "Training job failed."
    assert record.event_name == EVENT_TRAINING_JOB
    assert (record.severity_number, record.severity_text) == (17, "Error")
    assert record.attributes["modelarts.event.source"] == "K8S"
    assert record.all_attributes()["modelarts.training_job.id"] == "job-1"
    assert record.time_ns == 1_669_449_821_000_000_000


def test_service_update_record_redacts_envs() -> None:
    record = service_update_record(
        project_id="p",
        service_id="svc-1",
        service_name="resnet",
        update_time_ms=1_700_000_000_000,
        result="FAIL",
        config=[
            {"model_name": "resnet", "model_version": "1.0.1", "weight": 70, "envs": {"DB_PASSWORD": "hunter2"}},
            {
                "model_name": "resnet",
                "model_version": "1.0.2",
                "weight": 30,
                "instance_count": 2,
                "specification": "gpu",
            },
        ],
        success_num=1,
        failed_num=2,
        result_detail=[{"node_id": "n1", "node_name": "edge-1", "operation": "deploy", "result": False}],
        observed_ns=9,
    )
    assert "hunter2" not in repr(record)
    assert record.attributes["modelarts.service.config"][0]["envs"] == {"DB_PASSWORD": REDACTED}  # type: ignore[index]
    assert record.event_name == EVENT_SERVICE_UPDATE
    assert record.severity_number == 17 and record.severity_text == "FAIL"
    assert record.resource == EMPTY_ATTRIBUTES  # the reader passes its target's resource
    assert record.time_ns == 1_700_000_000_000 * 1_000_000
    assert "resnet 1.0.1 (weight 70%)" in str(record.body)
    assert "nodes ok 1, failed 2" in str(record.body)
    assert record.all_attributes()["modelarts.service.id"] == "svc-1"
    assert record.attributes["modelarts.service.update.result_detail"] == [
        {"node_id": "n1", "node_name": "edge-1", "operation": "deploy", "result": False}
    ]
    running = service_update_record(
        project_id="p", service_id="svc-1", service_name="resnet", update_time_ms=1, result="RUNNING", observed_ns=1
    )
    assert running.severity_number == 9 and running.uid != record.uid


def test_resource_precedence() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=ml%20ops,cloud.region=ignored"}

    def context(region: str, project: str, configured: dict[str, AttrValue], environ: dict[str, str]) -> SourceContext:
        return SourceContext(
            connections={
                "modelarts": Connection(ApiClient("http://127.0.0.1:9"), {"region": region, "project_id": project})
            },
            resource=lambda a: resource_attributes(a, configured=configured, environ=environ),
        )

    attrs = modelarts_resource(context("cn-north-4", "p1", {"cloud.region": "x"}, env), SERVICE_TRAINING).as_dict()
    assert attrs["service.name"] == "modelarts-training"
    assert attrs["cloud.provider"] == "huawei_cloud"
    assert attrs["cloud.platform"] == "huawei_cloud_modelarts"
    assert attrs["modelarts.project.id"] == "p1"
    assert attrs["team"] == "ml ops"
    assert attrs["cloud.region"] == "x"  # config wins over the environment
    assert "modelarts.training_job.id" not in attrs
    assert parse_resource_env("a=1,,b") == {"a": "1"}
    overridden = modelarts_resource(context("r", "p", {"service.name": "mine"}, {}), SERVICE_INFERENCE).as_dict()
    assert overridden["service.name"] == "mine"


@given(
    size=st.one_of(st.none(), st.integers(0, 2**40)),
    position=st.integers(0, 2**40),
    gaps=st.integers(0, 5),
    observed=st.integers(0, 2**62),
)
def test_complete_record_says_complete_only_when_read_to_the_size_without_gaps(
    size: int | None, position: int, gaps: int, observed: int
) -> None:
    mapper = LineMapper(scope="p", source="s", target="t", shared=EMPTY_ATTRIBUTES, resource=EMPTY_ATTRIBUTES)
    counts = {"bytes_read": position, "records": 3, "gaps": gaps, "restarts": 1, "read_from": 0}
    record = mapper.complete(size=size, position=position, observed_ns=observed, **counts)
    complete = size == position and gaps == 0
    assert record.attributes["log.complete"] is complete
    assert record.event_name == "log.complete" and record.severity_text == ("INFO" if complete else "WARN")
    assert record.attributes.get("log.size") == size and record.observed_ns == record.time_ns == observed
    # The uid is the target's and the size's: other counts or another time give the same one.
    other = mapper.complete(size=size, position=0, observed_ns=observed + 1, **{**counts, "gaps": gaps + 1})
    assert other.uid == record.uid
    assert mapper.complete(size=(size or 0) + 1, position=position, observed_ns=observed, **counts).uid != record.uid


# --- the line path: LineRecords encodes what LineMapper.record and the generic encoder would ---

_TEXT = st.lists(
    st.text(st.characters(codec="utf-8"), max_size=60)
    | st.sampled_from(["INFO", "ERROR ", "xWARN", "\ud800", "é" * 70]),
    max_size=6,
).map("".join)


@st.composite
def _line_runs(draw: st.DrawFn) -> tuple[list[Line], list[tuple[int, int, int]], tuple[int, str]]:
    """Lines in offset order (as an assembler emits them) and the read-time ranges stamped for them."""
    offset = draw(st.integers(0, 1 << 40))
    lines: list[Line] = []
    for _ in range(draw(st.integers(0, 12))):
        offset += draw(st.sampled_from([0, 1, 127, 128, 16_383, 16_384, 1 << 21, 1 << 28, 1 << 35]))
        flags = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
        lines.append(Line(draw(_TEXT), offset, *flags))
    ranges: list[tuple[int, int, int]] = []
    start = draw(st.integers(0, 1 << 41))
    for _ in range(draw(st.integers(0, 5))):
        end = start + draw(st.integers(1, 1 << 36))
        ranges.append((start, end, draw(st.integers(0, 1 << 63))))
        start = end + draw(st.sampled_from([0, 0, 5]))
    before = draw(st.sampled_from([(0, ""), (9, "INFO"), (17, "ERROR")]))
    return lines, ranges, before


def _line_mapper(shared: Attributes) -> LineMapper:
    return LineMapper(
        scope="p",
        source="s",
        target="job/worker-0",
        shared=shared,
        resource=Attributes({"a": "b"}.items()),
        prefix="modelarts.log",
    )


@given(
    _line_runs(),
    st.sampled_from(
        [EMPTY_ATTRIBUTES, task_log_attributes("job", "worker-0", "name"), Attributes({"k" * 200: "v"}.items())]
    ),
)
def test_line_records_encode_and_read_as_the_records_one_by_one_would(
    run: tuple[list[Line], list[tuple[int, int, int]], tuple[int, str]], shared: Attributes
) -> None:
    lines, ranges, before = run
    default = 123_456_789
    times = LogTimes(MemoryJournal(), "k", ranges)
    one_by_one, fused = _line_mapper(shared), _line_mapper(shared)
    one_by_one._last_severity = fused._last_severity = before
    expected = [
        one_by_one.record(
            ln.text,
            ln.offset,
            times.at(ln.offset, default),
            continued=ln.continued,
            partial=ln.partial,
            progress=ln.progress,
        )
        for ln in lines
    ]
    steps = times.steps(lines[0].offset, lines[-1].offset, default) if lines else [(0, default)]
    records = fused.lines(lines, steps)

    assert records.framed() == [encode_framed_log_record(r) for r in expected]
    assert list(records) == expected
    assert [records[i] for i in range(-len(lines), len(lines))] == expected + expected
    assert records[1:3] == expected[1:3]
    assert len(records) == len(expected) and records.resource is fused.resource
    assert fused._last_severity == one_by_one._last_severity  # what a continued piece in the next span inherits


@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 50), st.integers(0, 10**9)), max_size=8),
    st.integers(0, 1200),
    st.integers(0, 400),
)
def test_log_times_steps_give_the_time_at_gives_every_position(
    pieces: list[tuple[int, int, int]], lo: int, width: int
) -> None:
    ranges, start = [], 0
    for gap, size, time_ns in pieces:
        start += gap
        ranges.append((start, start + size, time_ns))
        start += size
    times = LogTimes(MemoryJournal(), "k", ranges)
    steps = times.steps(lo, lo + width, -1)
    assert [p for p, _ in steps] == sorted({p for p, _ in steps}) and steps[0][0] == lo
    for position in range(lo, lo + width + 1):
        assert [t for p, t in steps if p <= position][-1] == times.at(position, -1)
