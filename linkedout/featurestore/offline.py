"""The offline store: parquet tables under the repository's offline root, and the training data read back.

Writes go through :mod:`linkedout.shards.storage` (atomic: a reader sees no file or the whole
file; on S3 one PutObject), one file per part, named by the caller (``dataset``, ``linkedout_v3``)
or by the content's hash, so re-running a write replaces the same file instead of adding a copy.
Reads of the training data go through Feast's offline store (``pull_all_from_table_or_query`` on
the registered ``interactions`` source), so they see what Feast sees, locally or on S3.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from linkedout.data.microlens import sort_ids
from linkedout.featurestore.definitions import INTERACTIONS, TABLES, TIMESTAMP, USER_KEY, VIDEO_KEY
from linkedout.featurestore.errors import FeatureRepoError, OfflineStoreError
from linkedout.featurestore.repo import FeatureRepo
from linkedout.utils import get_logger

LOG = get_logger(__name__)

#: Arrow schema of the ``interactions`` table.
INTERACTIONS_SCHEMA = pa.schema([(USER_KEY, pa.string()), (VIDEO_KEY, pa.int64()),
                                 (TIMESTAMP, pa.timestamp("ms", tz="UTC"))])


def ms_to_timestamps(ms: np.ndarray) -> pa.Array:
    """int64 milliseconds since the epoch -> an arrow ``timestamp[ms, UTC]`` array."""
    return pa.array(np.asarray(ms, dtype=np.int64), type=pa.int64()).cast(pa.timestamp("ms", tz="UTC"))


def video_ids(values: Sequence[object] | np.ndarray | pd.Series, what: str) -> np.ndarray:
    """Video ids as int64 (the ``video`` entity is INT64); ``ValueError`` naming ``what`` and a bad id."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        out = arr.astype(np.int64)
    else:
        text = pd.Series(arr, dtype=object).astype(str)
        bad = ~text.str.fullmatch(r"[0-9]{1,18}")
        if bad.any():
            raise ValueError(f"{what}: video ids must be non-negative integers (the Feast 'video' entity is INT64), "
                             f"got {text[bad].iloc[0]!r} ({int(bad.sum())} such)")
        out = text.astype(np.int64).to_numpy()
    if len(out) and out.min() < 0:
        raise ValueError(f"{what}: video ids must be non-negative, got {int(out.min())}")
    return out


def interactions_table(interactions: pd.DataFrame) -> pa.Table:
    """linkedout/data's interactions (``user:str, item:str, timestamp:int64`` ms) as the offline table."""
    missing = [c for c in ("user", "item", "timestamp") if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions: missing columns {missing} (expected user, item, timestamp)")
    ts = interactions["timestamp"]
    if not pd.api.types.is_integer_dtype(ts):
        raise ValueError(f"interactions.timestamp must be int64 milliseconds since the epoch, got dtype {ts.dtype}")
    users = interactions["user"]
    if users.isna().any():
        raise ValueError("interactions.user has missing values")
    return pa.table([pa.array(users.astype(str).to_numpy(dtype=object), type=pa.string()),
                     pa.array(video_ids(interactions["item"].to_numpy(), "interactions.item")),
                     ms_to_timestamps(ts.to_numpy())], schema=INTERACTIONS_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def content_part(table: pa.Table, prefix: str) -> str:
    """A part name from the table's content: the same rows give the same file (idempotent appends)."""
    digest = hashlib.sha256(parquet_bytes(table)).hexdigest()[:16]
    return f"{prefix}-{digest}"


def write_part(repo: FeatureRepo, table_name: str, part: str, table: pa.Table) -> str:
    """Write (or replace) ``ROOT/table_name/part.parquet``; returns its URI."""
    if table_name not in TABLES:
        raise ValueError(f"unknown offline table {table_name!r}; expected one of {TABLES}")
    if not part or "/" in part or part.startswith((".", "_")):
        raise ValueError(f"part must be a plain file name not starting with '.' or '_', got {part!r}")
    storage = repo.offline_storage()
    key = f"{table_name}/{part}.parquet"
    try:
        storage.write_bytes(key, parquet_bytes(table))
    except Exception as e:
        raise OfflineStoreError(f"cannot write {key} under {storage.uri}: {e}") from e
    uri = f"{repo.table_uri(table_name)}/{part}.parquet"
    LOG.info("wrote %d rows to %s", table.num_rows, uri)
    return uri


def list_parts(repo: FeatureRepo, table_name: str) -> list[str]:
    """The parquet files of one offline table (the names Dask reads: ``*.parquet``, no hidden files)."""
    storage = repo.offline_storage()
    try:
        keys = storage.list(f"{table_name}/")
    except Exception as e:
        raise OfflineStoreError(f"cannot list {table_name}/ under {storage.uri}: {e}") from e
    return [k for k in keys if k.endswith(".parquet") and not k.rsplit("/", 1)[-1].startswith((".", "_"))]


def write_interactions(repo: FeatureRepo, interactions: pd.DataFrame, *, part: str = "dataset") -> str:
    """Write a dataset's interactions (linkedout/data's ``user, item, timestamp``) to the offline store.

    ``part`` names the file: writing the same part again replaces it (a re-run, or the dataset after
    a change); other parts (the live watch log of :func:`linkedout.featurestore.push.push_watches`)
    stay. Returns the file's URI.
    """
    return write_part(repo, INTERACTIONS, part, interactions_table(interactions))


def sort_like_dataset(df: pd.DataFrame) -> pd.DataFrame:
    """Sort ``user, item, timestamp`` rows as linkedout/data does: users in ``sort_ids`` order (numeric ids
    numerically), then time; ties keep their order."""
    codes, uniques = pd.factorize(df["user"], sort=False)
    order_of = {u: r for r, u in enumerate(sort_ids([str(u) for u in uniques]))}
    rank = np.array([order_of[str(u)] for u in uniques], dtype=np.int64)
    order = np.lexsort((np.arange(len(df)), df["timestamp"].to_numpy(), rank[codes]))
    return df.iloc[order].reset_index(drop=True)


def read_interactions(repo: FeatureRepo, *, start: datetime | None = None,
                      end: datetime | None = None) -> pd.DataFrame:
    """The training interactions from Feast's offline store, as linkedout/data holds them.

    Returns a DataFrame ``user:str, item:str, timestamp:int64`` (ms since the epoch), sorted by user
    (numeric ids numerically) then time, exact duplicates (the same watch written twice) dropped;
    ``start``/``end`` (timezone-aware) bound the event time, both inclusive. This is what
    ``linkedout.data.preprocess`` and ``leave_one_out`` take.
    """
    if not list_parts(repo, INTERACTIONS):
        raise FeatureRepoError(f"no interactions in the offline store at {repo.table_uri(INTERACTIONS)}: "
                               f"write them first (linkedout.featurestore.write_interactions)")
    store = repo.store
    source = repo.definitions.interactions_source
    try:
        job = store.provider.offline_store.pull_all_from_table_or_query(
            config=store.config, data_source=source, join_key_columns=[USER_KEY],
            feature_name_columns=[VIDEO_KEY], timestamp_field=TIMESTAMP,
            start_date=start, end_date=end)
        table = job.to_arrow()
    except Exception as e:
        raise OfflineStoreError(f"cannot read the interactions at {source.path} through Feast's offline store: "
                                f"{type(e).__name__}: {e}") from e
    missing = [c for c in (USER_KEY, VIDEO_KEY, TIMESTAMP) if c not in table.column_names]
    if missing:
        raise FeatureRepoError(f"the interactions at {source.path} lack columns {missing}")
    ts = table.column(TIMESTAMP)
    if not pa.types.is_timestamp(ts.type):
        raise FeatureRepoError(f"{source.path}: {TIMESTAMP} must be a timestamp, got {ts.type}")
    ms = ts.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    df = pd.DataFrame({
        "user": table.column(USER_KEY).to_pandas().astype(str).to_numpy(dtype=object),
        "item": table.column(VIDEO_KEY).to_numpy(zero_copy_only=False).astype(np.int64).astype(str).astype(object),
        "timestamp": ms.astype(np.int64),
    })
    df = df.drop_duplicates(ignore_index=True)
    return sort_like_dataset(df)
