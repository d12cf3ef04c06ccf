"""The self-telemetry listener: /metrics, /healthz, /readyz, its lifecycle, and readiness (Health)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Mapping

import pytest

from collector_plugin.config import TelemetryConfig, parse_config
from collector_plugin.config import parse_listen_address as parse_listen
from collector_plugin.errors import CheckpointError, ConfigError
from collector_plugin.logs import clear_secrets, register_secret
from collector_plugin.plugins import load_sources
from collector_plugin.telemetry import Health, Metrics, TelemetryServer, WatchedStore

try:
    from telemetry_helpers import get, parse_metrics, sample_key, scrape, total
except ImportError:  # tests/ became a package
    from tests.telemetry_helpers import get, parse_metrics, sample_key, scrape, total


class Readiness:
    """A readiness answer the test can change while the server runs."""

    def __init__(self) -> None:
        self.answer: tuple[bool, str] = (False, "checkpoint store not open")
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.answer


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def server(metrics: Metrics, readiness: Readiness):
    srv = TelemetryServer("127.0.0.1:0", metrics, readiness)
    srv.start()
    yield srv
    srv.stop()


def test_healthz_answers_ok(server: TelemetryServer) -> None:
    assert get(server.url + "/healthz") == (200, "ok\n")


def test_readyz_follows_the_readiness_callback(server: TelemetryServer, readiness: Readiness) -> None:
    status, body = get(server.url + "/readyz")
    assert (status, body.strip()) == (503, "checkpoint store not open")
    readiness.answer = (True, "")
    assert get(server.url + "/readyz") == (200, "ready\n")
    readiness.answer = (False, "last export failed: UNAVAILABLE")
    assert get(server.url + "/readyz") == (503, "last export failed: UNAVAILABLE\n")
    assert readiness.calls == 3


def test_readyz_is_503_when_the_check_raises(metrics: Metrics) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("secret-bearing detail")

    with TelemetryServer("127.0.0.1:0", metrics, broken) as srv:
        status, body = get(srv.url + "/readyz")
    assert status == 503
    assert "RuntimeError" in body and "secret-bearing" not in body


def test_readyz_reason_is_redacted(server: TelemetryServer, readiness: Readiness) -> None:
    register_secret("collector-bearer-token-123")
    try:
        readiness.answer = (False, "export failed: 401 for Bearer collector-bearer-token-123 at https://c/x?token=abc")
        status, body = get(server.url + "/readyz")
    finally:
        clear_secrets()
    assert status == 503
    assert "collector-bearer-token-123" not in body and "token=abc" not in body
    assert body.startswith("export failed: 401")


def test_unknown_path_is_404(server: TelemetryServer) -> None:
    status, body = get(server.url + "/nope")
    assert status == 404 and "/metrics" in body


def test_metrics_move_as_the_receiver_works(server: TelemetryServer, metrics: Metrics) -> None:
    url = server.url + "/metrics"
    before = scrape(url)
    assert before["modelarts_receiver_records_exported_total"] == 0
    assert "modelarts_receiver_target_lag_bytes" not in {k.partition("{")[0] for k in before}

    metrics.api_requests.labels("training_job_logs_preview", "ok").inc(3)
    metrics.api_errors.labels("training_job_logs_preview", "ModelArts.0103").inc()
    metrics.records_exported.inc(250)
    metrics.target_lag_bytes.labels("training_task_logs", "job-1/worker-0").set(4096)
    metrics.queue_records.set(17)
    metrics.export_latency.observe(0.05)
    mid = scrape(url)
    assert mid["modelarts_receiver_records_exported_total"] == 250
    lag_key = sample_key(
        "modelarts_receiver_target_lag_bytes", {"source": "training_task_logs", "target": "job-1/worker-0"}
    )
    assert mid[lag_key] == 4096
    assert mid["modelarts_receiver_queue_records"] == 17
    assert total(mid, "modelarts_receiver_api_requests_total", outcome="ok") == 3
    assert total(mid, "modelarts_receiver_api_errors_total", error_code="ModelArts.0103") == 1
    assert mid["modelarts_receiver_export_latency_seconds_count"] == 1

    metrics.records_exported.inc(50)
    metrics.target_lag_bytes.labels("training_task_logs", "job-1/worker-0").set(0)
    after = scrape(url)
    assert after["modelarts_receiver_records_exported_total"] == 300
    assert after[lag_key] == 0


def test_process_metrics_are_exposed(server: TelemetryServer) -> None:
    samples = scrape(server.url + "/metrics")
    if not any(k.startswith("process_") for k in samples):
        pytest.skip("no /proc here: prometheus_client reports no process metrics")
    assert samples["process_resident_memory_bytes"] > 0


def test_checkpoint_age_grows_from_the_last_commit(server: TelemetryServer, metrics: Metrics) -> None:
    url = server.url + "/metrics"
    assert scrape(url)["modelarts_receiver_checkpoint_age_seconds"] == 0
    metrics.checkpoint_last_commit.set(time.time() - 120)
    age = scrape(url)["modelarts_receiver_checkpoint_age_seconds"]
    assert 119 <= age < 3600


def test_metrics_content_type_is_prometheus_text(server: TelemetryServer) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST

    with urllib.request.urlopen(server.url + "/metrics") as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert CONTENT_TYPE_LATEST.startswith("text/plain")


def test_concurrent_scrapes_are_served(server: TelemetryServer, metrics: Metrics) -> None:
    metrics.records_exported.inc(7)
    results: list[float] = []

    def worker() -> None:
        results.append(scrape(server.url + "/metrics")["modelarts_receiver_records_exported_total"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [7.0] * 8


def test_stop_releases_the_port(metrics: Metrics) -> None:
    srv = TelemetryServer("127.0.0.1:0", metrics, lambda: (True, ""))
    srv.start()
    port = srv.port
    assert port
    srv.stop()
    assert srv.port is None
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    again = TelemetryServer(f"127.0.0.1:{port}", metrics, lambda: (True, ""))
    with again:
        assert get(again.url + "/healthz")[0] == 200


def test_empty_listen_disables_the_server(metrics: Metrics) -> None:
    srv = TelemetryServer("", metrics, lambda: (True, ""))
    srv.start()
    assert not srv.enabled and srv.port is None
    srv.stop()


def test_two_receivers_in_one_process_keep_their_own_figures() -> None:
    first, second = Metrics(), Metrics()
    first.records_exported.inc(5)
    with (
        TelemetryServer("127.0.0.1:0", first, lambda: (True, "")) as a,
        TelemetryServer("127.0.0.1:0", second, lambda: (True, "")) as b,
    ):
        assert scrape(a.url + "/metrics")["modelarts_receiver_records_exported_total"] == 5
        assert scrape(b.url + "/metrics")["modelarts_receiver_records_exported_total"] == 0


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:8888", ("0.0.0.0", 8888)),
        (":9100", ("0.0.0.0", 9100)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:8888", ("::1", 8888)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8888", "host:", "host:port", "host:70000", "[::1]"])
def test_parse_listen_rejects_bad_addresses(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)


def test_ipv6_loopback_when_available(metrics: Metrics) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    srv = TelemetryServer("[::1]:0", metrics, lambda: (True, ""))
    try:
        srv.start()
    except OSError:
        pytest.skip("IPv6 loopback is not configured")
    try:
        assert get(srv.url + "/healthz") == (200, "ok\n")
    finally:
        srv.stop()


def test_parse_metrics_keys_labels_sorted() -> None:
    text = '# TYPE x counter\nx_total{b="2",a="1"} 3.0\n'
    assert parse_metrics(text) == {'x_total{a="1",b="2"}': 3.0}
    assert total(parse_metrics(text), "x_total", a="1") == 3.0
    assert total(parse_metrics(text), "x_total", a="11") == 0.0


# -- readiness from sustained failure (Health)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(metrics: Metrics, clock: Clock) -> Health:
    return Health(metrics, unready_after=300.0, clock=clock)


def refuse(metrics: Metrics, health: Health, clock: Clock, seconds: float) -> None:
    """Every call refused for auth for ``seconds``, sampled each 10 s as a probe would."""
    end = clock.now + seconds
    while clock.now < end:
        metrics.target_errors.labels("training_task_logs", "AuthError").inc()
        health.sample()
        clock.now = min(end, clock.now + 10)
    health.sample()


def test_auth_refused_for_unready_after_makes_it_unready(metrics: Metrics, health: Health, clock: Clock) -> None:
    refuse(metrics, health, clock, 290)
    assert health.check() == (True, "ready")  # a transient refusal never flips it
    refuse(metrics, health, clock, 20)
    ok, reason = health.check()
    assert not ok and "refused for auth" in reason and "credentials" in reason


def test_one_accepted_call_clears_the_auth_clock(metrics: Metrics, health: Health, clock: Clock) -> None:
    refuse(metrics, health, clock, 200)
    metrics.api_requests.labels("/v2/{project_id}/training-jobs/{id}", "ok").inc()
    health.sample()
    refuse(metrics, health, clock, 200)
    assert health.check()[0]  # 200 s since the last success, not 400
    refuse(metrics, health, clock, 150)
    assert not health.check()[0]
    metrics.api_requests.labels("/v2/{project_id}/training-jobs/{id}", "ok").inc()
    assert health.check() == (True, "ready")


def test_other_errors_never_start_the_auth_clock(metrics: Metrics, health: Health, clock: Clock) -> None:
    for _ in range(100):
        metrics.target_errors.labels("training_task_logs", "ApiError").inc()
        health.sample()
        clock.now += 10
    assert health.check() == (True, "ready")


def test_a_checkpoint_store_refusing_commits_makes_it_unready(health: Health, clock: Clock) -> None:
    class ReadOnly:
        def __init__(self) -> None:
            self.fail = True
            self.committed: list[dict[str, str]] = []

        def get(self, key: str) -> str | None:
            return None

        def all(self) -> dict[str, str]:
            return {}

        def commit(self, cursors: Mapping[str, str]) -> None:
            if self.fail:
                raise CheckpointError(
                    "cannot write checkpoint store '/data/cp.db': attempt to write a readonly database"
                )
            self.committed.append(dict(cursors))

        def close(self) -> None:
            pass

    inner = ReadOnly()
    store = WatchedStore(inner, health)
    for _ in range(29):
        with pytest.raises(CheckpointError):
            store.commit({"k": "1"})
        clock.now += 10
    assert health.check() == (True, "ready")  # 280 s of failed commits: not yet
    clock.now += 30
    ok, reason = health.check()
    assert not ok and "checkpoint store not writable" in reason and "readonly database" in reason
    inner.fail = False
    store.commit({"k": "2"})
    assert inner.committed == [{"k": "2"}]
    assert health.check() == (True, "ready")


def test_last_ack_age_follows_records_exported(metrics: Metrics, health: Health, clock: Clock) -> None:
    assert health.last_ack_age() is None
    metrics.records_exported.inc(5)
    health.sample()
    clock.now += 12
    assert health.last_ack_age() == 12
    health.sample()  # nothing new acknowledged: the age keeps growing
    clock.now += 3
    assert health.last_ack_age() == 15


def test_the_listener_samples_health_on_its_own(metrics: Metrics) -> None:
    samples = threading.Event()
    with TelemetryServer("127.0.0.1:0", metrics, lambda: (True, "ready"), tick=samples.set):
        assert samples.wait(10)


@pytest.mark.parametrize(("value", "seconds"), [("5m", 300.0), ("30s", 30.0), (None, 300.0)])
def test_unready_after_is_a_duration_defaulting_to_five_minutes(value: str | None, seconds: float) -> None:
    raw = {} if value is None else {"unready_after": value}
    assert TelemetryConfig.model_validate(raw).unready_after == seconds


@pytest.mark.parametrize("value", ["0s", "-1s", "soon"])
def test_unready_after_must_be_a_positive_duration(value: str) -> None:
    raw = {"modelarts": {"region": "sim-1", "project_id": "p"}, "telemetry": {"unready_after": value}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, load_sources(), environ={})
    assert any(p.startswith("telemetry.unready_after: ") for p in info.value.problems), info.value.problems
