"""What only the cyclic GC could free: for tests that objects holding big buffers go by refcount."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable

import httpx


async def httpx_garbage_after(run: Callable[[], Awaitable[object]]) -> list[str]:
    """The httpx requests and responses that only the cyclic GC could free after ``run``."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await run()
        gc.collect()
        return [type(o).__name__ for o in gc.garbage if isinstance(o, (httpx.Request, httpx.Response))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
