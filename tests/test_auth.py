"""Authentication: AK/SK signing against the official SDK, verification, IAM tokens, make_auth."""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from auth_oracle import sdk_sign
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector_plugin.auth import (
    AkSkAuth,
    IamPasswordAuth,
    TokenAuth,
    canonical_uri,
    make_auth,
    parse_expires_at,
    verify_signature,
)
from collector_plugin.config import AuthConfig
from collector_plugin.errors import ApiError, AuthError, ConfigError
from collector_plugin.sources.modelarts.client import ModelArtsClient

AK = "HPUAEXAMPLEAK0001"
SK = "s3cr3t-SK-value-0123456789abcdef"
TOKEN = "sts-temporary-token-value"
PINNED = datetime(2026, 12, 1, 2, 30, 0, tzinfo=timezone.utc)
HOST = "modelarts.cn-north-4.myhuaweicloud.com"


def signed_request(
    method: str = "GET",
    url: str = f"https://{HOST}/v2/proj/training-jobs/job-1/events",
    *,
    params: Any = None,
    content: bytes = b"",
    headers: dict[str, str] | None = None,
    ak: str = AK,
    sk: str = SK,
    security_token: str | None = None,
    at: datetime = PINNED,
) -> httpx.Request:
    request = httpx.Request(method, url, params=params, content=content, headers=headers)
    AkSkAuth(ak, sk, security_token, clock=at.timestamp).sign(request)
    return request


def verify(
    request: httpx.Request, secrets: dict[str, str] | None = None, *, now: datetime = PINNED, **overrides: Any
) -> str:
    """Run verify_signature on what httpx would put on the wire, with optional tampering."""
    raw_path, _, raw_query = request.url.raw_path.decode("ascii").partition("?")
    parts: dict[str, Any] = {
        "method": request.method,
        "raw_path": raw_path,
        "raw_query": raw_query,
        "headers": dict(request.headers),
        "body": request.content,
    }
    parts.update(overrides)
    known = {AK: SK} if secrets is None else secrets
    return verify_signature(**parts, secret_for=known.get, now=now)


# --- AK/SK against the SDK -----------------------------------------------------------------------

_RAW_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + " ~-_.!$&'()*+,;=:@éü中文😀", max_size=12)
_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


def _segment() -> st.SearchStrategy[str]:
    encoded = _ANY_TEXT.map(lambda text: quote(text, safe=""))  # the SDK's path-parameter encoding
    return st.one_of(encoded, _RAW_SEGMENT).filter(lambda seg: seg not in (".", ".."))


_PATHS = st.tuples(st.lists(_segment(), min_size=1, max_size=5), st.booleans()).map(
    lambda parts: "/" + "/".join(parts[0]) + ("/" if parts[1] else "")
)
_QUERY = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(["limit", "offset", "order", "pattern", "k"]), _ANY_TEXT),
        st.one_of(st.just(""), _ANY_TEXT, st.booleans(), st.integers(-5, 10**6).map(str)),
    ),
    max_size=6,
)
_HEADER_VALUE = st.text(alphabet=string.ascii_letters + string.digits + " -_.,;:=/+", max_size=20)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/json", "application/json;charset=UTF-8", "text/plain", "application/octet-stream"]
        ),
        "X-Language": st.sampled_from(["zh-cn", "en-us"]),
        "X-Custom-Header": _HEADER_VALUE,
        "X_Underscored": _HEADER_VALUE,
    },
)
_BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.dictionaries(_ANY_TEXT, _ANY_TEXT, max_size=3).map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
)
_DATES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda dt: dt.replace(microsecond=0, tzinfo=timezone.utc)
)


def _as_query_string(value: str | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else value


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
    host=st.sampled_from([HOST, "127.0.0.1:8443"]),
    path=_PATHS,
    query=_QUERY,
    headers=_HEADERS,
    body=_BODIES,
    ak=st.text(alphabet=string.ascii_uppercase + string.digits, min_size=1, max_size=20),
    sk=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    security_token=st.one_of(st.none(), st.text(alphabet=string.ascii_letters + "+/=-", min_size=1)),
    at=_DATES,
)
def test_aksk_matches_official_sdk(
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, str | bool]],
    headers: dict[str, str],
    body: bytes,
    ak: str,
    sk: str,
    security_token: str | None,
    at: datetime,
) -> None:
    ours = signed_request(
        method,
        f"https://{host}{path}",
        params=query or None,
        content=body,
        headers=headers,
        ak=ak,
        sk=sk,
        security_token=security_token,
        at=at,
    )
    assert ours.headers["Host"] == host
    sdk_query = [(key, _as_query_string(value)) for key, value in query]
    sdk = sdk_sign(
        method=method,
        host=host,
        path=path,
        query=sdk_query,
        headers=dict(headers),
        body=body,
        ak=ak,
        sk=sk,
        security_token=security_token,
        sdk_date=at.strftime("%Y%m%dT%H%M%SZ"),
    )
    assert ours.headers["X-Sdk-Date"] == sdk.headers["X-Sdk-Date"]
    assert ours.headers["Authorization"] == sdk.headers["Authorization"]
    assert ours.headers.get("X-Security-Token") == sdk.headers.get("X-Security-Token")
    assert ours.headers.get("X-Sdk-Content-Sha256") == sdk.headers.get("X-Sdk-Content-Sha256")
    if security_token is not None:
        assert "x-security-token" in ours.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]

    secrets = {ak: sk}
    assert verify(ours, secrets, now=at) == ak
    assert verify_signature(sdk.method, sdk.raw_path, sdk.raw_query, sdk.headers, sdk.body, secrets.get, now=at) == ak


def test_known_signature_vector() -> None:
    """A fixed request whose signature the SDK computes: guards the oracle wiring itself."""
    request = signed_request(
        "POST",
        f"https://{HOST}/v1/p/a b/%2F/中?b=2&a=1&a=&x=a+b",
        content=b'{"k":"v"}',
        headers={"Content-Type": "application/json"},
    )
    sdk = sdk_sign(
        method="POST",
        host=HOST,
        path="/v1/p/a b/%2F/中",
        query=[("b", "2"), ("a", "1"), ("a", ""), ("x", "a b")],
        headers={"Content-Type": "application/json"},
        body=b'{"k":"v"}',
        ak=AK,
        sk=SK,
        security_token=None,
        sdk_date="20261201T023000Z",
    )
    assert request.headers["Authorization"] == sdk.headers["Authorization"]
    assert "SignedHeaders=content-type;host;x-sdk-date," in request.headers["Authorization"]


def test_canonical_uri_like_the_sdk() -> None:
    assert canonical_uri("/v1/a%20b/%2F/%C3%A9~") == "/v1/a%20b///%C3%A9~/"
    assert canonical_uri("/v1/x/") == "/v1/x/"
    assert canonical_uri("/") == "/"


# --- verification --------------------------------------------------------------------------------


def test_verify_accepts_and_names_the_ak() -> None:
    assert verify(signed_request(params={"limit": 10})) == AK


def test_verify_wrong_sk() -> None:
    request = signed_request(sk="some-other-sk")
    with pytest.raises(AuthError, match="signature does not match: check the SK") as caught:
        verify(request)
    assert SK not in str(caught.value) and "some-other-sk" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "tampered"),
    [
        ("raw_path", "/v2/proj/training-jobs/job-2/events"),
        ("raw_query", "limit=11"),
        ("raw_query", "limit=10&limit=11"),
        ("raw_query", ""),
        ("method", "POST"),
        ("body", b'{"limit":100}'),
    ],
)
def test_verify_rejects_tampering(field: str, tampered: Any) -> None:
    request = signed_request(
        "PUT", params={"limit": 10}, content=b'{"limit":10}', headers={"Content-Type": "application/json"}
    )
    assert verify(request) == AK
    with pytest.raises(AuthError, match="signature does not match"):
        verify(request, **{field: tampered})


def test_verify_rejects_tampered_signed_header() -> None:
    request = signed_request(headers={"X-Language": "en-us"})
    headers = dict(request.headers) | {"x-language": "zh-cn"}
    with pytest.raises(AuthError, match="signature does not match"):
        verify(request, headers=headers)


def test_verify_ignores_case_of_header_names() -> None:
    request = signed_request()
    headers = {name.upper(): value for name, value in request.headers.items()}
    assert verify(request, headers=headers) == AK


@pytest.mark.parametrize("skew", [timedelta(minutes=16), -timedelta(minutes=16), timedelta(days=3)])
def test_verify_rejects_stale_or_future_date(skew: timedelta) -> None:
    request = signed_request()
    with pytest.raises(AuthError, match="X-Sdk-Date too far from server time"):
        verify(request, now=PINNED + skew)


@pytest.mark.parametrize("skew", [timedelta(minutes=14), -timedelta(minutes=14), timedelta(0)])
def test_verify_accepts_small_clock_skew(skew: timedelta) -> None:
    assert verify(signed_request(), now=PINNED + skew) == AK


def test_verify_missing_date() -> None:
    request = signed_request()
    headers = {k: v for k, v in request.headers.items() if k != "x-sdk-date"}
    with pytest.raises(AuthError, match="X-Sdk-Date missing"):
        verify(request, headers=headers)


def test_verify_unknown_ak() -> None:
    with pytest.raises(AuthError, match="unknown access key"):
        verify(signed_request(ak="NOBODY"))


def test_verify_unsigned_security_token() -> None:
    request = signed_request()
    headers = dict(request.headers) | {"X-Security-Token": TOKEN}
    with pytest.raises(AuthError, match="X-Security-Token is not signed") as caught:
        verify(request, headers=headers)
    assert TOKEN not in str(caught.value)


def test_verify_signed_security_token_is_bound() -> None:
    request = signed_request(security_token=TOKEN)
    assert verify(request) == AK
    headers = dict(request.headers) | {"x-security-token": "another-token"}
    with pytest.raises(AuthError, match="signature does not match"):
        verify(request, headers=headers)


def test_verify_missing_or_foreign_authorization() -> None:
    request = signed_request()
    headers = {k: v for k, v in request.headers.items() if k != "authorization"}
    with pytest.raises(AuthError, match="Authorization header missing"):
        verify(request, headers=headers)
    with pytest.raises(AuthError, match="Authorization header missing or not SDK-HMAC-SHA256"):
        verify(request, headers=headers | {"Authorization": "Bearer abc"})


def test_unsigned_payload_for_non_json_like_the_sdk() -> None:
    """The SDK does not hash text/plain bodies; a changed body then still verifies."""
    request = signed_request("POST", content=b"hello", headers={"Content-Type": "text/plain"})
    assert request.headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert verify(request, body=b"other") == AK
    headers = {k: v for k, v in request.headers.items() if k != "x-sdk-content-sha256"}
    with pytest.raises(AuthError, match="signed header"):
        verify(request, headers=headers)


async def test_aksk_through_a_client_with_default_headers() -> None:
    """httpx adds Accept-Encoding, Connection, Content-Length: unsigned, and the request verifies."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raw_path, _, raw_query = request.url.raw_path.decode().partition("?")
        verify_signature(
            request.method, raw_path, raw_query, request.headers, request.content, {AK: SK}.get, now=PINNED
        )
        return httpx.Response(200, json={"ok": True})

    auth = AkSkAuth(AK, SK, TOKEN, clock=PINNED.timestamp)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.post(f"https://{HOST}/v1/p/x", params={"q": "a b"}, json={"a": 1})
    assert response.status_code == 200
    signed = seen[0].headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-sdk-date", "x-security-token", "content-type"} <= set(signed)
    assert not {"accept-encoding", "connection", "content-length", "authorization"} & set(signed)


def test_secrets_not_in_repr() -> None:
    assert SK not in repr(AkSkAuth(AK, SK, TOKEN)) and TOKEN not in repr(AkSkAuth(AK, SK, TOKEN))
    assert TOKEN not in repr(TokenAuth(TOKEN))
    assert "pw-secret" not in repr(IamPasswordAuth("https://iam", "user", "pw-secret", "dom", "proj"))


# --- static token --------------------------------------------------------------------------------


def test_token_auth_sets_header() -> None:
    request = httpx.Request("GET", f"https://{HOST}/v1/p")
    flow = TokenAuth(TOKEN).sync_auth_flow(request)
    assert next(flow).headers["X-Auth-Token"] == TOKEN
    with pytest.raises(AuthError):
        TokenAuth("")


# --- IAM password login --------------------------------------------------------------------------

IAM = "https://iam.cn-north-4.myhuaweicloud.com"
PASSWORD = "Pa55-w0rd-secret"


class FakeCloud:
    """IAM and one API endpoint behind one MockTransport; tokens live 24 h on a pinned clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.iam_calls = 0
        self.api_calls = 0
        self.revoked: set[str] = set()
        self.iam_bodies: list[Any] = []
        self.api_tokens: list[str] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.startswith("iam."):
            return await self.login(request)
        self.api_calls += 1
        token = request.headers.get("X-Auth-Token", "")
        self.api_tokens.append(token)
        if not token.startswith("tok-") or token in self.revoked:
            return httpx.Response(401, json={"error_code": "APIG.0307", "error_msg": "token expired"})
        return httpx.Response(200, json={"events": []})

    async def login(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/v3/auth/tokens"
        assert request.url.params.get("nocatalog") == "true"
        body = json.loads(request.content)
        self.iam_bodies.append(body)
        await asyncio.sleep(0.01)  # let concurrent requests pile up behind the lock
        user = body["auth"]["identity"]["password"]["user"]
        if user["password"] != PASSWORD:
            message = f"The username or password is wrong: {user['password']}"
            return httpx.Response(401, json={"error": {"code": 401, "message": message, "title": "Unauthorized"}})
        self.iam_calls += 1
        expires = datetime.fromtimestamp(self.clock() + 86400, timezone.utc)
        return httpx.Response(
            201,
            headers={"X-Subject-Token": f"tok-{self.iam_calls}"},
            json={"token": {"expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "methods": ["password"]}},
        )


def iam_setup(password: str = PASSWORD) -> tuple[FakeCloud, IamPasswordAuth, list[float]]:
    now = [PINNED.timestamp()]
    cloud = FakeCloud(lambda: now[0])
    auth = IamPasswordAuth(
        IAM, "alice", password, "acme", "proj-1", clock=lambda: now[0], transport=httpx.MockTransport(cloud.handle)
    )
    return cloud, auth, now


async def test_iam_login_body_and_token_header() -> None:
    cloud, auth, _ = iam_setup()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle), auth=auth) as client:
        response = await client.get(f"https://{HOST}/v2/proj-1/training-jobs/j/events")
    assert response.status_code == 200
    assert cloud.api_tokens == ["tok-1"]
    assert cloud.iam_bodies == [
        {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"name": "alice", "password": PASSWORD, "domain": {"name": "acme"}}},
                },
                "scope": {"project": {"id": "proj-1"}},
            }
        }
    ]


async def test_iam_one_fetch_for_concurrent_requests() -> None:
    cloud, auth, _ = iam_setup()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle), auth=auth) as client:
        responses = await asyncio.gather(*(client.get(f"https://{HOST}/v1/p/{i}") for i in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert cloud.iam_calls == 1
    assert set(cloud.api_tokens) == {"tok-1"}


async def test_iam_refresh_when_margin_reached() -> None:
    cloud, auth, now = iam_setup()
    start = now[0]
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle), auth=auth) as client:
        await client.get(f"https://{HOST}/v1/p")
        now[0] = start + 86400 - 3600 - 1
        await client.get(f"https://{HOST}/v1/p")
        assert cloud.iam_calls == 1
        now[0] = start + 86400 - 3600 + 1
        await client.get(f"https://{HOST}/v1/p")
        assert cloud.iam_calls == 2
        await client.get(f"https://{HOST}/v1/p")
    assert cloud.iam_calls == 2
    assert cloud.api_tokens == ["tok-1", "tok-1", "tok-2", "tok-2"]


async def test_iam_refetch_after_401_then_retry_once() -> None:
    cloud, auth, _ = iam_setup()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle), auth=auth) as client:
        await client.get(f"https://{HOST}/v1/p")
        cloud.revoked.add("tok-1")
        response = await client.get(f"https://{HOST}/v1/p")
        assert response.status_code == 200
        assert cloud.iam_calls == 2
        assert cloud.api_tokens == ["tok-1", "tok-1", "tok-2"]
        cloud.revoked.add("tok-2")
        cloud.revoked.add("tok-3")
        response = await client.get(f"https://{HOST}/v1/p")
    assert response.status_code == 401
    assert cloud.api_tokens[3:] == ["tok-2", "tok-3"]


async def test_iam_wrong_password_is_auth_error_without_password() -> None:
    wrong = "not-the-password-42"
    cloud, auth, _ = iam_setup(password=wrong)
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle), auth=auth) as client:
        with pytest.raises(AuthError) as caught:
            await client.get(f"https://{HOST}/v1/p")
    message = str(caught.value)
    assert "IAM" in message and "alice" in message and "401" in message
    assert wrong not in message and PASSWORD not in message
    assert cloud.api_calls == 0


async def test_iam_error_reaches_the_api_client() -> None:
    cloud, auth, _ = iam_setup(password="wrong-one")
    client = ModelArtsClient.connect(
        f"https://{HOST}", "proj-1", auth=auth, transport=httpx.MockTransport(cloud.handle)
    )
    async with client:
        with pytest.raises(AuthError, match="alice") as caught:
            await client.request_json("GET", "/v1/proj-1/x", endpoint="/v1/{project_id}/x")
    assert "wrong-one" not in str(caught.value)


def test_iam_sync_use_is_refused() -> None:
    _, auth, _ = iam_setup()
    with httpx.Client(auth=auth) as client, pytest.raises(RuntimeError, match="AsyncClient"):
        client.get(f"https://{HOST}/v1/p")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-01-04T09:05:22.701000Z", datetime(2020, 1, 4, 9, 5, 22, 701000, tzinfo=timezone.utc)),
        ("2020-01-04T17:05:22+08:00", datetime(2020, 1, 4, 9, 5, 22, tzinfo=timezone.utc)),
        ("2020-01-04T09:05:22", datetime(2020, 1, 4, 9, 5, 22, tzinfo=timezone.utc)),
    ],
)
def test_parse_expires_at(text: str, expected: datetime) -> None:
    assert parse_expires_at(text) == pytest.approx(expected.timestamp())


@pytest.mark.parametrize("bad", [None, 12, "", "tomorrow", "2020-13-40T00:00:00Z"])
def test_parse_expires_at_rejects(bad: object) -> None:
    assert parse_expires_at(bad) is None


# --- make_auth -----------------------------------------------------------------------------------


def test_make_auth_aksk_signs_with_the_configured_keys() -> None:
    auth = make_auth(AuthConfig(ak=AK, sk=SK, security_token=TOKEN), region="cn-north-4", project_id="p")
    assert isinstance(auth, AkSkAuth)
    request = httpx.Request("GET", f"https://{HOST}/v1/p")
    auth.sign(request)
    assert request.headers["X-Security-Token"] == TOKEN
    raw_path = request.url.raw_path.decode()
    assert verify_signature("GET", raw_path, "", request.headers, b"", {AK: SK}.get) == AK


def test_make_auth_token() -> None:
    auth = make_auth(AuthConfig(token=TOKEN), region="cn-north-4", project_id="p")
    assert isinstance(auth, TokenAuth)


def test_make_auth_password_default_and_custom_endpoint() -> None:
    cfg = AuthConfig(username="alice", password=PASSWORD, domain_name="acme")
    auth = make_auth(cfg, region="cn-north-4", project_id="p")
    assert isinstance(auth, IamPasswordAuth)
    assert auth.iam_endpoint == "https://iam.cn-north-4.myhuaweicloud.com"
    assert auth.project_id == "p" and auth.username == "alice"
    custom = cfg.model_copy(update={"iam_endpoint": "http://127.0.0.1:5000/"})
    auth = make_auth(custom, region="", project_id="p")
    assert isinstance(auth, IamPasswordAuth) and auth.iam_endpoint == "http://127.0.0.1:5000"
    with pytest.raises(ConfigError, match="iam_endpoint"):
        make_auth(cfg, region="", project_id="p")


@pytest.mark.parametrize(
    ("response", "error", "text"),
    [
        (httpx.Response(503, json={"error": {"message": "busy"}}), ApiError, "busy"),
        (httpx.Response(201, json={"token": {}}), AuthError, "without X-Subject-Token"),
        (httpx.Response(403, json={"error": {"message": "project not allowed"}}), AuthError, "project_id"),
    ],
)
async def test_iam_unusable_answers(response: httpx.Response, error: type[Exception], text: str) -> None:
    auth = IamPasswordAuth(IAM, "alice", PASSWORD, "acme", "p", transport=httpx.MockTransport(lambda r: response))
    with pytest.raises(error, match=text) as caught:
        await auth.token()
    assert PASSWORD not in str(caught.value)
    if isinstance(caught.value, ApiError):
        assert caught.value.retryable


async def test_iam_without_expiry_assumes_a_day() -> None:
    now = [PINNED.timestamp()]
    answer = httpx.Response(201, headers={"X-Subject-Token": "tok-x"}, json={"token": {"methods": ["password"]}})
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answer

    auth = IamPasswordAuth(
        IAM, "alice", PASSWORD, "acme", "p", clock=lambda: now[0], transport=httpx.MockTransport(handler)
    )
    assert await auth.token() == "tok-x"
    now[0] += 86400 - 3600 - 10
    await auth.token()
    assert len(calls) == 1
    now[0] += 20
    await auth.token()
    assert len(calls) == 2
