"""Structured logs: JSON or text, levels, and secrets that never reach a log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_plugin.logs import NOISY_LOGGERS, REDACTED, clear_secrets, redact, register_secret, setup_logging

SIGNED_OBS = (
    "https://bucket.obs.cn-north-4.myhuaweicloud.com/logs/worker-0.log"
    "?AccessKeyId=HPUAXXXXXXXX&Expires=1767225600&Signature=abc%2Bdef%3D"
)
SIGNED_S3 = (
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&X-Amz-Signature=deadbeef"
)


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    clear_secrets()


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().split("\n") if line]


def test_json_lines_carry_time_level_logger_message_and_extras() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("collector_plugin.scheduler").info(
        "polled %s", "job-1", extra={"target": "training_task_logs/job-1", "records": 12}
    )
    (entry,) = json_lines(out)
    assert entry["level"] == "info"
    assert entry["logger"] == "collector_plugin.scheduler"
    assert entry["message"] == "polled job-1"
    assert entry["target"] == "training_task_logs/job-1" and entry["records"] == 12
    assert isinstance(entry["time"], str) and entry["time"].endswith("Z") and "T" in entry["time"]


def test_auto_is_json_off_a_tty_and_text_on_one() -> None:
    plain = io.StringIO()
    setup_logging("info", "auto", stream=plain)
    logging.getLogger("x").warning("hello")
    assert json.loads(plain.getvalue())["message"] == "hello"

    tty = TtyStream()
    setup_logging("info", "auto", stream=tty)
    logging.getLogger("x").warning("hello", extra={"target": "t1"})
    line = tty.getvalue().strip()
    assert not line.startswith("{")
    assert "WARNING" in line and "x: hello" in line and "target=t1" in line


def test_level_filters_and_is_case_insensitive() -> None:
    out = io.StringIO()
    setup_logging("WARNING", "json", stream=out)
    log = logging.getLogger("collector_plugin.x")
    log.info("quiet")
    log.debug("quieter")
    log.error("loud")
    assert [e["message"] for e in json_lines(out)] == ["loud"]

    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    log.debug("now visible")
    assert [e["level"] for e in json_lines(out)] == ["debug"]


def test_bad_level_and_format_are_rejected() -> None:
    with pytest.raises(ValueError, match="log level"):
        setup_logging("verbose", "json", stream=io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        setup_logging("info", "xml", stream=io.StringIO())  # type: ignore[arg-type]


def test_a_second_setup_replaces_the_first_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "json", stream=first)
    setup_logging("info", "json", stream=second)
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_http_client_chatter_is_kept_at_warning_even_when_debugging() -> None:
    # httpx/httpcore log raw URLs and headers (signed OBS links, X-Subject-Token) at INFO/DEBUG.
    for level in ("info", "debug"):
        out = io.StringIO()
        setup_logging(level, "json", stream=out)
        logging.getLogger("httpx").info("HTTP Request: GET https://example")
        logging.getLogger("httpcore.http11").debug("receive_response_headers.complete")
        assert out.getvalue() == ""
        logging.getLogger("httpx").warning("something is wrong")
        assert "something is wrong" in out.getvalue()


@pytest.mark.parametrize(
    "url",
    [
        SIGNED_OBS,
        SIGNED_S3,
        "https://x.example/a?AWSAccessKeyId=AKIA1&Signature=zz&Expires=1",
        "https://x.example/a?foo=1&token=eyJhbGciOi",
        "https://x.example/a?x-obs-security-token=abc",
        "http://10.0.0.1:9000/a?expires=5&sig=1",
    ],
)
def test_signed_url_queries_are_replaced_whole(url: str) -> None:
    base, _, query = url.partition("?")
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("x").info("downloading %s now", url)
    (entry,) = json_lines(out)
    assert entry["message"] == f"downloading {base}?{REDACTED} now"
    for part in query.split("&"):
        assert part not in out.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("headers {'X-Auth-Token': 'MIIEabc.def-ghi'}", "headers {'X-Auth-Token': '[REDACTED]'}"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "Authorization: Bearer [REDACTED]"),
        ("authorization=Basic dXNlcjpwYXNzd29yZA==", "authorization=Basic [REDACTED]"),
        ("X-Subject-Token: abc123", "X-Subject-Token: [REDACTED]"),
        ('{"x-security-token": "tok"}', '{"x-security-token": "[REDACTED]"}'),
        ("retrying with bearer abcdefghijklmnopqrstuv", "retrying with bearer [REDACTED]"),
    ],
)
def test_credential_headers_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "password login needs username, password and domain_name",
        "author: Tom; authored 3 jobs",
        "modelarts.auth.token: field required",
        "a bearer of news",
    ],
)
def test_ordinary_words_are_not_redacted(text: str) -> None:
    assert redact(text) == text


def test_warnings_are_logged_structured() -> None:
    import warnings

    out = io.StringIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            setup_logging("info", "json", stream=out)
            warnings.warn("deprecated knob", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    (entry,) = json_lines(out)
    assert entry["logger"] == "py.warnings" and "deprecated knob" in str(entry["message"])


def test_plain_queries_are_left_alone() -> None:
    url = "https://modelarts.cn-north-4.myhuaweicloud.com/v2/p/training-jobs?limit=10&offset=20"
    assert redact(f"GET {url}") == f"GET {url}"


def test_registered_secrets_never_appear_anywhere_in_a_record() -> None:
    sk = "Zk9s3cr3tV4lu3ThatMustNotLeak00000000000"
    register_secret(sk)
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    log = logging.getLogger("collector_plugin.auth")
    log.info("signing with " + sk)
    log.info("signing with %s", sk)
    log.info("context", extra={"auth": {"sk": sk}, "note": f"sk={sk}", "items": [sk]})
    try:
        raise RuntimeError(f"refused: {sk} for {SIGNED_OBS}")
    except RuntimeError:
        log.exception("failed")
    text = out.getvalue()
    assert sk not in text
    assert "Signature=" not in text and "AccessKeyId=" not in text
    entries = json_lines(out)
    assert entries[0]["message"] == f"signing with {REDACTED}"
    assert entries[1]["message"] == f"signing with {REDACTED}"
    assert entries[2]["auth"] == {"sk": REDACTED} and entries[2]["items"] == [REDACTED]
    assert "RuntimeError: refused: [REDACTED]" in str(entries[3]["exception"])
    assert "Traceback" in str(entries[3]["exception"])


def test_text_format_redacts_too() -> None:
    register_secret("tok-abcdef-123456")
    out = TtyStream()
    setup_logging("info", "text", stream=out)
    try:
        raise ValueError("bad tok-abcdef-123456")
    except ValueError:
        logging.getLogger("x").exception("got %s", SIGNED_S3, extra={"t": "tok-abcdef-123456"})
    text = out.getvalue()
    assert "tok-abcdef-123456" not in text and "X-Amz" not in text
    assert text.count(REDACTED) >= 3


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    register_secret("")
    register_secret(None)
    assert redact("a stable message about ab") == "a stable message about ab"


def test_other_handlers_see_the_redacted_record(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("another-secret-value")
    setup_logging("info", "json", stream=io.StringIO())
    with caplog.at_level(logging.INFO):
        logging.getLogger("x").info("value %s", "another-secret-value")
    assert "another-secret-value" not in caplog.text


def test_a_broken_format_string_still_logs() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("x").info("%d items", "not-a-number")
    (entry,) = json_lines(out)
    assert "items" in str(entry["message"])


SECRET_ALPHABET = st.characters(whitelist_categories=("Ll", "Nd", "Lo"), whitelist_characters="-_+/=.:@!\"\\'{}$%")


@settings(max_examples=150, deadline=None)
@given(
    secret=st.text(SECRET_ALPHABET, min_size=4, max_size=40),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_property_a_registered_secret_never_survives(secret: str, before: str, after: str) -> None:
    clear_secrets()
    register_secret(secret)
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = logging.getLogger("prop")
    log.info(before + secret + after)
    log.info("%s|%s", before, secret + after, extra={"field": before + secret})
    entries = json_lines(out)
    assert len(entries) == 2
    fixed = ("time", "level", "logger")  # written by the formatter, not from the logged text
    for entry in entries:  # decoded: the raw line may hold escapes such as \u0000 that look like one
        assert all(secret not in str(value) for key, value in entry.items() if key not in fixed)
    assert REDACTED in str(entries[1]["field"])


@settings(max_examples=150, deadline=None)
@given(
    param=st.sampled_from(["Signature", "AWSAccessKeyId", "X-Amz-Signature", "token", "Expires", "X-Obs-Date"]),
    value=st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="%-_."), min_size=1),
    others=st.lists(st.from_regex(r"[a-z]{1,6}=[a-z0-9]{0,6}", fullmatch=True), max_size=3),
    at=st.integers(min_value=0, max_value=3),
)
def test_property_signed_queries_vanish(param: str, value: str, others: list[str], at: int) -> None:
    parts = list(others)
    parts.insert(min(at, len(parts)), f"{param}={value}")
    url = "https://bucket.obs.example.com/a/b.log?" + "&".join(parts)
    cleaned = redact(f"GET {url} done")
    assert cleaned == f"GET https://bucket.obs.example.com/a/b.log?{REDACTED} done"


# ------------------------------------------------------------ what the receiver says it does


async def test_throttling_is_logged_when_it_begins_pauses_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    from collector_plugin.budget import THROTTLE_QUIET, Budget, Priority

    caplog.set_level(logging.INFO, logger="collector_plugin.budget")
    now = [100.0]
    budget = Budget(10.0, 5, clock=lambda: now[0])
    permit = await budget.acquire(Priority.NEW, "t")
    msg = "The request is over ratelimit,limit:8,time:1 second"
    try:
        assert budget.observe(permit, 429, "APIG.0308", msg)
        assert budget.observe(permit, 429, "APIG.0308", msg)  # the same episode: no second "begun"
        assert budget.observe(permit, 429, "APIG.0308", msg, retry_after=5.0)
        assert budget.observe(permit, 429, "APIG.0308", msg, retry_after=5.0)  # already paused
        now[0] += THROTTLE_QUIET / 2
        assert not budget.observe(permit, 200)  # too soon to call it over
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2
        assert lines[0].startswith("API throttling begun: APIG.0308 refused a call; slowing to ")
        assert lines[1] == "API asked to wait (Retry-After 5s): pausing every call"
        now[0] += THROTTLE_QUIET
        assert not budget.observe(permit, 200)
        assert not budget.observe(permit, 200)
        ended = [r.getMessage() for r in caplog.records][2:]
        assert len(ended) == 1 and ended[0].startswith("API throttling ended after 45s (4 calls refused, retried)")
        assert budget.observe(permit, 429, "ModelArts.6101")  # a new episode is news again
        assert caplog.records[-1].getMessage().startswith("API throttling begun: ModelArts.6101")
    finally:
        await budget.aclose()


@pytest.mark.parametrize("collector_down", [False, True])
async def test_shutdown_summary_says_delivered_and_unsent(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, collector_down: bool
) -> None:
    from collector_plugin.config import parse_config
    from collector_plugin.plugins import load_sources
    from collector_plugin.receiver import build_receiver
    from collector_plugin.simulator import Scenario, Simulator
    from collector_plugin.testing import MemoryTransport

    caplog.set_level(logging.INFO, logger="collector_plugin")
    scenario = Scenario()
    scenario.add_job("job-a", tasks=("worker-0",)).task("worker-0").append("line\n" * 30)
    transport = MemoryTransport()
    if collector_down:
        transport.fail_next(10**9)
    with Simulator(scenario) as sim:
        raw = {
            "modelarts": {"endpoint": sim.url, "project_id": sim.project_id, "auth": {"ak": sim.ak, "sk": sim.sk}},
            "sources": {"training_task_logs": {"start_at": "beginning", "jobs": [{"id": "job-a"}]}},
            "checkpoint": {"path": str(tmp_path / "cp.db")},
            "shutdown": {"grace_period": "200ms"},
        }
        registry = load_sources()
        receiver = build_receiver(
            parse_config(raw, registry, environ={}), registry, transport=transport, telemetry=False
        )
        stop = asyncio.Event()
        run = asyncio.create_task(receiver.run(stop))

        async def read_all() -> None:
            while receiver.metrics.records_read.labels("training_task_logs")._value.get() < 30:
                await asyncio.sleep(0.01)
            while not collector_down and len(transport.records) < 30:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(read_all(), 60)  # a guard only
        stop.set()
        assert await asyncio.wait_for(run, 30) is not collector_down
    (stopped,) = [r for r in caplog.records if r.getMessage().startswith("receiver stopped")]
    if collector_down:
        assert stopped.levelno == logging.WARNING
        assert stopped.getMessage().startswith("receiver stopped: 30 records unsent after the 0.2s grace period")
        assert stopped.records_unsent == 30 and stopped.records_delivered == 0  # type: ignore[attr-defined]
    else:
        assert stopped.getMessage() == "receiver stopped: 30 records delivered, none unsent"
    assert stopped.targets == {"training_task_logs": 1}  # type: ignore[attr-defined]
    assert stopped.api_calls > 0  # type: ignore[attr-defined]
    assert not any(sim.sk in str(r.__dict__) for r in caplog.records), "the SK reached a log record"
