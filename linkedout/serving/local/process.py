"""Child server processes that never outlive their parent.

A server started here (Triton, the fallback predictor) runs in its own session and process group
(Ctrl-C in a terminal reaches the parent, which stops its children in order) and gets
``PR_SET_PDEATHSIG = SIGTERM``: if the parent dies for any reason, SIGKILL included, the kernel sends
the child SIGTERM and the child shuts down cleanly. A normal interpreter exit stops every live child
through ``atexit``. ``stop`` is SIGTERM, a bounded wait, then SIGKILL to the whole process group (so
helpers the server forked, such as Triton's Python-backend stubs, go too).

Linux semantics: the parent-death signal follows the *thread* that started the child, so start
servers from a thread that lives as long as they should (the main thread, in a CLI).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from linkedout.utils import get_logger

LOG = get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_LIVE: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def port_in_use(host: str, port: int) -> bool:
    """Whether a process listens on ``host:port`` (TCP) now.

    The probe binds with ``SO_REUSEADDR`` and without ``SO_REUSEPORT``: a port in ``TIME_WAIT``
    counts as free, a listener counts as taken even when it set ``SO_REUSEPORT`` itself (gRPC's
    default, with which a second server would otherwise share the port and half the requests).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(host: str, ports: Mapping[str, int]) -> None:
    """``OSError`` naming the first of ``ports`` (``{"what": port}``, 0 = a free one later) in use on ``host``,
    or given twice."""
    seen: dict[int, str] = {}
    for what, port in ports.items():
        if not port:
            continue
        if port in seen:
            raise OSError(f"port {port} is given twice ({seen[port]} and {what})")
        seen[port] = what
        if port_in_use(host, port):
            raise OSError(f"port {port} ({what}) on {host} is already in use (address already in use)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process may race for it)."""
    return free_ports({"port": 0}, host)["port"]


def free_ports(wanted: Mapping[str, int], host: str = "127.0.0.1") -> dict[str, int]:
    """``wanted`` with every 0 replaced by a TCP port free on ``host`` right now, all of them distinct.

    The probe sockets stay open until every port is picked: two probes closed one after the other
    may be given the same port by the OS (a transformer once got ``--http_port 46385 --grpc_port
    46385`` and its REST server could not bind). Another process may still race for them after.
    """
    taken = {v for v in wanted.values() if v}
    out = dict(wanted)
    probes = []
    try:
        for name, port in wanted.items():
            if port:
                continue
            while True:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(s)
                s.bind((host, 0))
                got = int(s.getsockname()[1])
                if got not in taken:
                    break
            out[name] = got
            taken.add(got)
    finally:
        for s in probes:
            s.close()
    return out


# Resolved in the parent: between fork and exec the child must not dlopen (a lock another thread of a
# multi-threaded parent held at fork time would never be released there).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _parent_death_hook(parent_pid: int) -> None:
    """Runs in the child between fork and exec: die (SIGTERM) with the parent."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def spawn(cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as a server child: output appended to ``log_path``, own process group, dies with us."""
    global _ATEXIT_REGISTERED
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.getpid()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env), cwd=cwd, start_new_session=True,
                                preexec_fn=lambda: _parent_death_hook(parent))
    with _LIVE_LOCK:
        _LIVE.add(proc)
        if not _ATEXIT_REGISTERED:
            atexit.register(_stop_all)
            _ATEXIT_REGISTERED = True
    LOG.debug("started pid %d: %s (log %s)", proc.pid, " ".join(cmd), log_path)
    return proc


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 15.0) -> int | None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL the process group; returns the exit code."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            LOG.warning("pid %d did not stop within %.0f s of SIGTERM; sending SIGKILL", proc.pid, timeout)
            _signal_group(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Whatever the server left behind in its group (it normally stops its helpers itself).
    _signal_group(pgid, signal.SIGKILL)
    with _LIVE_LOCK:
        _LIVE.discard(proc)
    return proc.returncode


def _stop_all() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        with contextlib.suppress(Exception):
            stop(proc, timeout=5.0)


# A line that says why a server failed: an exception, a glog error (Triton's "E1203 ..."), a bind error.
_REASON = re.compile(r"error|exception|failed|in use|refused|denied|not found|cannot|does not exist|invalid",
                     re.IGNORECASE)
# Lines that say nothing of the cause: the exit of a traceback that only passes an exit code on.
_NO_REASON = re.compile(r"^(SystemExit: \d*|KeyboardInterrupt|Traceback .*|During handling .*|The above exception.*)$")


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 64`` for a number with no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def reason_line(text: str) -> str:
    """The line of a server's log text that says why it failed: the last unindented line that reads as
    an error (a traceback's exception line, Triton's error, a bind error), else the last line; '' for none."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line[:1].isspace() and not _NO_REASON.match(line.strip())]
    for line in reversed(lines):
        if _REASON.search(line):
            return line
    return lines[-1] if lines else ""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
