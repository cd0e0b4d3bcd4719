"""Small shared helpers: logging, seeding, progress bars, atomic file writes, hashing, timestamps, int checks."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

LOG = logging.getLogger("linkedout")

_HASH_CHUNK = 1 << 22  # 4 MiB


def get_logger(name: str) -> logging.Logger:
    """A child of the ``linkedout`` logger (pass ``__name__``); configuration is left to the CLI."""
    return logging.getLogger(name if name.startswith("linkedout") else f"linkedout.{name}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tools and tests swap it)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure_logging(level: int | str = logging.INFO) -> None:
    """Configure the root ``linkedout`` logger for command-line use (called by the CLI only)."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and (if imported) PyTorch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds the legacy global RNG that libraries still use
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar (rate and ETA) on stderr; disabled with ``LINKEDOUT_PROGRESS=0``."""
    from tqdm.auto import tqdm

    disable = os.environ.get("LINKEDOUT_PROGRESS", "1") == "0"
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    mininterval=1.0)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``1 h 05 min``: a duration for logs and progress bars."""
    if seconds != seconds or seconds < 0:  # NaN or negative: unknown
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def rotated_name(path: str | os.PathLike[str], i: int) -> Path:
    """The ``i``-th older file of a rotated log: ``PATH.i`` (``PATH.1`` the newest, as ``logging`` names them)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{i}")


def rotated_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of a rotated log, oldest first: ``PATH.N``, ..., ``PATH.1``, ``PATH`` (those that exist)."""
    older: list[Path] = []
    while rotated_name(path, len(older) + 1).exists():
        older.append(rotated_name(path, len(older) + 1))
    return [*reversed(older), *([Path(path)] if Path(path).exists() else [])]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def utc_now() -> str:
    """The current UTC time in ISO 8601 to the second (``2026-01-02T03:04:05+00:00``): the stamp of written files."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), a ``bool`` excluded."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
