"""The async HTTP client every source gets: rate-limited, retrying and metered, for any API.

One learned, prioritised budget (:mod:`collector_plugin.budget`: the API's flow control is
found, ``rate_limit`` is only its ceiling) and one concurrency limit per client, shared by every
source that uses it. A throttled call (429, or a code in ``retryable_codes`` such as ModelArts'
``APIG.0308``) waits for budget and is sent again without using up a retry; 5xx and connection
errors are retried with backoff (honouring ``Retry-After``), other 4xx never. Reads of pre-signed
links (OBS) spend no budget. Errors name the endpoint *template* (never a signed URL,
never a signature). Responses are validated with pydantic models owned by the sources; a body
that breaks its model raises :class:`ResponseFormatError` naming the endpoint and the field.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from collector_plugin.backoff import Backoff, parse_retry_after
from collector_plugin.budget import CALL, Budget, Permit, Snapshot
from collector_plugin.errors import ApiError, AuthError, ObsLinkExpired, ResponseFormatError
from collector_plugin.links import AnswerBrokeOff, LinkAnswer, LinkUnreachable, link_client
from collector_plugin.telemetry import Metrics

M = TypeVar("M", bound=BaseModel)


def _error_fields(content: bytes) -> tuple[str, str]:
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    code = body.get("error_code") or body.get("errorCode") or ""
    msg = body.get("error_msg") or body.get("error_message") or body.get("errorMsg") or ""
    return str(code), str(msg)[:500]


def released(response: httpx.Response) -> httpx.Response:
    """``response``, read, with httpx's reference cycle broken (its stream holds it back).

    A read response and its stream point at each other, so only the cyclic GC frees them, and
    with them the request and its body: a catch-up left ~30 MB a second of export payloads
    (and preview answers) for the collector to find. With the cycle broken they go at once.
    """
    response.stream = httpx.ByteStream(b"")
    return response


def api_error(response: httpx.Response, endpoint: str, retryable_codes: frozenset[str] = frozenset()) -> ApiError:
    """Map an error answer to an ApiError, deciding whether a retry may help."""
    return error_answer(
        response.status_code, response.content, response.headers.get("Retry-After"), endpoint, retryable_codes
    )


def error_answer(
    status: int, content: bytes, retry_after: str | None, endpoint: str, retryable_codes: frozenset[str] = frozenset()
) -> ApiError:
    """An ApiError from an error answer's status, body and ``Retry-After``."""
    code, msg = _error_fields(content)
    retryable = status == 429 or status >= 500 or code in retryable_codes
    return ApiError(
        endpoint=endpoint,
        status=status,
        error_code=code,
        error_msg=msg,
        retryable=retryable,
        retry_after=parse_retry_after(retry_after),
    )


def parse_model(model: type[M], data: Any, endpoint: str) -> M:
    """Validate ``data`` against ``model``; name the first bad field in the error."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ResponseFormatError(endpoint, field, first["msg"]) from None


# Sends of one call the gateway may refuse, per allowed attempt, before the poll gives up for now.
THROTTLED_RESENDS = 4


class ApiClient:
    """Async client for one API (``auth`` signs its requests) and for pre-signed links (unsigned)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
        retry: Backoff | None = None,
        rate_limit: float = 20.0,
        burst: int = 40,
        max_concurrency: int = 16,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
        retryable_codes: frozenset[str] = frozenset(),
        headers: Mapping[str, str] | None = None,
        name: str = "default",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retryable_codes = retryable_codes
        self.retry = retry or Backoff()
        self.metrics = metrics or Metrics()
        self.budget = Budget(rate_limit, burst, name=name, metrics=self.metrics)
        self._slots = asyncio.Semaphore(max_concurrency)
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=auth,
            timeout=timeout,
            transport=transport,
            limits=limits,
            verify=verify,
            follow_redirects=False,
            headers=headers,
        )
        self._links = link_client(timeout=timeout, max_connections=max_concurrency, verify=verify, transport=transport)

    async def aclose(self) -> None:
        await self.budget.aclose()
        await self._http.aclose()
        await self._links.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request (signed by the client's auth) with retries; the answer once it is not an error.

        ``endpoint`` is the path template used in metrics and errors (low cardinality, no ids).
        """
        req_headers = dict(headers or {})
        return await self._send_with_retries(
            endpoint,
            lambda: self._http.build_request(method, path, params=params, content=content, headers=req_headers),
        )

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`request` with a JSON body (if any), returning the decoded JSON answer."""
        content = None if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        req_headers = dict(headers or {})
        if content is not None:
            req_headers.setdefault("Content-Type", "application/json")
        response = await self.request(
            method, path, endpoint=endpoint, params=params, content=content, headers=req_headers
        )
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            kind = response.headers.get("content-type", "unknown content type")
            raise ResponseFormatError(
                endpoint, "", f"body is not JSON ({kind}, {len(response.content)} bytes)"
            ) from None

    async def get_model(
        self,
        path: str,
        model: type[M],
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> M:
        data = await self.request_json("GET", path, endpoint=endpoint, params=params, headers=headers)
        return parse_model(model, data, endpoint)

    async def post_model(self, path: str, body: Any, model: type[M], *, endpoint: str) -> M:
        data = await self.request_json("POST", path, endpoint=endpoint, json_body=body)
        return parse_model(model, data, endpoint)

    @asynccontextmanager
    async def stream_obs(self, url: str, start: int, end: int | None = None) -> AsyncIterator[LinkAnswer]:
        """Stream ``bytes=start-end`` of a temporary OBS link (no auth: the link is signed).

        Raises :class:`ObsLinkExpired` on 403; a body that breaks off raises
        :class:`AnswerBrokeOff` from its ``chunks()``. The URL never appears in errors or metrics.
        """
        rng = f"bytes={start}-" if end is None else f"bytes={start}-{end}"
        attempt = 0
        while True:
            attempt += 1
            async with self._slots:
                try:
                    async with self._links.get(url, {"Range": rng}) as answer:
                        if answer.status == 403:
                            self.metrics.api_requests.labels("obs", "expired").inc()
                            raise ObsLinkExpired(endpoint="obs", status=403, error_msg="temporary link expired")
                        if answer.status >= 400 and answer.status != 416:
                            err = error_answer(
                                answer.status,
                                await _body(answer),
                                answer.header("Retry-After") or None,
                                "obs",
                                self.retryable_codes,
                            )
                            if err.retryable and not self.retry.exhausted(attempt):
                                self.metrics.api_requests.labels("obs", f"retry_{answer.status}").inc()
                                await asyncio.sleep(self.retry.delay(attempt, err.retry_after))
                                continue
                            self.metrics.api_requests.labels("obs", "error").inc()
                            raise err
                        self.metrics.api_requests.labels("obs", "ok").inc()
                        yield answer
                        return
                except LinkUnreachable as exc:
                    if self.retry.exhausted(attempt):
                        self.metrics.api_requests.labels("obs", "connection_error").inc()
                        raise ApiError(endpoint="obs", status=0, error_msg=str(exc)) from None
                    self.metrics.api_retries.labels("obs", "connection").inc()
                    await asyncio.sleep(self.retry.delay(attempt))

    async def _admit(self) -> Permit:
        tag = CALL.get()
        permit = await self.budget.acquire(tag.priority, tag.key, since_last_poll=tag.since_last_poll)
        if permit.waited:
            self.metrics.throttle_wait_seconds.inc(permit.waited)
        return permit

    async def _send_with_retries(self, endpoint: str, build: Any) -> httpx.Response:
        attempt = throttled = 0
        while True:
            attempt += 1
            permit = await self._admit()
            try:
                async with self._slots:
                    response = released(await self._http.send(build()))
            except httpx.TransportError as exc:
                reason = type(exc).__name__
                if self.retry.exhausted(attempt):
                    self.metrics.api_requests.labels(endpoint, "connection_error").inc()
                    raise ApiError(endpoint=endpoint, status=0, error_msg=f"connection failed: {reason}") from None
                self.metrics.api_retries.labels(endpoint, "connection").inc()
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            except AuthError:
                self.metrics.api_requests.labels(endpoint, "auth_error").inc()
                raise
            except ApiError as auth_err:  # raised by a token-fetching auth flow (IAM answered 429/5xx)
                if not auth_err.retryable or self.retry.exhausted(attempt):
                    self.metrics.api_requests.labels(endpoint, "auth_error").inc()
                    raise
                self.metrics.api_retries.labels(endpoint, "auth").inc()
                pause = self.retry.delay(attempt, auth_err.retry_after)
                await asyncio.sleep(pause)
                continue
            if response.status_code < 400:
                self.budget.observe(permit, response.status_code)
                self.metrics.api_requests.labels(endpoint, "ok").inc()
                return response
            err = api_error(response, endpoint, self.retryable_codes)
            self.metrics.api_errors.labels(endpoint, err.error_code or str(err.status)).inc()
            if self.budget.observe(permit, err.status, err.error_code, err.error_msg, err.retry_after):
                throttled += 1
                if throttled <= THROTTLED_RESENDS * max(1, self.retry.max_attempts):
                    self.metrics.api_retries.labels(endpoint, "throttled").inc()
                    attempt -= 1  # the gateway's flow control, not a failure: wait for budget, send again
                    continue
                self.metrics.api_requests.labels(endpoint, "throttled").inc()
                raise err  # refused again and again: the scheduler retries the poll, without backing off
            if err.retryable and not self.retry.exhausted(attempt):
                self.metrics.api_retries.labels(endpoint, str(err.status)).inc()
                pause = self.retry.delay(attempt, err.retry_after)
                if err.retry_after:
                    self.metrics.throttle_wait_seconds.inc(pause)
                await asyncio.sleep(pause)
                continue
            self.metrics.api_requests.labels(endpoint, "error").inc()
            if response.status_code in (401, 403) and not err.retryable:
                raise AuthError(
                    f"{endpoint}: HTTP {response.status_code} {err.error_code} {err.error_msg}".strip()
                    + " (check the credentials)"
                )
            raise err


async def _body(answer: LinkAnswer) -> bytes:
    """An error answer's body, or nothing when it breaks off (the status says enough)."""
    try:
        return await answer.read()
    except AnswerBrokeOff:
        return b""


class HttpClients:
    """The context's HTTP client factory: one shared :class:`ApiClient` per name, closed together.

    ``name`` identifies a credential and API: sources asking for the same name share one rate
    limit, as the API's flow control counts per credential, not per source.
    """

    def __init__(self, metrics: Metrics, *, transport: httpx.AsyncBaseTransport | None = None, **defaults: Any):
        self._metrics = metrics
        self._transport = transport
        self._defaults = defaults
        self._clients: dict[str, ApiClient] = {}

    def __call__(
        self,
        name: str,
        *,
        base_url: str,
        auth: Any = None,
        retryable_codes: frozenset[str] = frozenset(),
        headers: Mapping[str, str] | None = None,
    ) -> ApiClient:
        found = self._clients.get(name)
        if found is None:
            found = self._clients[name] = ApiClient(
                base_url,
                name=name,
                auth=auth,
                metrics=self._metrics,
                transport=self._transport,
                retryable_codes=retryable_codes,
                headers=headers,
                **self._defaults,
            )
        return found

    def share(self, replicas: int) -> None:
        """Each client spends 1/``replicas`` of its budget: replicas share one credential's limit."""
        for client in self._clients.values():
            client.budget.set_share(replicas)

    def budget_snapshots(self) -> dict[str, Snapshot]:
        """Each client's API budget, by client name (for the status page)."""
        return {name: client.budget.snapshot() for name, client in self._clients.items()}

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
