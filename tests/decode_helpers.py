"""Decode functions for the worker-process tests (module level: sent to spawned workers by reference)."""

from __future__ import annotations

import os

import numpy as np

from linkedout.extraction.prefetch import Decoded, DecodeJob


def crash_on_7(job: DecodeJob) -> Decoded:
    """Kills its worker process on video "7" (as a native decoder crash would), decodes nothing else."""
    if job.video_id == "7":
        os._exit(1)
    return Decoded(job.video_id, np.full((1, 2, 2, 3), int(job.video_id), np.uint8), None, {"size": 0})


def sleepy(job: DecodeJob) -> Decoded:
    """Writes its worker's pid into the directory ``job.path``, then sleeps (a decode that takes long)."""
    import time
    from pathlib import Path

    (Path(job.path) / f"{os.getpid()}.pid").write_text("")
    time.sleep(60)
    return Decoded(job.video_id, None, "slept", {})


def mark_done(job: DecodeJob) -> Decoded:
    """Writes ``<job.path>/<video_id>.done`` once "decoded" (so a test sees what was decoded ahead)."""
    from pathlib import Path

    (Path(job.path) / f"{job.video_id}.done").write_text(str(os.getpid()))
    return Decoded(job.video_id, np.zeros((1, 2, 2, 3), np.uint8), None, {"size": 0})
