"""Decoding ahead of the backbone: videos decoded in worker processes, a bounded queue of them ready.

:func:`decode_stream` yields one :class:`Decoded` per job, in job order, while up to ``window``
jobs are decoding or decoded ahead in ``workers`` processes (``spawn``: the workers import PyAV
and numpy, never torch, and never share the parent's threads). So the backbone encodes batch ``b``
while the videos of batch ``b + 1`` are decoded, and the memory held is bounded by the window.

Processes rather than threads: decoding, colour conversion and resizing then never wait on the
parent's interpreter, and a decoder that crashes on a malformed file (a native fault) takes down
one worker, not the extraction. When a worker dies, nobody knows which of the videos in flight
killed it: the pool is rebuilt and those videos are decoded again one at a time; the one that
kills a worker on its own is reported as failed ("the decoder process crashed"), the others go on.

Workers ignore SIGINT: on Ctrl-C the parent alone stops (and stops them), so the terminal shows
one line, not a traceback per worker. A worker whose parent is killed outright exits within a second.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from linkedout.extraction.video import VideoDecodeError, decode_frames
from linkedout.fingerprint import video_source
from linkedout.utils import get_logger

log = get_logger(__name__)

__all__ = ["DecodeJob", "Decoded", "decode_job", "decode_stream", "load_frames", "threads_per_worker"]

CRASHED = "the decoder process crashed on this file"


@dataclass(frozen=True)
class DecodeJob:
    """One video to decode (picklable: sent to a worker)."""

    video_id: str
    path: str
    num_frames: int
    size: int
    sampling: str = "exact"
    threads: int = 1


@dataclass
class Decoded:
    """A decoded video: ``frames`` uint8 ``(F, S, S, 3)``, or ``error`` (why not); ``source`` is what
    identified the file when it was read (:func:`linkedout.fingerprint.video_source`)."""

    video_id: str
    frames: np.ndarray | None
    error: str | None
    source: dict[str, Any]


def decode_job(job: DecodeJob) -> Decoded:
    """Decode one job (in a worker or in-process). The file is identified before it is read."""
    source = video_source(job.path)
    try:
        frames = decode_frames(job.path, job.num_frames, job.size, sampling=job.sampling,  # type: ignore[arg-type]
                               threads=job.threads)
    except VideoDecodeError as err:
        return Decoded(job.video_id, None, err.reason, source)
    return Decoded(job.video_id, frames, None, source)


def load_frames(job: DecodeJob) -> Decoded:
    """A decoder for frames decoded beforehand: ``job.path`` is a ``.npy`` of uint8 ``(F, S, S, 3)``
    (benchmarks: the pipeline without the decoding work; caches of decoded frames)."""
    try:
        frames = np.load(job.path, allow_pickle=False)
    except (OSError, ValueError) as err:
        return Decoded(job.video_id, None, f"{type(err).__name__}: {err}", video_source(job.path))
    if frames.dtype != np.uint8 or frames.shape != (job.num_frames, job.size, job.size, 3):
        return Decoded(job.video_id, None, f"frames of shape {frames.shape} {frames.dtype}, expected "
                       f"{(job.num_frames, job.size, job.size, 3)} uint8", video_source(job.path))
    return Decoded(job.video_id, frames, None, video_source(job.path))


def threads_per_worker(workers: int, threads: int = 0) -> int:
    """Decoder threads per worker: ``threads`` when given, else the cores shared among the workers."""
    if threads > 0:
        return threads
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    parent = os.getppid()

    def exit_with_parent() -> None:  # a parent killed outright (SIGKILL, OOM) leaves no one to stop us
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=exit_with_parent, name="linkedout-decode-watchdog", daemon=True).start()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)


def _stop(pool: ProcessPoolExecutor, *, kill: bool) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    if kill:  # interrupted or failed: do not wait for the videos in flight
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
        # A worker killed while it wrote a result leaves half a message in the result pipe, which the
        # pool's manager thread would wait on for ever (and the interpreter joins that thread at exit: the
        # process would never end). With the workers gone, closing this process's end of the pipe gives
        # the manager an EOF instead: it sees the pool broken and ends.
        with contextlib.suppress(OSError, AttributeError):
            pool._result_queue._writer.close()  # type: ignore[attr-defined]


def decode_stream(
    jobs: Sequence[DecodeJob],
    workers: int,
    window: int,
    decode_fn: Callable[[DecodeJob], Decoded] = decode_job,
) -> Generator[Decoded, None, None]:
    """``Decoded`` results in ``jobs`` order, decoded up to ``window`` jobs ahead by ``workers`` processes.

    ``workers == 0`` decodes in this process, one job at a time. ``decode_fn`` must be a module-level
    function (it is sent to the workers); the default is :func:`decode_job`.
    """
    if workers < 0 or window < 1:
        raise ValueError(f"decode_stream needs workers >= 0 and window >= 1, got {workers}, {window}")
    if workers == 0:
        for job in jobs:
            yield decode_fn(job)
        return
    pool = _new_pool(workers)
    todo: deque[DecodeJob] = deque(jobs)
    pending: deque[tuple[DecodeJob, Future[Decoded]]] = deque()
    suspects: set[str] = set()  # in flight when a worker died: decoded again one at a time
    clean = False
    try:
        while todo or pending:
            limit = 1 if suspects else window
            try:
                while todo and len(pending) < limit:
                    pending.append((todo[0], pool.submit(decode_fn, todo[0])))
                    todo.popleft()
            except BrokenProcessPool:
                # A worker died since the last result (while the consumer was busy): the jobs in
                # flight fail below with the same error and are decoded again, one at a time.
                if not pending:  # nothing in flight to blame: a fresh pool
                    _stop(pool, kill=True)
                    pool = _new_pool(workers)
                    continue
            job, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                _stop(pool, kill=True)
                pool = _new_pool(workers)
                if job.video_id in suspects and not pending:
                    log.warning("video %s: %s", job.video_id, CRASHED)
                    suspects.discard(job.video_id)
                    yield Decoded(job.video_id, None, CRASHED, video_source(job.path))
                    continue
                again = [job, *(j for j, _ in pending)]
                log.warning("a decoder process died with %d videos in flight; decoding them one at a time",
                            len(again))
                suspects.update(j.video_id for j in again)
                pending.clear()
                todo.extendleft(reversed(again))
                continue
            suspects.discard(job.video_id)
            yield result
        clean = True
    finally:
        _stop(pool, kill=not clean)
