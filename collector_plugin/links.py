"""Reads of pre-signed links (OBS log objects): unsigned ranged GETs, streamed, at a low CPU cost.

At scale these are most of the receiver's requests: a caught-up task log reads its new bytes
with ``Range`` on its link every poll, so 1,000 tasks polled every 5 s are 200 reads a second.
httpx spends 0.9 ms of CPU on one such read alone and 2.8 ms with 32 connections in its pool
(its pool's bookkeeping grows with the pool); aiohttp, with its C parser, 0.15-0.26 ms
(``tests/benchmarks/bench_links.py``). So links go through aiohttp, and the signed API calls,
whose signers are ``httpx.Auth`` flows, stay on httpx. A test that injects an httpx transport
(a mock) gets its links through that transport.

A link is sent byte for byte as the API gave it: its signature covers the query as written, and
re-quoting it (``%2B`` to ``+``, say) would void it.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import httpx

from collector_plugin.errors import ReceiverError

if TYPE_CHECKING:
    import aiohttp


class LinkUnreachable(ReceiverError):
    """No answer came (connection refused, reset or timed out before the status line)."""


class AnswerBrokeOff(ReceiverError):
    """An answer's body stopped before its end: read again from the last byte handed on."""


class LinkAnswer(Protocol):
    """What a link read hands back: the status, a header, and the body in chunks as they arrive."""

    @property
    def status(self) -> int: ...

    def header(self, name: str) -> str: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class LinkClient(Protocol):
    def get(self, url: str, headers: Mapping[str, str]) -> AbstractAsyncContextManager[LinkAnswer]: ...

    async def aclose(self) -> None: ...


def link_client(
    *, timeout: float, max_connections: int, verify: bool | str, transport: httpx.AsyncBaseTransport | None
) -> LinkClient:
    """aiohttp for real links; httpx when a transport is injected (tests mock links with it)."""
    if transport is not None:
        return HttpxLinks(httpx.AsyncClient(timeout=timeout, transport=transport, verify=verify))
    return AiohttpLinks(timeout=timeout, max_connections=max_connections, verify=verify)


class HttpxLinks:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    @asynccontextmanager
    async def get(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[LinkAnswer]:
        try:
            async with self._client.stream("GET", url, headers=dict(headers)) as response:
                yield _HttpxAnswer(response)
        except httpx.TransportError as exc:
            raise LinkUnreachable(type(exc).__name__) from None

    async def aclose(self) -> None:
        await self._client.aclose()


class _Answer:
    """What both clients' answers share: the whole body, from the chunks each reads its own way."""

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


class _HttpxAnswer(_Answer):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    def header(self, name: str) -> str:
        return str(self._response.headers.get(name, ""))

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            raise AnswerBrokeOff(type(exc).__name__) from None


class AiohttpLinks:
    """One aiohttp session, opened on first use inside the running loop (aiohttp wants one)."""

    def __init__(self, *, timeout: float, max_connections: int, verify: bool | str) -> None:
        self._timeout = timeout
        self._limit = max_connections
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str] = {}
        self._bypass: dict[str, bool] = {}

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limit, ssl=_ssl(self._verify)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout),
            auto_decompress=True,
        )
        # Proxies from the environment, read once: aiohttp's trust_env would look them (and
        # ~/.netrc) up in a worker thread on every request, which costs more than the read.
        self._proxies = urllib.request.getproxies_environment()
        return self._session

    def _proxy(self, url: str) -> str | None:
        """The proxy for ``url`` as HTTP(S)_PROXY and NO_PROXY say (per host, remembered)."""
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme)
        if proxy is None:
            return None
        host = parts.hostname or ""
        bypass = self._bypass.get(host)
        if bypass is None:
            bypass = self._bypass[host] = bool(urllib.request.proxy_bypass(host))
        return None if bypass else proxy

    @asynccontextmanager
    async def get(self, url: str, headers: Mapping[str, str]) -> AsyncIterator[LinkAnswer]:
        import aiohttp
        from yarl import URL

        session = self._session or self._open()
        try:
            response = await session.get(
                URL(url, encoded=True), headers=dict(headers), allow_redirects=False, proxy=self._proxy(url)
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise LinkUnreachable(type(exc).__name__) from None
        try:
            yield _AiohttpAnswer(response)
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpAnswer(_Answer):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    def header(self, name: str) -> str:
        return self._response.headers.get(name, "")

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise AnswerBrokeOff(type(exc).__name__) from None


def _ssl(verify: bool | str) -> ssl.SSLContext | bool:
    """httpx's meaning of ``verify``: True (certifi's CAs, as httpx), False, or a CA bundle path."""
    if verify is False:
        return False
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
