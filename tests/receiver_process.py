"""The receiver as a real process, for the crash and replica tests: start it, wait on conditions.

Nothing here waits a fixed time: :func:`wait_until` polls a condition (a request counted by the
simulator, a record at the sink, a lease in the table) and its timeout is a guard against a hang.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

GUARD = 60.0  # seconds: only against a hang, never expected to be reached


def start_receiver(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``modelarts-receiver run --config config`` in its own session, output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "collector_plugin.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = GUARD) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def line_offsets(data: bytes) -> dict[int, str]:
    """Each complete line of a log by the byte offset it starts at."""
    out, pos = {}, 0
    for line in data.split(b"\n")[:-1]:
        out[pos] = line.decode()
        pos += len(line) + 1
    return out
