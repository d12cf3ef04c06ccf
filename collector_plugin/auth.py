"""Credentials for the ModelArts API, as ``httpx.Auth`` classes.

- :class:`AkSkAuth` signs every request with ``SDK-HMAC-SHA256``, byte for byte as the official
  SDK's ``huaweicloudsdkcore.signer.Signer`` does, so the API gateway accepts it.
- :func:`verify_signature` is the server side of the same scheme (for the simulator); it shares
  :func:`canonical_request` with the signer, so the two cannot drift apart.
- :class:`TokenAuth` sends a fixed IAM token; :class:`IamPasswordAuth` logs in to IAM with a
  password and keeps the token fresh.
- :func:`make_auth` picks one of them from the config.

No message, log line or ``repr`` here carries an SK, token, password or signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

import httpx

from collector_plugin.config import AuthConfig, iam_endpoint
from collector_plugin.config import default_iam_endpoint as default_iam_endpoint  # re-exported: its old home
from collector_plugin.errors import ApiError, AuthError
from collector_plugin.logs import register_secret

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
HEADER_DATE = "X-Sdk-Date"
HEADER_SECURITY_TOKEN = "X-Security-Token"
HEADER_CONTENT_SHA256 = "X-Sdk-Content-Sha256"
HEADER_AUTH_TOKEN = "X-Auth-Token"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_MAX_SKEW = 900.0
DEFAULT_REFRESH_MARGIN = 3600.0
DEFAULT_TOKEN_LIFETIME = 24 * 3600.0
IAM_TOKENS_PATH = "/v3/auth/tokens"

# Headers a proxy or the transport may add, drop or rewrite: signing them would break requests
# for no gain (the body is covered by its hash, the rest never reaches the application).
UNSIGNED_HEADERS = frozenset(
    {
        "authorization",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
        "accept-encoding",
    }
)

_AUTHORIZATION_FIELDS = re.compile(r"^\s*(\S+)\s+(.*)$", re.DOTALL)
_SIGNATURE_HEX = re.compile(r"^[0-9a-f]{64}$")
_ISO_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$", re.IGNORECASE
)


# --- the shared canonical form -------------------------------------------------------------------


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(raw_path: str) -> str:
    """The SDK's canonical path: decode, split on ``/``, re-encode each segment, end with ``/``.

    Decoding first means ``%2F`` and ``/`` canonicalise alike, exactly as the SDK (and the
    gateway that checks it) treat them.
    """
    path = "/".join(_encode(segment) for segment in unquote(raw_path).split("/"))
    return path if path.endswith("/") else path + "/"


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decode a wire query string into ``(key, value)`` pairs, keeping repeated and empty values.

    ``+`` means a space, as in every form-encoded query (httpx encodes spaces that way).
    """
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote_plus(key), unquote_plus(value)))
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Sort the decoded pairs (as the SDK sorts its parameters) and encode each ``key=value``."""
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in sorted(pairs))


def payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    """SHA-256 of the body; the SDK's ``X-Sdk-Content-Sha256`` value when it sets one."""
    if not body:
        return EMPTY_SHA256
    declared = headers.get(HEADER_CONTENT_SHA256.lower())
    return declared if declared else hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    signed_headers: Iterable[str],
    body: bytes,
) -> str:
    """The text both sides hash: method, path, query, signed headers, their names, body hash.

    ``headers`` must have lower-case names; every name in ``signed_headers`` must be present.
    """
    names = sorted(signed_headers)
    header_lines = "".join(f"{name}:{headers[name].strip()}\n" for name in names)
    return "\n".join(
        (
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(parse_query(raw_query)),
            header_lines,
            ";".join(names),
            payload_hash(headers, body),
        )
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def compute_signature(sk: str, canonical: str, sdk_date: str) -> str:
    return hmac.new(sk.encode("utf-8"), string_to_sign(canonical, sdk_date).encode("utf-8"), hashlib.sha256).hexdigest()


def format_sdk_date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime(DATE_FORMAT)


# --- signing -------------------------------------------------------------------------------------


def _split_target(raw_target: bytes) -> tuple[str, str]:
    path, _, query = raw_target.decode("ascii", errors="replace").partition("?")
    return path, query


def _needs_unsigned_payload(content_type: str | None) -> bool:
    """The SDK signs the body of JSON/BSON only; other types carry ``UNSIGNED-PAYLOAD``."""
    if not content_type:
        return False
    return not content_type.startswith(("application/json", "application/bson"))


class AkSkAuth(httpx.Auth):
    """Sign requests with an access key / secret key (``SDK-HMAC-SHA256``).

    Adds ``X-Sdk-Date``, ``Authorization`` and, with temporary credentials, a signed
    ``X-Security-Token``. Every header except transport ones (:data:`UNSIGNED_HEADERS`) is
    signed. As in the SDK, a body whose ``Content-Type`` is neither JSON nor BSON is sent with
    ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD`` instead of its hash. ``clock`` returns epoch
    seconds, so tests can pin the date.
    """

    requires_request_body = True

    def __init__(
        self,
        ak: str,
        sk: str,
        security_token: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ak or not sk:
            raise AuthError("AK/SK signing needs both an access key and a secret key")
        self.ak = ak
        self._sk = sk
        self._security_token = security_token or None
        self._clock = clock

    def __repr__(self) -> str:
        temporary = ", temporary" if self._security_token else ""
        return f"AkSkAuth(ak={self.ak!r}{temporary})"

    def sign(self, request: httpx.Request) -> None:
        """Add the date, token and ``Authorization`` headers to ``request`` in place."""
        request.headers[HEADER_DATE] = sdk_date = format_sdk_date(self._clock())
        if self._security_token is not None:
            request.headers[HEADER_SECURITY_TOKEN] = self._security_token
        if _needs_unsigned_payload(request.headers.get("content-type")):
            request.headers[HEADER_CONTENT_SHA256] = UNSIGNED_PAYLOAD
        request.headers.pop("authorization", None)
        headers = {name: request.headers[name] for name in request.headers}
        signed = sorted(name for name in headers if "_" not in name and name not in UNSIGNED_HEADERS)
        raw_path, raw_query = _split_target(request.url.raw_path)
        canonical = canonical_request(request.method, raw_path, raw_query, headers, signed, request.content)
        signature = compute_signature(self._sk, canonical, sdk_date)
        request.headers["Authorization"] = (
            f"{ALGORITHM} Access={self.ak}, SignedHeaders={';'.join(signed)}, Signature={signature}"
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request


# --- verification --------------------------------------------------------------------------------


def _parse_authorization(value: str | None) -> tuple[str, list[str], str]:
    """``SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex`` -> (AK, headers, signature)."""
    match = _AUTHORIZATION_FIELDS.match(value or "")
    if match is None or match.group(1) != ALGORITHM:
        raise AuthError(f"Authorization header missing or not {ALGORITHM}")
    fields = {}
    for item in match.group(2).split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            fields[key] = val.strip()
    ak, names, signature = fields.get("Access"), fields.get("SignedHeaders"), fields.get("Signature")
    if not ak or not names or not signature:
        raise AuthError("Authorization header lacks Access, SignedHeaders or Signature")
    return ak, [name.lower() for name in names.split(";") if name], signature.lower()


def _check_date(sdk_date: str | None, now: datetime | None, max_skew: float) -> None:
    if not sdk_date:
        raise AuthError(f"{HEADER_DATE} missing: sign the request with the date")
    try:
        signed_at = datetime.strptime(sdk_date.strip(), DATE_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise AuthError(f"{HEADER_DATE} {sdk_date.strip()!r} is not in {DATE_FORMAT} format") from None
    server_now = now or datetime.now(timezone.utc)
    if server_now.tzinfo is None:
        server_now = server_now.replace(tzinfo=timezone.utc)
    skew = abs((server_now - signed_at).total_seconds())
    if skew > max_skew:
        raise AuthError(f"{HEADER_DATE} too far from server time ({skew:.0f} s > {max_skew:.0f} s): check the clock")


def verify_signature(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
    *,
    now: datetime | None = None,
    max_skew: float = DEFAULT_MAX_SKEW,
) -> str:
    """Check an ``SDK-HMAC-SHA256`` request as the gateway would; return the AK that signed it.

    ``raw_path`` and ``raw_query`` are as received (still percent-encoded); header names are
    matched case-insensitively. Raises :class:`AuthError` saying what is wrong, never with the
    SK or the expected signature.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    ak, signed, signature = _parse_authorization(lowered.get("authorization"))
    sk = secret_for(ak)
    if sk is None:
        raise AuthError(f"unknown access key {ak!r}")
    _check_date(lowered.get(HEADER_DATE.lower()), now, max_skew)
    if HEADER_DATE.lower() not in signed:
        raise AuthError(f"{HEADER_DATE} is not signed")
    if HEADER_SECURITY_TOKEN.lower() in lowered and HEADER_SECURITY_TOKEN.lower() not in signed:
        raise AuthError(f"{HEADER_SECURITY_TOKEN} is not signed")
    missing = [name for name in signed if name not in lowered]
    if missing:
        raise AuthError(f"signed header(s) missing from the request: {', '.join(missing)}")
    signed_values = {name: lowered[name] for name in signed}
    canonical = canonical_request(method, raw_path, raw_query, signed_values, signed, body)
    expected = compute_signature(sk, canonical, lowered[HEADER_DATE.lower()].strip())
    if not _SIGNATURE_HEX.match(signature) or not hmac.compare_digest(expected, signature):
        raise AuthError("signature does not match: check the SK")
    return ak


# --- tokens --------------------------------------------------------------------------------------


class TokenAuth(httpx.Auth):
    """Send a fixed IAM token in ``X-Auth-Token`` (valid 24 h: for short runs and tests)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise AuthError("the IAM token is empty")
        self._token = token

    def __repr__(self) -> str:
        return "TokenAuth()"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[HEADER_AUTH_TOKEN] = self._token
        yield request


def parse_expires_at(value: object) -> float | None:
    """IAM's ``2026-12-02T02:23:54.123000Z`` as epoch seconds; ``None`` if absent or malformed."""
    match = _ISO_TIME.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    zone = match.group(8) or "Z"
    offset = timedelta(0)
    if zone.upper() != "Z":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        offset = -offset if zone[0] == "-" else offset
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:
        return None
    return moment.timestamp() + fraction


def refresh_deadline(now: float, expires_at: float, margin: float) -> float:
    """When to fetch the next token: ``margin`` before expiry.

    Never earlier than halfway through the token's remaining life nor within a minute, so a
    short-lived token or a skewed clock cannot cause one IAM call per request.
    """
    return max(expires_at - margin, now + (expires_at - now) / 2, now + 60.0)


class IamPasswordAuth(httpx.Auth):
    """Log in to IAM with a password; send the token in ``X-Auth-Token`` and keep it fresh.

    The token is fetched on first use, again when less than ``refresh_margin`` seconds of it
    are left, and again (once, for that request) when the API answers 401. A lock makes
    concurrent requests share one fetch. Async only: the receiver's client is async.
    """

    def __init__(
        self,
        iam_endpoint: str,
        username: str,
        password: str,
        domain_name: str,
        project_id: str,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        self.iam_endpoint = iam_endpoint.rstrip("/")
        self.username = username
        self._password = password
        self.domain_name = domain_name
        self.project_id = project_id
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._transport = transport
        self._timeout = timeout
        self._verify = verify
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"IamPasswordAuth(iam_endpoint={self.iam_endpoint!r}, username={self.username!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("IamPasswordAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers[HEADER_AUTH_TOKEN] = token
        response = yield request
        if response.status_code == 401:
            request.headers[HEADER_AUTH_TOKEN] = await self.token(rejected=token)
            yield request

    async def token(self, *, rejected: str | None = None) -> str:
        """A valid token: the cached one unless it is due for refresh or was just ``rejected``."""
        async with self._lock:
            token = self._token
            if token is None or token == rejected or self._clock() >= self._refresh_at:
                token, expires_at = await self._fetch()
                self._token = token
                self._refresh_at = refresh_deadline(self._clock(), expires_at, self.refresh_margin)
            return token

    def _login_body(self) -> dict[str, Any]:
        user = {"name": self.username, "password": self._password, "domain": {"name": self.domain_name}}
        return {
            "auth": {
                "identity": {"methods": ["password"], "password": {"user": user}},
                "scope": {"project": {"id": self.project_id}},
            }
        }

    async def _fetch(self) -> tuple[str, float]:
        """POST the password to IAM; return the token and its expiry (epoch seconds)."""
        url = f"{self.iam_endpoint}{IAM_TOKENS_PATH}"
        body = json.dumps(self._login_body()).encode("utf-8")
        client = httpx.AsyncClient(transport=self._transport, timeout=self._timeout, verify=self._verify)
        try:
            response = await client.post(
                url,
                params={"nocatalog": "true"},
                content=body,
                headers={"Content-Type": "application/json;charset=utf8"},
            )
        finally:
            if self._transport is None:
                await client.aclose()
        if response.status_code >= 400:
            raise self._login_error(response)
        token = response.headers.get("X-Subject-Token")
        if not token:
            raise AuthError(f"IAM {self.iam_endpoint} answered HTTP {response.status_code} without X-Subject-Token")
        register_secret(token)  # the receiver's logs redact it wherever it might show up
        return token, self._expiry(response)

    def _expiry(self, response: httpx.Response) -> float:
        try:
            data = response.json()
        except ValueError:
            data = None
        token = data.get("token") if isinstance(data, dict) else None
        expires_at = parse_expires_at(token.get("expires_at")) if isinstance(token, dict) else None
        return expires_at if expires_at is not None else self._clock() + DEFAULT_TOKEN_LIFETIME

    def _login_error(self, response: httpx.Response) -> AuthError | ApiError:
        """Describe a failed login, naming IAM and the user, never the password."""
        status = response.status_code
        detail = _iam_error_message(response)
        if self._password:
            detail = detail.replace(self._password, "***")
        detail = f": {detail}" if detail else ""
        who = f"user {self.username!r} (domain {self.domain_name!r})"
        if status == 429 or status >= 500:
            return ApiError(
                endpoint=f"IAM {IAM_TOKENS_PATH}",
                status=status,
                error_msg=f"login of {who} failed{detail}",
                retryable=True,
            )
        hint = (
            " check username, password and domain_name" if status == 401 else " check the IAM settings and project_id"
        )
        return AuthError(f"IAM login at {self.iam_endpoint} failed for {who}: HTTP {status}{detail};{hint}")


def _iam_error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("title") or "")[:300]
    if isinstance(data, dict):
        return str(data.get("error_msg") or "")[:300]
    return ""


# --- choosing --------------------------------------------------------------------------------------


def make_auth(
    auth: AuthConfig,
    *,
    region: str,
    project_id: str,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: bool | str = True,
) -> httpx.Auth:
    """Build the ``httpx.Auth`` the config asks for (AK/SK, static token or IAM password)."""
    if auth.method == "aksk":
        assert auth.ak is not None and auth.sk is not None
        token = auth.security_token.get_secret_value() if auth.security_token else None
        return AkSkAuth(auth.ak, auth.sk.get_secret_value(), token)
    if auth.method == "token":
        assert auth.token is not None
        return TokenAuth(auth.token.get_secret_value())
    assert auth.username and auth.password and auth.domain_name
    return IamPasswordAuth(
        iam_endpoint(auth, region),
        auth.username,
        auth.password.get_secret_value(),
        auth.domain_name,
        project_id,
        transport=transport,
        verify=verify,
    )
