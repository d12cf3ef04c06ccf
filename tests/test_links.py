"""Reads of pre-signed links: byte-exact URLs, broken-off bodies and refused connections, on both clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from collector_plugin.links import AiohttpLinks, AnswerBrokeOff, HttpxLinks, LinkClient, LinkUnreachable

SIGNED = "/bucket/logs/job%2F1/worker-0.log?AccessKeyId=AK&Expires=1700000000&Signature=a%2Bb%2Fc%3D&x=~y"

Makers = Callable[[], LinkClient]
CLIENTS: dict[str, Makers] = {
    "aiohttp": lambda: AiohttpLinks(timeout=5, max_connections=4, verify=False),
    "httpx": lambda: HttpxLinks(httpx.AsyncClient(timeout=5)),
}


@asynccontextmanager
async def server(answer: bytes) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A one-answer-per-request HTTP server on 127.0.0.1; yields its port and the request heads seen."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], heads
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_signed_link_is_sent_byte_for_byte_with_its_range(name: str) -> None:
    body = b"0123456789"
    answer = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/10\r\nContent-Length: 10\r\n\r\n" + body
    client = CLIENTS[name]()
    async with server(answer) as (port, heads):
        async with client.get(f"http://127.0.0.1:{port}{SIGNED}", {"Range": "bytes=0-"}) as got:
            assert (got.status, got.header("content-range")) == (206, "bytes 0-9/10")
            assert b"".join([c async for c in got.chunks()]) == body
        await client.aclose()
    request_line, *headers = heads[0].decode("latin-1").split("\r\n")
    assert request_line == f"GET {SIGNED} HTTP/1.1"  # re-quoting would void the signature
    assert "range: bytes=0-" in [h.lower() for h in headers]


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_body_that_stops_short_breaks_off(name: str) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40  # then the connection closes
    client = CLIENTS[name]()
    async with server(answer) as (port, _):
        got_bytes = b""
        with pytest.raises(AnswerBrokeOff):
            async with client.get(f"http://127.0.0.1:{port}/o", {}) as got:
                async for chunk in got.chunks():
                    got_bytes += chunk
        await client.aclose()
    assert got_bytes == b"x" * len(got_bytes) and len(got_bytes) <= 40


@pytest.mark.parametrize("name", CLIENTS)
async def test_nobody_listening_is_unreachable(name: str) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = CLIENTS[name]()
    with pytest.raises(LinkUnreachable):
        async with client.get(f"http://127.0.0.1:{port}/o", {}):
            pass
    await client.aclose()


@pytest.mark.parametrize("name", CLIENTS)
async def test_links_go_through_the_proxy_the_environment_names_unless_no_proxy_says(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with server(answer) as (proxy_port, proxied), server(answer) as (port, direct):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
        monkeypatch.setenv("NO_PROXY", "localhost")
        client = CLIENTS[name]()
        for host in ("127.0.0.1", "localhost"):
            async with client.get(f"http://{host}:{port}/o?Signature=a%2B", {}) as got:
                assert await got.read() == b"ok"
        await client.aclose()
    assert [h.split(b"\r\n")[0] for h in proxied] == [f"GET http://127.0.0.1:{port}/o?Signature=a%2B HTTP/1.1".encode()]
    assert [h.split(b"\r\n")[0] for h in direct] == [b"GET /o?Signature=a%2B HTTP/1.1"]
