"""Writing training outputs to Feast: videos of a model version, user histories, feature services.

Each write lands in the offline store first (one parquet file per part, replaced on a re-run) and
then online, by one of two paths (``online=``):

- ``"direct"``: ``FeatureStore.write_to_online_store`` with the rows in hand (the fast path; a
  history row is written only if its ``last_watch`` is not older than the one online, so a re-run
  from older interactions never undoes live watches, on SQLite as on Redis: the production
  configuration turns Feast's own Redis check off, ``skip_dedup``, so both stores follow this rule);
- ``"materialize"``: ``materialize`` / ``materialize_incremental`` from the offline store, what
  ``feast materialize-incremental`` does (the latest row of each key in the interval wins; live
  pushes are logged offline, so they are among those rows);
- ``"none"``: offline only.

Every function is idempotent: running it again with the same input leaves the same state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from linkedout.export.catalog import Catalog, CatalogError
from linkedout.featurestore.definitions import (
    HISTORY_LENGTH,
    TIMESTAMP,
    USER_HISTORY,
    USER_KEY,
    VIDEO_EMBEDDING,
    VIDEO_KEY,
    VIDEO_META,
    service_name,
)
from linkedout.featurestore.errors import FeatureRepoError
from linkedout.featurestore.offline import (
    list_parts,
    ms_to_timestamps,
    sort_like_dataset,
    video_ids,
    write_part,
)
from linkedout.featurestore.online import configure_redis_client, online_errors, read_rows
from linkedout.featurestore.repo import FeatureRepo, apply
from linkedout.utils import get_logger, progress

if TYPE_CHECKING:
    from feast import FeatureService

LOG = get_logger(__name__)

OnlineMode = Literal["direct", "materialize", "none"]
_MODES = ("direct", "materialize", "none")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Videos:
    """The videos of one catalogue version, row ``i`` describing video ``ids[i]``.

    ``ids`` int64 [N] (non-negative, unique); ``embeddings`` float32 [N, d]; ``gate`` and
    ``contributions`` float32 [N, L] (``L = 0`` for models without a layer fusion); ``popularity``
    int64 [N] (training interactions); ``published`` int64 [N] (ms since the epoch); ``titles`` N
    strings (``""`` when unknown). Validated on construction.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    gate: np.ndarray
    contributions: np.ndarray
    popularity: np.ndarray
    published: np.ndarray
    titles: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        ids = video_ids(self.ids, "Videos.ids")
        n = len(ids)
        if len(np.unique(ids)) != n:
            raise ValueError("Videos.ids must be unique")
        emb = np.asarray(self.embeddings)
        if emb.ndim != 2 or emb.shape[0] != n or emb.dtype.kind != "f":
            raise ValueError(f"Videos.embeddings must be float [N={n}, d], got {emb.dtype} {emb.shape}")
        for name in ("gate", "contributions"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 2 or arr.shape[0] != n or (arr.size and arr.dtype.kind != "f"):
                raise ValueError(f"Videos.{name} must be float [N={n}, L], got {arr.dtype} {arr.shape}")
            object.__setattr__(self, name, arr.astype(np.float32, copy=False))
        if np.asarray(self.gate).shape[1] != np.asarray(self.contributions).shape[1]:
            raise ValueError(f"Videos.gate {np.asarray(self.gate).shape} and Videos.contributions "
                             f"{np.asarray(self.contributions).shape} must have the same L")
        for name in ("popularity", "published"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (n,) or arr.dtype.kind not in "iu":
                raise ValueError(f"Videos.{name} must be integer [N={n}], got {arr.dtype} {arr.shape}")
            object.__setattr__(self, name, arr.astype(np.int64, copy=False))
        titles = tuple(str(t) for t in self.titles) if len(self.titles) else ("",) * n
        if len(titles) != n:
            raise ValueError(f"Videos.titles must have N={n} entries (or none), got {len(titles)}")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "embeddings", emb.astype(np.float32, copy=False))
        object.__setattr__(self, "titles", titles)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[int] | np.ndarray) -> Videos:
        """The rows of ``ids``, in that order (e.g. the videos a catalogue version added);
        ``KeyError`` naming an id that is not here."""
        want = video_ids(np.asarray(ids), "subset ids")
        row = {int(v): i for i, v in enumerate(self.ids)}
        missing = [int(v) for v in want if int(v) not in row]
        if missing:
            raise KeyError(f"videos not in this catalogue: {missing[:10]}")
        idx = np.array([row[int(v)] for v in want], dtype=np.int64)
        return Videos(ids=self.ids[idx], embeddings=self.embeddings[idx], gate=self.gate[idx],
                      contributions=self.contributions[idx], popularity=self.popularity[idx],
                      published=self.published[idx], titles=tuple(self.titles[i] for i in idx))

    @classmethod
    def from_catalog(cls, version_dir: str | Path, titles: Mapping[Any, str] | pd.DataFrame | None = None) -> Videos:
        """Read a ranker version's catalogue as it stands (docs/serving.md §1: the exported videos, less
        those removed, plus those added in place). ``titles``: ``{video id: title}`` or linkedout/data's
        titles table (``item, title``)."""
        try:
            cat = Catalog.load(version_dir)
        except CatalogError as e:
            raise FeatureRepoError(f"no readable catalogue at {version_dir}: {e}") from e
        return cls(ids=cat.ids, embeddings=cat.embeddings, gate=cat.gate, contributions=cat.contributions,
                   popularity=cat.popularity, published=cat.published, titles=_titles_for(cat.ids, titles))


def _titles_for(ids: np.ndarray, titles: Mapping[Any, str] | pd.DataFrame | None) -> tuple[str, ...]:
    if titles is None:
        return ()
    if isinstance(titles, pd.DataFrame):
        titles = dict(zip(titles["item"].astype(str), titles["title"].fillna("").astype(str)))
    by_id = {str(k): str(v) for k, v in titles.items()}
    return tuple(by_id.get(str(int(i)), "") for i in ids)


def _list_array(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """Rows of a 2-D array as an arrow ``list<value_type>`` array (no Python loop)."""
    n, width = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=value_type))


def videos_tables(videos: Videos, model_version: str, published_at: datetime) -> tuple[pa.Table, pa.Table]:
    """The ``video_meta`` and ``video_embedding`` rows of ``videos``, stamped ``published_at``."""
    n = len(videos)
    ts = ms_to_timestamps(np.full(n, int(published_at.timestamp() * 1000), dtype=np.int64))
    ids = pa.array(videos.ids, type=pa.int64())
    meta = pa.table({VIDEO_KEY: ids, "title": pa.array(list(videos.titles), type=pa.string()),
                     "published": pa.array(videos.published), "popularity": pa.array(videos.popularity),
                     TIMESTAMP: ts})
    emb = pa.table({VIDEO_KEY: ids, "embedding": _list_array(videos.embeddings, pa.float32()),
                    "gate": _list_array(videos.gate, pa.float32()),
                    "contributions": _list_array(videos.contributions, pa.float32()),
                    "model_version": pa.array([model_version] * n, type=pa.string()), TIMESTAMP: ts})
    return meta, emb


def _check_mode(online: str) -> None:
    if online not in _MODES:
        raise ValueError(f"online must be one of {_MODES}, got {online!r}")


def write_online(repo: FeatureRepo, view: str, table: pa.Table, *, batch_size: int = 5000,
                 desc: str | None = None) -> int:
    """``write_to_online_store`` of ``table``'s rows in batches (with progress); returns the rows written."""
    if table.num_rows == 0:
        return 0
    configure_redis_client(repo)
    batches = range(0, table.num_rows, batch_size)
    with online_errors(repo, f"writing {view} online"):
        for lo in progress(batches, total=len(batches), desc=desc or f"{view} -> online", unit="batch"):
            df = table.slice(lo, batch_size).to_pandas()
            repo.store.write_to_online_store(view, df, allow_registry_cache=True)
    return table.num_rows


def materialize(repo: FeatureRepo, views: list[str] | None = None, *, end: datetime | None = None,
                incremental: bool = True) -> dict[str, str]:
    """Load the offline store into the online store, as ``feast materialize(-incremental)`` does.

    ``incremental``: from where the last materialisation of each view ended (the first time, from
    the epoch: Feast's own default for a view without TTL would skip rows older than a year);
    otherwise the whole interval from the epoch to ``end`` (default: now). Views with no offline
    data are skipped. Returns ``{view: "incremental" | "full" | "empty"}``.
    """
    end = end or datetime.now(UTC)
    names = views or list(repo.definitions.feature_views())
    tables = {USER_HISTORY: USER_HISTORY, VIDEO_META: VIDEO_META, VIDEO_EMBEDDING: VIDEO_EMBEDDING}
    unknown = [v for v in names if v not in tables]
    if unknown:
        raise ValueError(f"unknown feature views {unknown}; expected some of {sorted(tables)}")
    configure_redis_client(repo)
    done: dict[str, str] = {}
    for view in names:
        if not list_parts(repo, tables[view]):
            LOG.info("materialize: no offline data for %s yet, skipped", view)
            done[view] = "empty"
            continue
        with online_errors(repo, f"materializing {view}"):
            fv = repo.store.get_feature_view(view)
            if incremental and fv.most_recent_end_time is not None:
                repo.store.materialize_incremental(end_date=end, feature_views=[view])
                done[view] = "incremental"
            else:
                repo.store.materialize(start_date=_EPOCH, end_date=end, feature_views=[view])
                done[view] = "full"
    return done


@dataclass(frozen=True)
class VideoWrite:
    """What :func:`write_videos` wrote: the model version, the rows, the offline files, the online path."""

    model_version: str
    rows: int
    offline: tuple[str, str]
    online: str
    published_at: datetime


def write_videos(repo: FeatureRepo, videos: Videos, *, model_version: str, online: OnlineMode = "direct",
                 published_at: datetime | None = None, part: str | None = None) -> VideoWrite:
    """Write the metadata and embeddings of ``videos`` as published by ``model_version`` (``NAME_vV``).

    Offline: ``video_meta/{part}.parquet`` and ``video_embedding/{part}.parquet`` (``part`` defaults
    to ``model_version``: a version's whole catalogue; videos added to it live go to parts of their
    own), replaced on a re-run. Rows are stamped ``published_at`` (default: now), so the last
    publication of a video wins. Videos absent from ``videos`` keep their older rows.
    """
    _check_mode(online)
    published_at = published_at or datetime.now(UTC)
    if published_at.tzinfo is None:
        raise ValueError("published_at must be timezone-aware")
    meta, emb = videos_tables(videos, model_version, published_at)
    part = part or model_version
    files = (write_part(repo, VIDEO_META, part, meta), write_part(repo, VIDEO_EMBEDDING, part, emb))
    if online == "direct":
        write_online(repo, VIDEO_META, meta)
        write_online(repo, VIDEO_EMBEDDING, emb)
    elif online == "materialize":
        materialize(repo, [VIDEO_META, VIDEO_EMBEDDING], end=datetime.now(UTC) + timedelta(seconds=1))
    LOG.info("wrote %d videos of %s (online: %s)", len(videos), model_version, online)
    return VideoWrite(model_version, len(videos), files, online, published_at)


def histories_from_interactions(interactions: pd.DataFrame, max_len: int = HISTORY_LENGTH) -> pd.DataFrame:
    """Each user's last ``max_len`` watched videos from linkedout/data's interactions (``user, item,
    timestamp`` ms): a DataFrame ``user_id, watched`` (list of int64, most recent last),
    ``last_watch`` (int64 ms) and ``event_timestamp`` (both the last watch), one row per user in
    the dataset's user order."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    missing = [c for c in ("user", "item", "timestamp") if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions: missing columns {missing} (expected user, item, timestamp)")
    if not pd.api.types.is_integer_dtype(interactions["timestamp"]):
        raise ValueError(f"interactions.timestamp must be int64 ms, got dtype {interactions['timestamp'].dtype}")
    df = sort_like_dataset(interactions[["user", "item", "timestamp"]].astype({"user": str}))
    items = video_ids(df["item"].to_numpy(), "interactions.item")
    users = df["user"].to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(df) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(df)].astype(np.int64)
    watched = [items[max(s, e - max_len):e] for s, e in zip(starts, ends)]
    ts = df["timestamp"].to_numpy()[ends - 1] if len(df) else np.array([], dtype=np.int64)
    return pd.DataFrame({USER_KEY: users[starts], "watched": watched, "last_watch": ts.astype(np.int64),
                         TIMESTAMP: pd.to_datetime(ts, unit="ms", utc=True)})


def histories_table(histories: pd.DataFrame) -> pa.Table:
    """``user_id, watched[, last_watch], event_timestamp`` rows as the ``user_history`` table (validated;
    ``last_watch`` defaults to the event time)."""
    missing = [c for c in (USER_KEY, "watched", TIMESTAMP) if c not in histories.columns]
    if missing:
        raise ValueError(f"histories: missing columns {missing} (expected {USER_KEY}, watched, {TIMESTAMP})")
    watched = []
    for i, w in enumerate(histories["watched"]):
        arr = np.asarray(w)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"histories.watched[{i}] must be a list of integer video ids, got {w!r}")
        if len(arr) > HISTORY_LENGTH:
            raise ValueError(f"histories.watched[{i}] holds {len(arr)} ids, more than {HISTORY_LENGTH}")
        watched.append(arr.astype(np.int64))
    ts = pd.to_datetime(histories[TIMESTAMP], utc=True).dt.as_unit("ms")
    ts_ms = ts.astype(np.int64).to_numpy()
    if "last_watch" in histories.columns:
        last = histories["last_watch"]
        if not pd.api.types.is_integer_dtype(last):
            raise ValueError(f"histories.last_watch must be int64 ms since the epoch, got dtype {last.dtype}")
        last_ms = last.to_numpy(dtype=np.int64)
    else:
        last_ms = ts_ms
    return pa.table({USER_KEY: pa.array(histories[USER_KEY].astype(str).to_numpy(dtype=object), type=pa.string()),
                     "watched": pa.array(watched, type=pa.list_(pa.int64())),
                     "last_watch": pa.array(last_ms, type=pa.int64()),
                     TIMESTAMP: pa.array(ts, type=pa.timestamp("ms", tz="UTC"))})


def online_last_watch(ts: datetime | None, values: dict[str, Any] | None) -> int | None:
    """The ms time of an online history row's last watch (``None``: no row)."""
    if values is None:
        return None
    last = values.get("last_watch")
    return int(last) if last is not None else int(ts.timestamp() * 1000) if ts is not None else None


def newer_than_online(repo: FeatureRepo, table: pa.Table) -> pa.Table:
    """The history rows of ``table`` whose last watch is not older than the user's row online."""
    keys = table.column(USER_KEY).to_pylist()
    online = read_rows(repo, USER_HISTORY, keys, ["last_watch"])
    new_ms = table.column("last_watch").to_numpy()
    keep = np.ones(len(keys), dtype=bool)
    for i, (ts, values) in enumerate(online):
        last = online_last_watch(ts, values)
        if last is not None and last > new_ms[i]:
            keep[i] = False
    if not keep.all():
        LOG.info("%s: kept %d newer online rows over older input rows", USER_HISTORY, int((~keep).sum()))
    return table.filter(pa.array(keep))


def write_histories(repo: FeatureRepo, histories: pd.DataFrame, *, online: OnlineMode = "direct",
                    part: str = "batch", check_newer: bool = True) -> int:
    """Write user histories (:func:`histories_from_interactions`) offline (``user_history/{part}.parquet``)
    and online. Returns the rows written online (direct path: those not older than the live row).

    ``check_newer=False`` skips reading the rows online first (about a third of the time of a bulk
    load): for a store known to hold no newer histories, e.g. the first load of a fresh one.
    """
    _check_mode(online)
    table = histories_table(histories)
    write_part(repo, USER_HISTORY, part, table)
    if online == "direct":
        written = 0
        step = 20_000
        for lo in range(0, table.num_rows, step):
            chunk = table.slice(lo, step)
            if check_newer:
                chunk = newer_than_online(repo, chunk)
            written += write_online(repo, USER_HISTORY, chunk, batch_size=step, desc="user_history -> online")
        return written
    if online == "materialize":
        materialize(repo, [USER_HISTORY], end=datetime.now(UTC) + timedelta(seconds=1))
        return table.num_rows
    return 0


def register_model_version(repo: FeatureRepo, model: str, version: int) -> FeatureService:
    """Register the FeatureService ``NAME_vV`` (and the definitions); idempotent."""
    fs = repo.definitions.feature_service(model, version)
    apply(repo, [fs])
    LOG.info("registered the feature service %s", fs.name)
    return fs


def publish_model_version(repo: FeatureRepo, model: str, version: int, videos: Videos, *,
                          histories: pd.DataFrame | None = None, online: OnlineMode = "direct") -> FeatureService:
    """Everything Feast holds for a new model version: its videos (stamped ``NAME_vV``), optionally the
    users' histories, and its FeatureService. Safe to re-run."""
    name = service_name(model, version)  # validates before anything is written
    write_videos(repo, videos, model_version=name, online=online)
    if histories is not None:
        write_histories(repo, histories, online=online)
    return register_model_version(repo, model, version)


def publish_catalog(repo: FeatureRepo, version_dir: str | Path, *, titles: Mapping[Any, str] | pd.DataFrame | None = None,
                    histories: pd.DataFrame | None = None, online: OnlineMode = "direct") -> FeatureService:
    """:func:`publish_model_version` from an exported ranker version directory (``catalog.json`` names
    the model and version; docs/serving.md §1)."""
    path = Path(version_dir) / "catalog.json"
    try:
        meta = json.loads(path.read_text())
        model, version = str(meta["model"]), int(meta["version"])
    except FileNotFoundError as e:
        raise FeatureRepoError(f"no catalogue metadata at {path}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise FeatureRepoError(f"{path} is not a catalogue description (needs 'model' and 'version'): {e}") from e
    return publish_model_version(repo, model, version, Videos.from_catalog(version_dir, titles),
                                 histories=histories, online=online)
