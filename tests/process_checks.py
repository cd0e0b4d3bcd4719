"""Checks on the processes a test started: what is left of a process group, waiting for a condition.

The servers themselves are started and stopped by ``linkedout.serving.local.process``; these helpers
let tests assert that nothing outlives them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def group_pids(pgid: int) -> list[int]:
    """Live PIDs of process group ``pgid`` (Linux ``/proc``), for checks that nothing was left behind."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(entry))
    return out


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` s; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
