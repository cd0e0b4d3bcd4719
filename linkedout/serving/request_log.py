"""The request log: one JSON line per user served, appended by a background thread.

Each line (docs/serving.md §3): ``request_id``, ``ts`` (ms since the epoch), ``user_id``,
``experiment``, ``variant``, ``model``, ``model_version``, ``items``, ``scores``, ``cold_start``,
``latency_ms``. The serving path only puts records on a bounded queue (no file I/O on the request
path; with :meth:`RequestLog.write_later`, one queue entry per request whose records the writer
thread builds, so not even the records are made on the event loop); the writer thread appends them
in batches and flushes at least every ``flush_interval``
seconds and on ``close``. When the queue is full (the disk cannot keep up) records are dropped and
counted rather than slowing requests down; ``dropped`` says how many. A/B analysis
(``linkedout ab analyze``) reads the file with ``read_request_log``.

With ``max_bytes``, a log written to a regular file is rotated like ``logging``'s
``RotatingFileHandler``: once a write leaves it at ``max_bytes`` or more (checked after each batch,
so a file may pass the size by one batch), ``PATH`` becomes ``PATH.1``, ``PATH.1`` becomes
``PATH.2``, ... up to ``PATH.{backups}``; the oldest beyond that is deleted, which bounds the disk
used at about ``(backups + 1) * max_bytes``. ``linkedout.utils.rotated_files(PATH)`` lists the files
oldest first; ``linkedout ab analyze --requests PATH`` reads them all. A log that is not a regular file (``/dev/stdout`` in a
pod: the cluster's log shipping keeps it) is never rotated.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from linkedout.utils import get_logger, rotated_name

log = get_logger(__name__)

__all__ = ["RequestLog", "read_request_log"]


class RequestLog:
    """Append-only JSONL request log written off the request path."""

    def __init__(self, path: str | os.PathLike[str], *, max_queue: int = 100_000, flush_interval: float = 0.5,
                 max_bytes: int = 0, backups: int = 4) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0: never rotate), got {max_bytes}")
        if backups < 1:
            raise ValueError(f"backups must be >= 1, got {backups}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups = max_bytes, backups
        self.rotations = 0
        self._queue: queue.Queue[Mapping[str, Any] | Callable[[], Iterable[Mapping[str, Any]]] | None] = \
            queue.Queue(maxsize=max_queue)
        self.flush_interval = flush_interval
        self.dropped = 0
        self.written = 0
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if max_bytes and not stat.S_ISREG(os.fstat(self._file.fileno()).st_mode):
            self.max_bytes = 0  # a pipe or a terminal (/dev/stdout): nothing to rotate
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def write(self, record: Mapping[str, Any]) -> None:
        """Queue one record (never blocks)."""
        self._put(record)

    def write_later(self, records: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        """Queue a function that makes records: the writer thread calls it (never blocks)."""
        self._put(records)

    def _put(self, item: Mapping[str, Any] | Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 1000) or self.dropped % 100_000 == 0:
                log.warning("request log %s cannot keep up: %d records dropped", self.path, self.dropped)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.flush_interval)
            except queue.Empty:
                self._file.flush()
                continue
            batch = [item]
            while len(batch) < 1024:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is None for r in batch)
            lines = [json.dumps(r, separators=(",", ":")) for r in _records(batch)]
            try:
                if lines:
                    self._file.write("\n".join(lines) + "\n")
                    self.written += len(lines)
                self._file.flush()
            except OSError as e:
                log.error("request log %s: write failed (%s); %d records lost", self.path, e, len(lines))
            if self.max_bytes and not stop and self._file.tell() >= self.max_bytes:
                self._rotate()
            if stop:
                return

    def _rotate(self) -> None:
        """PATH -> PATH.1 -> ... -> PATH.{backups} (the oldest beyond is replaced), then a new PATH."""
        try:
            self._file.close()
            for i in range(self.backups - 1, 0, -1):
                older = rotated_name(self.path, i)
                if older.exists():
                    os.replace(older, rotated_name(self.path, i + 1))
            os.replace(self.path, rotated_name(self.path, 1))
            self.rotations += 1
        except OSError as e:  # keep appending to PATH: a log too long beats a log lost
            log.error("request log %s: rotation failed (%s); still appending to it", self.path, e)
        finally:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        """Write everything queued, then close the file."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
        self._file.close()


def _records(batch: list[Any]) -> Iterator[Mapping[str, Any]]:
    for item in batch:
        if item is None:
            continue
        if callable(item):
            try:
                yield from item()
            except Exception as e:  # a bug in a record maker must not stop the writer
                log.error("request log: records lost: %s: %s", type(e).__name__, e)
        else:
            yield item


def read_request_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a request log, in order; a torn last line (a killed writer) is skipped."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON (a torn write?); skipped", path, n)
