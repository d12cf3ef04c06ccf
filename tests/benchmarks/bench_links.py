"""CPU per ranged read of a link, httpx against aiohttp: ``python tests/benchmarks/bench_links.py``.

A raw asyncio server (its own process, pinned to the other CPU) answers every GET with a 5,000-byte
206, as OBS answers a caught-up task log's ``Range`` read. Each client, in its own process pinned
to CPU 0, sends ``--requests`` reads at each concurrency through ``collector_plugin.links``; the
figure is the client process's user+system CPU per read. Clients alternate, so noise hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys

BODY = b"x" * 5000
ANSWER = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4999/5000\r\nContent-Length: 5000\r\n\r\n" + BODY


async def serve() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def client(name: str, port: int, requests: int, concurrency: int) -> float:
    import httpx

    from collector_plugin.links import AiohttpLinks, HttpxLinks, LinkClient

    links: LinkClient
    if name == "aiohttp":
        links = AiohttpLinks(timeout=10, max_connections=concurrency, verify=False)
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        links = HttpxLinks(httpx.AsyncClient(timeout=10, limits=limits))
    url = f"http://127.0.0.1:{port}/bucket/object?Signature=abc%2B"
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots, links.get(url, {"Range": "bytes=0-"}) as answer:
            async for _ in answer.chunks():
                pass

    await asyncio.gather(*(one() for _ in range(200)))  # warm: connections open
    start = cpu()
    await asyncio.gather(*(one() for _ in range(requests)))
    used = cpu() - start
    await links.aclose()
    return used / requests


def pin(pid: int, cpu_index: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(pid, {sorted(os.sched_getaffinity(0))[cpu_index]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--role", choices=("serve", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serve":
        asyncio.run(serve())
        return 0
    if args.role == "client":
        print(json.dumps(asyncio.run(client(args.client, args.port, args.requests, args.concurrency))))
        return 0
    srv = subprocess.Popen([sys.executable, __file__, "--role", "serve"], stdout=subprocess.PIPE, text=True)
    try:
        pin(srv.pid, -1)
        assert srv.stdout is not None
        port = int(srv.stdout.readline())
        results: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for concurrency in (1, 4, 32):
                for name in ("httpx", "aiohttp"):
                    cmd = [sys.executable, __file__, "--role", "client", "--client", name, "--port", str(port)]
                    cmd += ["--requests", str(args.requests), "--concurrency", str(concurrency)]
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                    pin(proc.pid, 0)
                    out, _ = proc.communicate(timeout=600)
                    results.setdefault((name, concurrency), []).append(json.loads(out))
        print("| connections | httpx µs CPU per read | aiohttp µs CPU per read | ratio |")
        print("|---|---|---|---|")
        for concurrency in (1, 4, 32):
            h = min(results[("httpx", concurrency)]) * 1e6
            a = min(results[("aiohttp", concurrency)]) * 1e6
            print(f"| {concurrency} | {h:,.0f} | {a:,.0f} | {h / a:.1f}x |")
    finally:
        srv.terminate()
        srv.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
