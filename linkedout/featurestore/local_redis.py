"""A throw-away ``redis-server`` on 127.0.0.1 for tests and benchmarks (Debian package ``redis-server``).

:class:`LocalRedis` starts the real server on a free loopback port with no persistence (no RDB
snapshots, no AOF), waits until it answers ``PING``, and stops it by its PID (SIGTERM, then
SIGKILL after a grace period), so nothing is left running::

    with LocalRedis() as redis_server:
        settings = FeastSettings(environment="production", offline_root=..., redis_address=redis_server.address)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from linkedout.utils import get_logger

LOG = get_logger(__name__)


def redis_server_binary() -> str | None:
    """The ``redis-server`` executable on PATH, or None (install Debian's ``redis-server`` package)."""
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """``redis-server`` on ``127.0.0.1:port`` (a free port unless given), no persistence."""

    def __init__(self, port: int | None = None, *, start_timeout_s: float = 10.0) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install -y redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> str:
        """``host:port``, as :class:`~linkedout.featurestore.FeastSettings.redis_address` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> LocalRedis:
        if self.process is not None and self.process.poll() is None:
            return self
        self._dir = tempfile.TemporaryDirectory(prefix="linkedout-redis-")
        log = Path(self._dir.name) / "redis.log"
        cmd = [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--protected-mode", "yes", "--dir", self._dir.name, "--logfile", str(log)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = log.read_text()[-2000:] if log.exists() else ""
                self._cleanup()
                raise RuntimeError(f"redis-server on {self.address} exited with {self.process.returncode}: {text}")
            if self.ping():
                LOG.info("redis-server %s listening on %s (pid %d)", self.binary, self.address, self.process.pid)
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server on {self.address} did not answer PING within {self.start_timeout_s} s")

    def ping(self, timeout_s: float = 0.2) -> bool:
        """True if the server answers ``PING`` (a raw RESP exchange, no client library)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the server by its PID, SIGKILL it if it is still there after ``grace_s``."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace_s)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
