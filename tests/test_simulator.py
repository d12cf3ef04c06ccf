"""The ModelArts simulator, exercised through real HTTP on 127.0.0.1 with signed requests."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector_plugin.auth import AkSkAuth
from collector_plugin.simulator import (
    ALL_QUIRKS,
    CallCount,
    FlowLimit,
    LogGenerator,
    Scenario,
    Simulator,
    decode_range,
    edge_detail,
    serve,
)
from collector_plugin.simulator import server as srv
from collector_plugin.simulator.gateway import Gateway

MULTIBYTE = "aé中文🚀\r\n"  # 1-, 2-, 3- and 4-byte characters plus CRLF


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(Scenario(), quirks=set()) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, auth=AkSkAuth(sim.ak, sim.sk), timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[Simulator, httpx.Client]]:
    """One server for property tests, which run many examples against it."""
    with (
        Simulator(Scenario(), quirks=set()) as s,
        httpx.Client(base_url=s.url, auth=AkSkAuth(s.ak, s.sk), timeout=10) as c,
    ):
        yield s, c


def v2(sim: Simulator, path: str) -> str:
    return f"/v2/{sim.project_id}{path}"


def v1(sim: Simulator, path: str) -> str:
    return f"/v1/{sim.project_id}{path}"


def char_boundaries(data: bytes) -> set[int]:
    return {i for i in range(len(data) + 1) if i == len(data) or (data[i] & 0xC0) != 0x80}


# ---- auth ---------------------------------------------------------------------------------------


def test_signed_request_is_accepted_and_wrong_sk_is_rejected(sim: Simulator, client: httpx.Client) -> None:
    assert client.get(v1(sim, "/services")).status_code == 200
    bad = httpx.get(sim.url + v1(sim, "/services"), auth=AkSkAuth(sim.ak, sim.sk + "x"))
    assert bad.status_code == 401
    assert bad.json()["error_code"] == "APIG.0301"
    assert bad.json()["error_msg"].startswith("Incorrect IAM authentication information")
    assert sim.sk not in bad.text
    unsigned = httpx.get(sim.url + v1(sim, "/services"))
    assert unsigned.status_code == 401


def test_unknown_ak_and_post_body_tampering_are_rejected(sim: Simulator) -> None:
    assert httpx.get(sim.url + v1(sim, "/services"), auth=AkSkAuth("OTHERAK", sim.sk)).status_code == 401
    signed = httpx.Request("POST", sim.url + v2(sim, "/training-job-searches"), json={"limit": 5})
    AkSkAuth(sim.ak, sim.sk).sign(signed)
    headers = {k: v for k, v in signed.headers.items() if k.lower() != "content-length"}
    tampered = httpx.Request("POST", signed.url, headers=headers, content=b'{"limit": 6}')
    with httpx.Client() as c:
        assert c.send(signed).status_code == 200
        assert c.send(tampered).status_code == 401


def test_security_token_is_required_when_configured() -> None:
    with Simulator(Scenario(), security_token="temp-token-1") as sim:
        url = sim.url + v1(sim, "/services")
        assert httpx.get(url, auth=AkSkAuth(sim.ak, sim.sk)).status_code == 401
        assert httpx.get(url, auth=AkSkAuth(sim.ak, sim.sk, security_token="wrong")).status_code == 401
        assert httpx.get(url, auth=AkSkAuth(sim.ak, sim.sk, security_token="temp-token-1")).status_code == 200


def login_body(sim: Simulator, password: str) -> dict[str, Any]:
    user = {"name": sim.username, "password": password, "domain": {"name": sim.domain_name}}
    return {"auth": {"identity": {"methods": ["password"], "password": {"user": user}}, "scope": {}}}


def test_iam_password_login_gives_a_token_that_expires() -> None:
    clock = FakeClock()
    with Simulator(Scenario(), token_ttl=60, clock=clock) as sim:
        bad = httpx.post(sim.url + "/v3/auth/tokens", json=login_body(sim, "nope"))
        assert bad.status_code == 401
        ok = httpx.post(sim.url + "/v3/auth/tokens", json=login_body(sim, sim.password))
        assert ok.status_code == 201
        token = ok.headers["X-Subject-Token"]
        assert ok.json()["token"]["expires_at"].endswith("Z")
        url = sim.url + v1(sim, "/services")
        assert httpx.get(url, headers={"X-Auth-Token": token}).status_code == 200
        assert httpx.get(url, headers={"X-Auth-Token": token + "x"}).status_code == 401
        clock.now += 61
        assert httpx.get(url, headers={"X-Auth-Token": token}).status_code == 401


def test_static_token_and_auth_off() -> None:
    with Simulator(Scenario(), token="static-tok") as sim:
        url = sim.url + v1(sim, "/services")
        assert httpx.get(url, headers={"X-Auth-Token": "static-tok"}).status_code == 200
    with Simulator(Scenario(), require_auth=False) as sim:
        assert httpx.get(sim.url + v1(sim, "/services")).status_code == 200


def test_wrong_project_unknown_route_and_unknown_job(sim: Simulator, client: httpx.Client) -> None:
    assert client.get("/v1/someoneelse/services").status_code == 403
    missing = client.get(v2(sim, "/no-such-api"))
    assert (missing.status_code, missing.json()["error_code"]) == (404, "APIG.0101")
    assert client.get(v2(sim, "/training-jobs/nope")).status_code == 404
    assert client.get(v2(sim, "/training-jobs/nope/events")).status_code == 404
    assert client.get(v2(sim, "/training-jobs/nope/tasks/worker-0/logs/preview")).status_code == 404
    job = sim.scenario.add_job()
    assert client.get(v2(sim, f"/training-jobs/{job.id}/tasks/worker-9/logs/preview")).status_code == 404


# ---- v1 job logs ---------------------------------------------------------------------------------


def test_v1_file_names_and_ranges(sim: Simulator, client: httpx.Client) -> None:
    sim.scenario.add_v1_job(10, 20, {"a.log": b"0123456789", "b.log": b""})
    names = client.get(v1(sim, "/training-jobs/10/versions/20/log/file-names")).json()
    assert names == {"is_success": True, "log_file_list": ["a.log", "b.log"]}
    url = v1(sim, "/training-jobs/10/versions/20/log")

    def get(**params: Any) -> dict[str, Any]:
        r = client.get(url, params={"log_file": "a.log", **params})
        assert r.status_code == 200, r.text
        return dict(r.json())

    assert get(start_byte=2, offset=5) == {"is_success": True, "log": "23456", "end_byte": 7, "log_byte_count": 5}
    assert get(start_byte=8)["log"] == "89"  # default offset 2048, clamped to the size
    assert get(start_byte=8)["end_byte"] == 10
    latest = get(start_byte=-1, offset=3)
    assert (latest["log"], latest["end_byte"]) == ("789", 10)
    back = get(start_byte=6, offset=-4)
    assert (back["log"], back["end_byte"], back["log_byte_count"]) == ("2345", 6, 4)
    past = get(start_byte=50, offset=10)
    assert (past["log"], past["log_byte_count"], past["end_byte"]) == ("", 0, 50)
    assert get(start_byte=0, offset=0)["log"] == ""
    sim.scenario.v1_job(10, 20).append("a.log", "AB")
    assert get(start_byte=10)["log"] == "AB"


@pytest.mark.parametrize(
    "params",
    [
        {"start_byte": -2},
        {"offset": 2049},
        {"offset": -2049},
        {"start_byte": "x"},
        {},  # log_file missing
    ],
)
def test_v1_limits_are_enforced(sim: Simulator, client: httpx.Client, params: dict[str, Any]) -> None:
    sim.scenario.add_v1_job(1, 1, {"a.log": b"x" * 5000})
    query = {"log_file": "a.log", **params} if params else {}
    r = client.get(v1(sim, "/training-jobs/1/versions/1/log"), params=query)
    assert r.status_code == 400
    assert r.json()["is_success"] is False
    assert r.json()["error_code"] == "ModelArts.0105"


def test_v1_offset_limits_accept_the_extremes(sim: Simulator, client: httpx.Client) -> None:
    sim.scenario.add_v1_job(1, 1, {"a.log": b"x" * 5000})
    url = v1(sim, "/training-jobs/1/versions/1/log")
    assert client.get(url, params={"log_file": "a.log", "offset": 2048}).json()["log_byte_count"] == 2048
    r = client.get(url, params={"log_file": "a.log", "start_byte": 3000, "offset": -2048}).json()
    assert (r["log_byte_count"], r["end_byte"]) == (2048, 3000)


def test_v1_unknown_job_and_file(sim: Simulator, client: httpx.Client) -> None:
    sim.scenario.add_v1_job(1, 1, {"a.log": b"x"})
    r = client.get(v1(sim, "/training-jobs/2/versions/1/log"), params={"log_file": "a.log"})
    assert r.status_code == 404 and r.json()["is_success"] is False
    assert client.get(v1(sim, "/training-jobs/1/versions/1/log"), params={"log_file": "z.log"}).status_code == 404


def test_v1_quirks_strings_and_count_field() -> None:
    with Simulator(Scenario(), quirks={"v1_strings", "v1_count_field"}) as sim:
        sim.scenario.add_v1_job(1, 1, {"a.log": b"hello"})
        r = httpx.get(
            sim.url + v1(sim, "/training-jobs/1/versions/1/log"),
            params={"log_file": "a.log"},
            auth=AkSkAuth(sim.ak, sim.sk),
        ).json()
        assert r == {"is_success": True, "log": "hello", "end_byte": "5", "count": "5"}


multibyte_text = st.text(alphabet=st.sampled_from(list(MULTIBYTE)), min_size=1, max_size=600)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=multibyte_text, data=st.data())
def test_v1_split_characters_are_dropped_over_http(
    shared: tuple[Simulator, httpx.Client], text: str, data: st.DataObject
) -> None:
    sim, client = shared
    raw = text.encode()
    start = data.draw(st.integers(0, len(raw)))
    offset = data.draw(st.integers(0, 2048))
    sim.scenario.add_v1_job(7, 7, {"f.log": raw})
    r = client.get(
        v1(sim, "/training-jobs/7/versions/7/log"), params={"log_file": "f.log", "start_byte": start, "offset": offset}
    ).json()
    end = min(start + offset, len(raw))
    bounds = char_boundaries(raw)
    first = min(b for b in bounds if b >= start)
    last = max(b for b in bounds if b <= end)
    expected = raw[first:last].decode() if first < last else ""
    assert r["log"] == expected
    assert r["log_byte_count"] == end - start
    assert r["end_byte"] == (end if start < end else start)


@settings(max_examples=500, deadline=None)
@given(text=multibyte_text, data=st.data())
def test_decode_range_replace_marks_each_cut_edge(text: str, data: st.DataObject) -> None:
    raw = text.encode()
    a = data.draw(st.integers(0, len(raw)))
    b = data.draw(st.integers(a, len(raw)))
    piece = raw[a:b]
    dropped = decode_range(piece, "drop")
    replaced = decode_range(piece, "replace")
    assert "\ufffd" not in dropped
    assert replaced.replace("\ufffd", "") == dropped
    bounds = char_boundaries(raw)
    cuts = (a not in bounds) + (b not in bounds) if piece else 0
    # A range inside one character shows one replacement, not two.
    assert 1 <= replaced.count("\ufffd") <= cuts if cuts else replaced.count("\ufffd") == 0
    # Reading consecutive ranges never duplicates a character and keeps the whole ones.
    assert dropped in text


def test_v1_replace_mode_over_http() -> None:
    with Simulator(Scenario(), v1_split="replace", quirks=set()) as sim:
        sim.scenario.add_v1_job(1, 1, {"a.log": "中文".encode()})
        r = httpx.get(
            sim.url + v1(sim, "/training-jobs/1/versions/1/log"),
            params={"log_file": "a.log", "start_byte": 1, "offset": 4},
            auth=AkSkAuth(sim.ak, sim.sk),
        ).json()
        assert r["log"] == "\ufffd\ufffd"
        assert r["log_byte_count"] == 4


# ---- preview -------------------------------------------------------------------------------------


def test_preview_whole_log_under_the_cap(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job(tasks=("worker-0",))
    job.task("worker-0").append("第一行 🚀\r\nsecond\n")
    r = client.get(v2(sim, f"/training-jobs/{job.id}/tasks/worker-0/logs/preview")).json()
    size = len("第一行 🚀\r\nsecond\n".encode())
    assert r == {"content": "第一行 🚀\r\nsecond\n", "current_size": size, "full_size": size}


@given(text=multibyte_text, cap=st.integers(1, 64))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_preview_cap_keeps_the_latest_bytes_on_a_character_boundary(
    shared: tuple[Simulator, httpx.Client], text: str, cap: int
) -> None:
    sim, client = shared
    sim.preview_cap = cap
    try:
        job = sim.scenario.add_job("preview-job")
        job.task("worker-0").restart(text)
        r = client.get(v2(sim, "/training-jobs/preview-job/tasks/worker-0/logs/preview")).json()
    finally:
        sim.preview_cap = srv.PREVIEW_CAP
    raw = text.encode()
    start = min(b for b in char_boundaries(raw) if b >= max(0, len(raw) - cap))
    assert r["content"] == raw[start:].decode()
    assert r["current_size"] == len(raw) - start <= cap
    assert r["full_size"] == len(raw)


def test_preview_context_quirk_and_restart_shorter() -> None:
    with Simulator(Scenario(), quirks={"preview_context"}) as sim, httpx.Client(auth=AkSkAuth(sim.ak, sim.sk)) as c:
        job = sim.scenario.add_job()
        log = job.task("worker-0")
        sim.scenario.grow(log, 10_000)
        url = sim.url + v2(sim, f"/training-jobs/{job.id}/tasks/worker-0/logs/preview")
        first = c.get(url).json()
        assert "content" not in first and first["full_size"] >= 10_000
        log.restart("restarted\n")
        second = c.get(url).json()
        assert second == {"context": "restarted\n", "current_size": 10, "full_size": 10}
        assert log.restarts == 1


# ---- OBS links -----------------------------------------------------------------------------------


def obs_link(sim: Simulator, client: httpx.Client, job_id: str, task: str = "worker-0") -> str:
    r = client.get(v2(sim, f"/training-jobs/{job_id}/tasks/{task}/logs/url"), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    url = r.json()["obs_url"]
    assert isinstance(url, str)
    return url


def test_obs_ranges_200_206_416_and_live_growth(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job()
    log = job.task("worker-0")
    log.append(b"0123456789")
    url = obs_link(sim, client, job.id)
    assert "Expires=" in url and "Signature=" in url and "AWSAccessKeyId=" in url
    with httpx.Client() as plain:
        full = plain.get(url)
        assert (full.status_code, full.content) == (200, b"0123456789")
        part = plain.get(url, headers={"Range": "bytes=2-4"})
        assert (part.status_code, part.content, part.headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
        tail = plain.get(url, headers={"Range": "bytes=7-"})
        assert (tail.status_code, tail.content) == (206, b"789")
        over = plain.get(url, headers={"Range": "bytes=5-100"})
        assert (over.content, over.headers["Content-Range"]) == (b"56789", "bytes 5-9/10")
        suffix = plain.get(url, headers={"Range": "bytes=-3"})
        assert (suffix.status_code, suffix.content) == (206, b"789")
        beyond = plain.get(url, headers={"Range": "bytes=10-"})
        assert (beyond.status_code, beyond.headers["Content-Range"]) == (416, "bytes */10")
        log.append(b"ABC")
        grown = plain.get(url, headers={"Range": "bytes=10-"})
        assert (grown.status_code, grown.content) == (206, b"ABC")
        log.restart(b"xy")
        assert plain.get(url, headers={"Range": "bytes=10-"}).status_code == 416


def test_obs_link_expires_and_rejects_tampering() -> None:
    clock = FakeClock()
    with Simulator(Scenario(), obs_ttl=1.0, clock=clock) as sim, httpx.Client(auth=AkSkAuth(sim.ak, sim.sk)) as c:
        job = sim.scenario.add_job()
        job.task("worker-0").append(b"data")
        c.base_url = httpx.URL(sim.url)
        url = obs_link(sim, c, job.id)
        assert httpx.get(url).status_code == 200
        tampered = url.replace("worker-0/modelarts", "worker-1/modelarts")
        denied = httpx.get(tampered)
        assert denied.status_code == 403 and b"<Error><Code>" in denied.content
        clock.now += 3
        expired = httpx.get(url, headers={"Range": "bytes=0-"})
        assert expired.status_code == 403
        assert b"AccessDenied" in expired.content
        assert httpx.get(obs_link(sim, c, job.id)).status_code == 200


def test_obs_signature_is_not_kept_in_the_request_log(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job()
    url = obs_link(sim, client, job.id)
    signature = httpx.URL(url).params["Signature"]
    httpx.get(url)
    obs = [r for r in sim.requests if r.endpoint == srv.OBS_OBJECT]
    assert len(obs) == 1 and obs[0].query["Signature"] == "***"
    assert all(signature not in json.dumps(r.query) for r in sim.requests)


# ---- events --------------------------------------------------------------------------------------


def events(client: httpx.Client, sim: Simulator, job_id: str, **params: Any) -> httpx.Response:
    return client.get(v2(sim, f"/training-jobs/{job_id}/events"), params=params)


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"start_time": 1}, {"end_time": 1}, {"order": "up"}, {"pattern": "x" * 257}],
)
def test_events_limits(sim: Simulator, client: httpx.Client, params: dict[str, Any]) -> None:
    job = sim.scenario.add_job()
    r = events(client, sim, job.id, **params)
    assert r.status_code == 400
    assert r.json() == {"error_code": "ModelArts.50004000", "error_msg": r.json()["error_msg"]}


def test_events_paging_by_item_offset_in_both_orders(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job()
    for i in range(23):
        job.add_event(f"event {i}", time_ms=1_700_000_000_000 + (i // 3) * 1000)  # 3 share each second
    late = job.add_event("late", time_ms=1_700_000_000_500)
    assert job.events.index(late) == 3
    seen = []
    for offset in range(0, 30, 7):
        body = events(client, sim, job.id, order="asc", offset=offset, limit=7).json()
        assert (body["total"], body["limit"], body["offset"]) == (24, 7, offset)
        seen += [e["message"] for e in body["events"]]
    assert seen == [e.message for e in job.events]
    desc = events(client, sim, job.id, limit=100).json()
    assert desc["order"] == "desc"
    assert [e["message"] for e in desc["events"]] == seen[::-1]
    assert desc["events"][0]["time"] == "2023-11-15T06:13:27+08:00"


def test_events_page_offset_quirk_and_strings() -> None:
    with Simulator(Scenario(), quirks={"events_page_offset", "events_strings"}) as sim:
        job = sim.scenario.add_job()
        for i in range(10):
            job.add_event(f"e{i}", time_ms=1_000_000 + i)
        with httpx.Client(base_url=sim.url, auth=AkSkAuth(sim.ak, sim.sk)) as c:
            body = events(c, sim, job.id, order="asc", offset=2, limit=3).json()
        assert [e["message"] for e in body["events"]] == ["e6", "e7", "e8"]
        assert (body["total"], body["limit"], body["offset"]) == ("10", "3", "2")


def test_events_filters_and_k8s_spelling(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job()
    job.add_event("pulled image", source="K8S", time_ms=1000)
    job.add_event("Training job failed.", level="Error", source="Job", time_ms=2000)
    job.add_event("[worker-0] training started.", source="Task", time_ms=3000)
    job.add_event("GPU low", level="Warning", source="Task", time_ms=4000)

    def messages(**params: Any) -> list[str]:
        return [e["message"] for e in events(client, sim, job.id, order="asc", **params).json()["events"]]

    assert messages(level="Error") == ["Training job failed."]
    assert messages(source="Task") == ["[worker-0] training started.", "GPU low"]
    assert messages(source="K8S") == ["pulled image"]
    assert messages(pattern="training") == ["[worker-0] training started."]
    assert messages(start_time=2000, end_time=3000) == ["Training job failed.", "[worker-0] training started."]
    body = events(client, sim, job.id, start_time=2000, end_time=3000).json()
    assert body["total"] == 2 and body["start_time"].endswith("+08:00")
    assert events(client, sim, job.id, source="K8S").json()["events"][0]["source"] == "K8S"
    with Simulator(sim.scenario, quirks={"events_k8s_lower"}) as quirky:
        r = httpx.get(
            quirky.url + v2(quirky, f"/training-jobs/{job.id}/events"),
            params={"source": "K8S"},
            auth=AkSkAuth(quirky.ak, quirky.sk),
        ).json()
        assert r["events"][0]["source"] == "K8s"


# ---- services ------------------------------------------------------------------------------------


def test_service_update_goes_from_running_to_success(sim: Simulator, client: httpx.Client) -> None:
    service = sim.scenario.add_service(name="mnist", infer_type="real-time")
    update = service.start_update()
    url = v1(sim, f"/services/{service.id}/logs")
    first = client.get(url).json()
    assert first["service_id"] == service.id and first["service_name"] == "mnist"
    assert [log["result"] for log in first["logs"]] == ["RUNNING"]
    config = first["logs"][0]["config"][0]
    assert isinstance(config["weight"], int) and config["envs"]["DB_PASSWORD"].startswith("s3cr3t-")
    assert "success_num" not in first["logs"][0]
    update.finish("SUCCESS")
    service.start_update()
    second = client.get(url).json()
    assert [log["result"] for log in second["logs"]] == ["SUCCESS", "RUNNING"]
    assert isinstance(second["logs"][0]["update_time"], int)
    with pytest.raises(ValueError):
        update.finish("RUNNING")


def test_edge_service_fields_and_batch_rejected(sim: Simulator, client: httpx.Client) -> None:
    edge = sim.scenario.add_service(infer_type="edge")
    edge.start_update().finish("FAIL", result_detail=edge_detail(4, failed=1))
    log = client.get(v1(sim, f"/services/{edge.id}/logs")).json()["logs"][0]
    assert (log["result"], log["success_num"], log["failed_num"]) == ("FAIL", 3, 1)
    assert [d["result"] for d in log["result_detail"]] == [True, True, True, False]
    assert "weight" not in log["config"][0]
    batch = sim.scenario.add_service(infer_type="batch")
    assert client.get(v1(sim, f"/services/{batch.id}/logs")).status_code == 400
    assert client.get(v1(sim, "/services/missing/logs")).status_code == 404


def test_service_strings_quirk() -> None:
    with Simulator(Scenario(), quirks={"service_strings"}) as sim:
        service = sim.scenario.add_service()
        service.start_update(time_ms=123432423).finish("SUCCESS")
        body = httpx.get(sim.url + v1(sim, f"/services/{service.id}/logs"), auth=AkSkAuth(sim.ak, sim.sk)).json()
        assert body["logs"][0]["update_time"] == "123432423"
        assert body["logs"][0]["config"][0]["weight"] == "100"


def test_service_list_filters_and_pages(sim: Simulator, client: httpx.Client) -> None:
    ids = [sim.scenario.add_service(infer_type=t).id for t in ("real-time", "edge", "batch", "real-time")]
    all_ = client.get(v1(sim, "/services")).json()
    assert all_["total_count"] == 4 and [s["service_id"] for s in all_["services"]] == ids
    rt = client.get(v1(sim, "/services"), params={"infer_type": "real-time"}).json()
    assert [s["service_id"] for s in rt["services"]] == [ids[0], ids[3]]
    page = client.get(v1(sim, "/services"), params={"offset": 1, "limit": 3}).json()
    assert (page["total_count"], page["count"], page["services"][0]["service_id"]) == (4, 1, ids[3])


# ---- discovery -----------------------------------------------------------------------------------


def test_job_details(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job("job-1", name="train", tasks=("worker-0", "worker-1"))
    body = client.get(v2(sim, "/training-jobs/job-1")).json()
    assert body["metadata"]["id"] == "job-1" and body["metadata"]["name"] == "train"
    assert body["status"]["phase"] == "Running"
    assert body["status"]["tasks"] == ["worker-0", "worker-1"]
    assert isinstance(body["status"]["start_time"], int) and isinstance(body["status"]["duration"], int)
    job.phase = "Failed"
    assert client.get(v2(sim, "/training-jobs/job-1")).json()["status"]["phase"] == "Failed"


def test_job_searches_page_index_and_phase_filter(sim: Simulator, client: httpx.Client) -> None:
    for i in range(7):
        job = sim.scenario.add_job(f"job-{i}", name=f"train-{i}", phase="Running" if i % 2 == 0 else "Completed")
        job.create_time = 1000 + i
    url = v2(sim, "/training-job-searches")
    running = {"key": "phase", "operator": "in", "value": ["Running"]}
    page0 = client.post(url, json={"offset": 0, "limit": 3, "filters": [running]}).json()
    page1 = client.post(url, json={"offset": 1, "limit": 3, "filters": [running]}).json()
    assert (page0["total"], page0["count"], page1["count"]) == (4, 3, 1)
    ids = [j["metadata"]["id"] for j in page0["items"] + page1["items"]]
    assert ids == ["job-6", "job-4", "job-2", "job-0"]  # newest first
    like = client.post(url, json={"filters": [{"key": "name", "operator": "like", "value": ["train-3"]}]}).json()
    assert [j["metadata"]["id"] for j in like["items"]] == ["job-3"]
    assert client.post(url, json={"limit": 51}).status_code == 400
    assert client.post(url, json={"offset": -1}).status_code == 400
    assert client.post(url, content=b"not json", headers={"Content-Type": "application/json"}).status_code == 400


# ---- faults --------------------------------------------------------------------------------------


def test_fault_429_with_retry_after_counts_down(sim: Simulator, client: httpx.Client) -> None:
    rule = sim.faults.add(r"/services$", status=429, retry_after=2, times=2)
    for _ in range(2):
        r = client.get(v1(sim, "/services"))
        assert (r.status_code, r.headers["Retry-After"], r.json()["error_code"]) == (429, "2", "APIG.0308")
    assert client.get(v1(sim, "/services")).status_code == 200
    assert rule.fired == 2 and sim.faults.pending == 0
    assert [r.status for r in sim.requests] == [429, 429, 200]


def test_fault_5xx_applies_only_to_matching_paths_and_methods(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.add(r"/training-job-searches", status=503, error_code="ModelArts.6101", method="POST", times=None)
    job = sim.scenario.add_job()
    assert client.get(v2(sim, f"/training-jobs/{job.id}")).status_code == 200
    for _ in range(3):
        r = client.post(v2(sim, "/training-job-searches"), json={})
        assert (r.status_code, r.json()["error_code"]) == (503, "ModelArts.6101")
    sim.faults.clear()
    assert client.post(v2(sim, "/training-job-searches"), json={}).status_code == 200


def test_fault_slow_answer_then_normal(sim: Simulator, client: httpx.Client) -> None:
    rule = sim.faults.slow(r"/services$", seconds=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(sim.url + v1(sim, "/services"), auth=AkSkAuth(sim.ak, sim.sk), timeout=0.1)
    assert rule.fired == 1
    assert client.get(v1(sim, "/services")).status_code == 200


def test_fault_malformed_body(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.malformed(r"/services$")
    r = client.get(v1(sim, "/services"))
    assert r.status_code == 200 and r.content.startswith(b"<html>")
    with pytest.raises(json.JSONDecodeError):
        r.json()
    sim.faults.add(r"/services$", status=200, body=b'{"total_count": 1, "serv')
    with pytest.raises(json.JSONDecodeError):
        client.get(v1(sim, "/services")).json()


def test_fault_reset_closes_the_connection(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.reset(r"/services$")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.get(v1(sim, "/services"))
    assert client.get(v1(sim, "/services")).status_code == 200


def test_faults_apply_to_obs_too(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job()
    job.task("worker-0").append(b"abc")
    url = obs_link(sim, client, job.id)
    sim.faults.add(r"^/obs/", status=503)
    assert httpx.get(url).status_code == 503
    assert httpx.get(url).content == b"abc"


# ---- request log, growth, content, standalone ---------------------------------------------------


def test_request_log_records_endpoint_templates(sim: Simulator, client: httpx.Client) -> None:
    job = sim.scenario.add_job()
    client.get(v2(sim, f"/training-jobs/{job.id}/tasks/worker-0/logs/preview"))
    client.get(v2(sim, f"/training-jobs/{job.id}/events"), params={"limit": 5})
    client.get(v2(sim, "/nothing"))
    assert [r.endpoint for r in sim.requests] == [srv.PREVIEW, srv.EVENTS, srv.UNKNOWN]
    assert sim.requests[1].query == {"limit": "5"}
    assert sim.count(srv.PREVIEW) == 1 and sim.count(status=404) == 1
    sim.reset_requests()
    assert sim.requests == []


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_growth_appends_to_running_tasks_and_adds_events(sim: Simulator) -> None:
    running = sim.scenario.add_job(tasks=("worker-0", "worker-1"))
    done = sim.scenario.add_job(phase="Completed")
    v1job = sim.scenario.add_v1_job(1, 1, {"a.log": b""})
    service = sim.scenario.add_service()
    sim.start_growth(200_000, interval=0.02, event_interval=0.05, update_interval=0.05)
    try:
        assert wait_for(lambda: all(running.task(t).size > 10_000 for t in running.tasks))
        assert wait_for(lambda: v1job.file("a.log").size > 0)
        assert wait_for(lambda: len(running.events) >= 2)
        assert wait_for(lambda: any(u.result != "RUNNING" for u in service.updates))
    finally:
        sim.stop_growth()
    assert done.task("worker-0").size == 0
    assert running.task("worker-0").data.decode().endswith("\n")  # complete lines only


def test_log_generator_is_deterministic_and_realistic() -> None:
    a = LogGenerator(3).chunk(300_000)
    assert a == LogGenerator(3).chunk(300_000)
    assert a != LogGenerator(4).chunk(300_000)
    text = a.decode()
    assert "\r\n" in text and "Traceback (most recent call last):" in text
    assert "[ModelArts Service Log][INFO]" in text and " - WARNING - " in text and " - ERROR - " in text
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert any(ord(ch) > 0xFFFF for ch in text)  # emoji: 4-byte UTF-8
    long_line = LogGenerator(0, long_line_prob=1.0, traceback_prob=0.0).line()
    assert len(long_line.encode()) > 256 * 1024 and long_line.count("\n") == 1


def test_default_scenario_matches_the_brief() -> None:
    sc = Scenario.default(seed=0)
    phases = {j.phase for j in sc.jobs}
    assert {"Running", "Failed", "Completed"} <= phases
    assert all(1 <= len(j.tasks) <= 2 and all(j.task(t).size > 0 for t in j.tasks) for j in sc.jobs)
    assert all(j.events for j in sc.jobs)
    assert sc.v1_jobs and all(sc.v1_jobs[0].file(n).size > 0 for n in sc.v1_jobs[0].file_names)
    kinds = {s.infer_type for s in sc.services}
    assert {"real-time", "edge"} <= kinds
    assert all(s.updates for s in sc.services if s.infer_type != "batch")
    assert [j.id for j in Scenario.default(seed=0).jobs] == [j.id for j in sc.jobs]


def test_unknown_quirk_and_split_mode_are_refused() -> None:
    with pytest.raises(ValueError):
        Simulator(quirks={"nope"})
    with pytest.raises(ValueError):
        Simulator(v1_split="ignore")
    assert {"v1_count_field", "preview_context", "events_page_offset"} <= ALL_QUIRKS


def test_serve_prints_everything_a_receiver_needs() -> None:
    from collector_plugin.config import parse_config
    from collector_plugin.plugins import load_sources

    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(0, "127.0.0.1", 0, 1024), kwargs={"out": out, "stop": stop})
    thread.start()
    try:
        assert wait_for(lambda: "service_update_logs" in out.getvalue() and "checkpoint" in out.getvalue())
        text = out.getvalue()
        sc = Scenario.default(seed=0)
        assert sc.project_id in text and srv.DEFAULT_AK in text and srv.DEFAULT_SK in text
        for job in sc.jobs:
            assert job.id in text
        assert "job 10001 version 20001" in text and "job-worker-0.log" in text
        for service in sc.services:
            assert service.id in text
        snippet = text.split("# receiver config (save as receiver.yaml):\n", 1)[1]
        raw = yaml.safe_load(snippet)
        config = parse_config(raw, load_sources(), environ={})
        assert config.modelarts.project_id == sc.project_id
        endpoint = raw["modelarts"]["endpoint"]
        with httpx.Client(auth=AkSkAuth(raw["modelarts"]["auth"]["ak"], raw["modelarts"]["auth"]["sk"])) as c:
            assert c.get(f"{endpoint}/v1/{sc.project_id}/services").status_code == 200
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_bulk_generation_is_deterministic_and_made_of_generated_lines() -> None:
    a = LogGenerator(5).bulk(2_000_000)
    assert a == LogGenerator(5).bulk(2_000_000) and len(a) >= 2_000_000
    pool_lines = set(LogGenerator(5, long_line_prob=0.0).chunk(3_000_000).splitlines(keepends=True))
    lines = a.splitlines(keepends=True)
    assert a.endswith(b"\n") and len(set(lines)) > 100
    assert all(line in pool_lines or len(line) > 256 * 1024 for line in lines)


def test_stop_drops_kept_alive_connections() -> None:
    sim = Simulator(Scenario(), require_auth=False).start()
    with httpx.Client(base_url=sim.url) as c:
        assert c.get(v1(sim, "/services")).status_code == 200
        sim.stop()
        with pytest.raises(httpx.TransportError):
            c.get(v1(sim, "/services"))


# ---- gateway flow control --------------------------------------------------------------------------


def over_limit_body(calls: int, per: str) -> dict[str, str]:
    return {"error_code": "APIG.0308", "error_msg": f"The request is over ratelimit,limit:{calls},time:1 {per}"}


def test_flow_limit_per_second_refuses_per_credential_until_the_window_frees() -> None:
    clock = FakeClock()
    with Simulator(Scenario(), flow_limit="3/s", token="static-tok", clock=clock) as sim:
        url = sim.url + v1(sim, "/services")
        signed = AkSkAuth(sim.ak, sim.sk)
        assert [httpx.get(url, auth=signed).status_code for _ in range(3)] == [200, 200, 200]
        refused = httpx.get(url, auth=signed)
        assert refused.status_code == 429
        assert refused.json() == over_limit_body(3, "second")
        assert refused.headers["Retry-After"] == "1"
        # Another credential has its own window.
        assert httpx.get(url, headers={"X-Auth-Token": "static-tok"}).status_code == 200
        clock.now += 0.5
        assert httpx.get(url, auth=signed).status_code == 429
        clock.now += 0.5
        assert httpx.get(url, auth=signed).status_code == 200
        assert sim.calls(srv.SERVICES) == CallCount(served=5, refused=2)
        assert sim.count(srv.SERVICES, status=429) == 2


def test_flow_limit_per_minute_says_so_and_retry_after_counts_the_seconds_left() -> None:
    clock = FakeClock()
    with (
        Simulator(Scenario(), flow_limit=FlowLimit(2, "minute"), clock=clock) as sim,
        httpx.Client(base_url=sim.url, auth=AkSkAuth(sim.ak, sim.sk)) as c,
    ):
        job = sim.scenario.add_job()
        assert c.get(v2(sim, f"/training-jobs/{job.id}")).status_code == 200
        clock.now += 10
        assert c.get(v2(sim, f"/training-jobs/{job.id}/events")).status_code == 200
        clock.now += 10
        refused = c.get(v2(sim, f"/training-jobs/{job.id}"))
        assert (refused.status_code, refused.json()) == (429, over_limit_body(2, "minute"))
        assert refused.headers["Retry-After"] == "40"
        assert sim.call_counts() == {
            srv.JOB_DETAILS: CallCount(served=1, refused=1),
            srv.EVENTS: CallCount(served=1, refused=0),
        }
        sim.reset_requests()
        assert sim.call_counts() == {}
        assert c.get(v2(sim, f"/training-jobs/{job.id}")).status_code == 429  # the window outlives a reset


def test_obs_downloads_are_not_flow_controlled() -> None:
    with (
        Simulator(Scenario(), flow_limit="1/min") as sim,
        httpx.Client(base_url=sim.url, auth=AkSkAuth(sim.ak, sim.sk)) as c,
    ):
        job = sim.scenario.add_job()
        job.task("worker-0").append(b"abc")
        url = obs_link(sim, c, job.id)
        assert [httpx.get(url).status_code for _ in range(5)] == [200] * 5
        assert sim.calls(srv.OBS_OBJECT) == CallCount(served=5, refused=0)
        assert c.get(v2(sim, f"/training-jobs/{job.id}/tasks/worker-0/logs/url")).status_code == 429


def test_no_flow_limit_by_default_and_it_can_be_turned_on_while_running(sim: Simulator, client: httpx.Client) -> None:
    assert all(client.get(v1(sim, "/services")).status_code == 200 for _ in range(20))
    sim.flow_limit = FlowLimit(1)
    statuses = [client.get(v1(sim, "/services")).status_code for _ in range(2)]
    assert statuses == [200, 429]
    assert sim.calls(srv.SERVICES) == CallCount(served=21, refused=1)


def test_unauthenticated_calls_do_not_use_up_the_limit() -> None:
    with Simulator(Scenario(), flow_limit="1/min") as sim:
        url = sim.url + v1(sim, "/services")
        assert [httpx.get(url).status_code for _ in range(3)] == [401] * 3
        assert httpx.get(url, auth=AkSkAuth(sim.ak, sim.sk)).status_code == 200


@pytest.mark.parametrize("spec", ["", "10", "0/s", "10/hour", "-1/s", "ten/s"])
def test_bad_flow_limit_is_refused_naming_the_value(spec: str) -> None:
    with pytest.raises(ValueError, match="flow limit"):
        Simulator(flow_limit=spec or " ")


def test_flow_limit_spellings() -> None:
    assert FlowLimit.parse("10/s") == FlowLimit.parse(" 10 / second ") == FlowLimit(10, "second")
    assert FlowLimit.parse("600/min") == FlowLimit.parse("600/MINUTE") == FlowLimit(600, "minute")


def test_simulate_command_refuses_a_bad_flow_limit(capsys: pytest.CaptureFixture[str]) -> None:
    from collector_plugin.cli import main

    assert main(["simulate", "--flow-limit", "fast"]) == 1
    err = capsys.readouterr().err
    assert "--flow-limit" in err and "'fast'" in err


@settings(max_examples=60, deadline=None)
@given(
    calls=st.integers(1, 5),
    per=st.sampled_from(["second", "minute"]),
    gaps=st.lists(st.floats(0, 1.5), min_size=1, max_size=40),
)
def test_gateway_admits_at_most_the_limit_in_any_window(calls: int, per: str, gaps: list[float]) -> None:
    """Against a model: a call is refused exactly when ``calls`` admitted ones lie in the last period."""
    clock = FakeClock()
    limit = FlowLimit(calls, per)
    gateway = Gateway(limit, clock)
    scale = limit.period
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap * scale
        recent = [t for t in admitted if t > clock.now - limit.period]
        reply = gateway.admit("AK", "/x")
        if len(recent) < calls:
            assert reply is None
            admitted.append(clock.now)
        else:
            assert reply is not None and reply.status == 429
            wait = int(reply.headers["Retry-After"])
            assert wait >= 1 and recent[0] + limit.period - clock.now <= wait < recent[0] + limit.period - clock.now + 1
    assert gateway.counts()["/x"] == CallCount(served=len(admitted), refused=len(gaps) - len(admitted))


# ---- OBS lag -------------------------------------------------------------------------------------


def test_obs_object_lags_behind_the_live_log_that_preview_shows() -> None:
    clock = FakeClock()
    scenario = Scenario(clock=clock)
    with (
        Simulator(scenario, obs_lag=30, clock=clock) as sim,
        httpx.Client(base_url=sim.url, auth=AkSkAuth(sim.ak, sim.sk)) as c,
    ):
        job = sim.scenario.add_job()
        log = job.task("worker-0")
        preview = v2(sim, f"/training-jobs/{job.id}/tasks/worker-0/logs/preview")
        log.append(b"old\n")
        assert httpx.get(obs_link(sim, c, job.id)).content == b""  # OBS has not received it yet
        clock.now += 31
        log.append(b"new\n")
        assert c.get(preview).json()["content"] == "old\nnew\n"
        url = obs_link(sim, c, job.id)
        assert httpx.get(url).content == b"old\n"
        beyond = httpx.get(url, headers={"Range": "bytes=4-"})
        assert (beyond.status_code, beyond.headers["Content-Range"]) == (416, "bytes */4")
        part = httpx.get(url, headers={"Range": "bytes=1-"})
        assert (part.status_code, part.content, part.headers["Content-Range"]) == (206, b"ld\n", "bytes 1-3/4")
        clock.now += 30
        assert httpx.get(url).content == b"old\nnew\n"
        sim.obs_lag = 0
        log.append(b"now\n")
        assert httpx.get(url).content == b"old\nnew\nnow\n"


def test_negative_obs_lag_is_refused() -> None:
    with pytest.raises(ValueError, match="obs_lag"):
        Simulator(obs_lag=-1)


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0, 10), st.binary(max_size=20)), max_size=30), probe=st.floats(-5, 400))
def test_task_log_size_at_is_the_size_after_the_last_append_by_then(
    steps: list[tuple[float, bytes]], probe: float
) -> None:
    clock = FakeClock()
    start = clock.now
    log = Scenario(clock=clock).add_job().task("worker-0")
    history = [(start, 0)]
    for gap, data in steps:
        clock.now += gap
        history.append((clock.now, log.append(data)))
    when = start + probe
    sizes = [size for t, size in history if t <= when]
    assert log.size_at(when) == (sizes[-1] if sizes else 0)
    assert log.data[: log.size_at(when)] == b"".join(data for _, data in steps)[: log.size_at(when)]
