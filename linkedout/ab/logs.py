"""Reading the two logs an experiment is analysed from.

**Request log** (written by the transformer, docs/serving.md §3): one JSON object per line and per
user served, with ``request_id``, ``ts`` (ms since the epoch), ``user_id``, ``experiment``,
``variant`` (the experiment arm), ``model``, ``model_version``, ``items``, ``scores``,
``cold_start``, ``latency_ms``; an ``error`` field (a string, absent or null when served) marks a
failed request when the transformer logs failures. A batched request writes one line per user under one ``request_id``.

**Interaction log** (written by the application, or by ``linkedout ab simulate``): one JSON object
per line and per interaction of a user with a video::

    {"user_id": "42", "video_id": 1234, "ts": 1767225600123, "request_id": "9f1c...", "event": "click"}

``request_id`` (optional) is the id of the response the video was shown in; without it an
interaction is attributed to the user's latest request before it that showed the video, within the
experiment's attribution window. ``event`` is optional (default ``click``; e.g. ``watch``).

Bad lines are errors naming the file and line; only an unterminated last line (a writer caught
mid-append) is skipped with a warning. ``mixed=True`` reads a request log interleaved with other
output (``kubectl logs`` of a transformer logging to stdout): lines that are not request records are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkedout.utils import get_logger

log = get_logger(__name__)

REQUEST_FIELDS = ("request_id", "ts", "user_id", "variant", "items", "latency_ms")


class LogError(ValueError):
    """A log line that cannot be read; the message names the file, the line and the field."""


@dataclass
class RequestLog:
    """Columns of the request records (one row per user served).

    ``items`` holds each row's served video ids (-1 padding removed).
    """

    request_id: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    experiment: list[str] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)  # the experiment arm that served the row
    model_version: list[str] = field(default_factory=list)
    items: list[tuple[int, ...]] = field(default_factory=list)
    cold_start: list[bool] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    skipped: int = 0  # lines that were not request records (mixed logs) or an unterminated last line

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class InteractionLog:
    user_id: list[str] = field(default_factory=list)
    video_id: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    request_id: list[str | None] = field(default_factory=list)
    event: list[str] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ts)


def _lines(paths: Iterable[str | Path]) -> Iterator[tuple[Path, int, str, bool]]:
    """(path, line number, text, is_last_unterminated) of every non-empty line."""
    for p in paths:
        path = Path(p)
        try:
            data = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"log file not found: {path}") from None
        except UnicodeDecodeError as e:
            raise LogError(f"{path}: not UTF-8 text ({e})") from None
        lines = data.split("\n")
        unterminated_last = not data.endswith("\n")
        for i, line in enumerate(lines, 1):
            if line.strip():
                yield path, i, line, unterminated_last and i == len(lines)


def _parse(path: Path, lineno: int, line: str, last: bool) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        if last:
            log.warning("%s:%d: unterminated last line skipped (a writer mid-append?)", path, lineno)
            return None
        raise LogError(f"{path}:{lineno}: not a JSON object ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise LogError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
        raise LogError(f"{where}: {key} must be a number (ms since the epoch for ts), got {v!r}")
    return int(v)


def read_request_log(paths: str | Path | Iterable[str | Path], *, mixed: bool = False) -> RequestLog:
    """Read one or more request-log files (one per transformer replica, say) into columns."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    out = RequestLog()
    for path, lineno, line, last in _lines(paths):
        where = f"{path}:{lineno}"
        if mixed and not line.lstrip().startswith("{"):
            out.skipped += 1
            continue
        obj = _parse(path, lineno, line, last)
        if obj is None:
            out.skipped += 1
            continue
        missing = [k for k in REQUEST_FIELDS if k not in obj]
        if missing:
            if mixed:
                out.skipped += 1
                continue
            raise LogError(f"{where}: request record without {', '.join(missing)} (docs/serving.md §3)")
        items = obj["items"]
        if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise LogError(f"{where}: items must be a list of integer video ids, got {items!r}")
        latency = obj["latency_ms"]
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            raise LogError(f"{where}: latency_ms must be a non-negative number, got {latency!r}")
        err = obj.get("error")
        out.request_id.append(str(obj["request_id"]))
        out.ts.append(_int(obj, "ts", where))
        out.user_id.append(str(obj["user_id"]))
        out.experiment.append(str(obj.get("experiment") or ""))
        out.variant.append(str(obj["variant"]))
        out.model_version.append(str(obj.get("model_version") or ""))
        out.items.append(tuple(i for i in items if i >= 0))
        out.cold_start.append(bool(obj.get("cold_start", False)))
        out.latency_ms.append(float(latency))
        out.error.append(None if err in (None, "", False) else str(err))
    return out


def read_interaction_log(paths: str | Path | Iterable[str | Path]) -> InteractionLog:
    """Read one or more interaction-log files (module docstring) into columns."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    out = InteractionLog()
    for path, lineno, line, last in _lines(paths):
        where = f"{path}:{lineno}"
        obj = _parse(path, lineno, line, last)
        if obj is None:
            out.skipped += 1
            continue
        for key in ("user_id", "video_id", "ts"):
            if key not in obj:
                raise LogError(f"{where}: interaction without {key} (needs user_id, video_id, ts)")
        rid = obj.get("request_id")
        out.user_id.append(str(obj["user_id"]))
        out.video_id.append(_int(obj, "video_id", where))
        out.ts.append(_int(obj, "ts", where))
        out.request_id.append(None if rid in (None, "") else str(rid))
        out.event.append(str(obj.get("event") or "click"))
    return out


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]], append: bool = True) -> int:
    """Append records as JSON lines (flushed per line, so a reader never sees half a record's line
    except possibly the last); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
            n += 1
        f.flush()
    return n
