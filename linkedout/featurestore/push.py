"""Live history updates: a user watches a video, ``user_history`` gets it at once (push source).

:func:`push_watches` takes a batch of watch events, reads the affected users' histories online,
appends each user's new watches in time order, keeps the last 10, and pushes the rows through
``user_history_push`` (``PushMode.ONLINE``). A history row's ``last_watch`` is the time of its last
watch (to the ms), so an event not newer than it is not applied online: a re-delivered event
changes nothing (pushing the same events twice is a no-op), and a late event (older than the last
watch: its place among the ids online is unknown) waits for the next batch rebuild of the
histories, which orders every logged watch by time.

With ``log=True`` (the default) the events are also appended to the offline ``interactions``
table and the new history rows to the offline ``user_history`` table (one file each per batch,
named by its content), so the next training data includes the watches and a later
materialisation (whose latest row wins) keeps the live histories. Push batches, not single
events, where volume matters: each logged call writes two small files.

One writer per user at a time: the read-append-push is not atomic across processes (partition an
event stream by user); within one process a lock serialises it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from linkedout.featurestore.definitions import (
    HISTORY_LENGTH,
    INTERACTIONS,
    TIMESTAMP,
    USER_HISTORY,
    USER_HISTORY_PUSH,
    USER_KEY,
    VIDEO_KEY,
)
from linkedout.featurestore.offline import INTERACTIONS_SCHEMA, content_part, video_ids, write_part
from linkedout.featurestore.online import configure_redis_client, online_errors, read_rows, user_keys
from linkedout.featurestore.repo import FeatureRepo
from linkedout.featurestore.write import histories_table, online_last_watch
from linkedout.utils import get_logger

LOG = get_logger(__name__)
_LOCK = threading.Lock()


def _events_frame(events: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (USER_KEY, VIDEO_KEY, TIMESTAMP) if c not in events.columns]
    if missing:
        raise ValueError(f"watch events: missing columns {missing} (expected {USER_KEY}, {VIDEO_KEY}, {TIMESTAMP})")
    ts = events[TIMESTAMP]
    if pd.api.types.is_integer_dtype(ts):
        ts_ms = ts.to_numpy(dtype=np.int64)
    elif pd.api.types.is_datetime64_any_dtype(ts):
        if getattr(ts.dt, "tz", None) is None:
            raise ValueError(f"watch events: {TIMESTAMP} must be timezone-aware (or int64 ms since the epoch)")
        ts_ms = ts.dt.tz_convert("UTC").dt.as_unit("ms").astype(np.int64).to_numpy()
    else:
        raise ValueError(f"watch events: {TIMESTAMP} must be int64 ms or timezone-aware datetimes, got {ts.dtype}")
    out = pd.DataFrame({USER_KEY: user_keys(list(events[USER_KEY])),
                        VIDEO_KEY: video_ids(events[VIDEO_KEY].to_numpy(), f"watch events.{VIDEO_KEY}"),
                        "ms": ts_ms})
    return out.sort_values(["ms"], kind="stable").reset_index(drop=True)


def push_watches(repo: FeatureRepo, events: pd.DataFrame, *, log: bool = True,
                 max_len: int = HISTORY_LENGTH) -> dict[str, list[int]]:
    """Apply watch events (``user_id``, ``video_id``, ``event_timestamp`` as int64 ms or aware datetimes)
    to the online histories; returns ``{user_id: new history}`` of the users whose history changed."""
    if not 1 <= max_len <= HISTORY_LENGTH:
        raise ValueError(f"max_len must be in [1, {HISTORY_LENGTH}], got {max_len}")
    df = _events_frame(events)
    if df.empty:
        return {}
    if log:
        table = pa.table([pa.array(df[USER_KEY], type=pa.string()), pa.array(df[VIDEO_KEY], type=pa.int64()),
                          pa.array(df["ms"], type=pa.int64()).cast(pa.timestamp("ms", tz="UTC"))],
                         schema=INTERACTIONS_SCHEMA)
        write_part(repo, INTERACTIONS, content_part(table, "events"), table)
    configure_redis_client(repo)
    with _LOCK:
        users = list(dict.fromkeys(df[USER_KEY]))
        current = dict(zip(users, read_rows(repo, USER_HISTORY, users, ["watched", "last_watch"])))
        updated: dict[str, list[int]] = {}
        stamps: dict[str, int] = {}
        for user, video, ms in zip(df[USER_KEY], df[VIDEO_KEY], df["ms"]):
            ts, values = current[user]
            online_ms = online_last_watch(ts, values)
            last_ms = stamps.get(user, -1 if online_ms is None else online_ms)
            if int(ms) <= last_ms:
                continue  # already applied (re-delivered) or older than the history online
            history = updated.get(user) or list((values or {}).get("watched") or [])
            updated[user] = [*history, int(video)][-max_len:]
            stamps[user] = int(ms)
        if not updated:
            return {}
        last = np.array([stamps[u] for u in updated], dtype=np.int64)
        rows = pd.DataFrame({USER_KEY: list(updated), "watched": [np.asarray(v, dtype=np.int64) for v in updated.values()],
                             "last_watch": last, TIMESTAMP: pd.to_datetime(last, unit="ms", utc=True)})
        if log:  # the new rows offline too, so a later materialisation keeps them (latest row wins)
            table = histories_table(rows)
            write_part(repo, USER_HISTORY, content_part(table, "live"), table)
        from feast.data_source import PushMode

        with online_errors(repo, f"pushing {len(rows)} histories through {USER_HISTORY_PUSH}"):
            repo.store.push(USER_HISTORY_PUSH, rows, to=PushMode.ONLINE)
    LOG.debug("pushed %d watch events, %d histories changed", len(df), len(updated))
    return updated


def record_watch(repo: FeatureRepo, user_id: Any, video_id: int, *, timestamp_ms: int | None = None,
                 log: bool = True) -> list[int]:
    """One watch: append ``video_id`` to the user's online history (last 10 kept); returns the history
    now online for the user."""
    ms = int(datetime.now(UTC).timestamp() * 1000) if timestamp_ms is None else int(timestamp_ms)
    changed = push_watches(repo, pd.DataFrame({USER_KEY: [user_id], VIDEO_KEY: [video_id], TIMESTAMP: [ms]}), log=log)
    key = user_keys([user_id])[0]
    if key in changed:
        return changed[key]
    (_, values), = read_rows(repo, USER_HISTORY, [key], ["watched"])
    return list((values or {}).get("watched") or [])

