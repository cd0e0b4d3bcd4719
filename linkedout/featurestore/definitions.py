"""The Feast objects of LinkedOut, declared in one module (docs/serving.md §2).

Every environment uses these same definitions; only the place of the offline data differs (a local
directory or ``s3://bucket/prefix``, with an optional endpoint for S3-compatible servers), so
:func:`build_definitions` takes that and nothing else. The offline store holds one parquet
directory per table under that root::

    ROOT/interactions/     user_id STRING, video_id INT64, event_timestamp   (the watch log)
    ROOT/user_history/     user_id, watched list<int64> (last <= 10, most recent last), last_watch (ms),
                           event_timestamp
    ROOT/video_meta/       video_id, title, published (ms), popularity, event_timestamp
    ROOT/video_embedding/  video_id, embedding, gate, contributions (list<float32>), model_version,
                           event_timestamp

``user_history.event_timestamp`` and ``last_watch`` are the time of the user's last watch; the video
tables' is the time they were published, so the last publication of a video wins, online and in
point-in-time joins. ``interactions`` is a plain data source (no feature view): the training data
is read from it (:func:`linkedout.featurestore.offline.read_interactions`).

One :class:`~feast.FeatureService` per published model version, ``NAME_vV``
(:meth:`Definitions.feature_service`), groups the three feature views with the model's name and
version as tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float32, Int64, String

#: The Feast project every environment registers into.
PROJECT = "linkedout"
#: Watched ids kept per user (the ranker's ``max_history``, docs/serving.md §1).
HISTORY_LENGTH = 10
#: Name of the event-time column of every offline table.
TIMESTAMP = "event_timestamp"

VIDEO, VIDEO_KEY = "video", "video_id"
USER, USER_KEY = "user", "user_id"
INTERACTIONS = "interactions"
VIDEO_META = "video_meta"
VIDEO_EMBEDDING = "video_embedding"
USER_HISTORY = "user_history"
USER_HISTORY_PUSH = "user_history_push"
#: The reference the transformer reads online (by name, never by position).
WATCHED = f"{USER_HISTORY}:watched"

#: Offline tables under the root, in the order they are listed.
TABLES = (INTERACTIONS, USER_HISTORY, VIDEO_META, VIDEO_EMBEDDING)

_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def service_name(model: str, version: int) -> str:
    """``NAME_vV``, the FeatureService of one published model version (``linkedout_v3``)."""
    if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
        raise ValueError(f"model name must match {_MODEL_NAME.pattern} (lower case, digits, '_'), got {model!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"model version must be a positive integer, got {version!r}")
    return f"{model}_v{version}"


def table_uri(offline_root: str, table: str) -> str:
    """Where one offline table lives: ``ROOT/table`` (a directory, or an S3 prefix)."""
    if table not in TABLES:
        raise ValueError(f"unknown offline table {table!r}; expected one of {TABLES}")
    return f"{offline_root.rstrip('/')}/{table}"


@dataclass(frozen=True)
class Definitions:
    """The entities, sources, push source and feature views of one offline location."""

    offline_root: str
    s3_endpoint: str | None
    video: Entity
    user: Entity
    interactions_source: FileSource
    user_history_source: FileSource
    video_meta_source: FileSource
    video_embedding_source: FileSource
    user_history_push: PushSource
    user_history: FeatureView
    video_meta: FeatureView
    video_embedding: FeatureView

    def objects(self) -> list[Any]:
        """Everything ``feast apply`` registers, feature services aside."""
        return [self.video, self.user, self.interactions_source, self.user_history_source,
                self.video_meta_source, self.video_embedding_source, self.user_history_push,
                self.user_history, self.video_meta, self.video_embedding]

    def feature_views(self) -> dict[str, FeatureView]:
        return {fv.name: fv for fv in (self.user_history, self.video_meta, self.video_embedding)}

    def feature_service(self, model: str, version: int) -> FeatureService:
        """The FeatureService ``NAME_vV`` of a published model version: the user's history and the
        videos' metadata and embeddings, tagged with the model's name and version."""
        return FeatureService(
            name=service_name(model, version),
            features=[self.user_history, self.video_meta, self.video_embedding],
            tags={"model": model, "version": str(version)},
            description=f"features served with {model} version {version}",
        )


def _source(name: str, offline_root: str, s3_endpoint: str | None, description: str) -> FileSource:
    return FileSource(
        name=f"{name}_source" if name != INTERACTIONS else INTERACTIONS,
        path=table_uri(offline_root, name),
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP,
        s3_endpoint_override=s3_endpoint,
        description=description,
    )


def build_definitions(offline_root: str, s3_endpoint: str | None = None) -> Definitions:
    """The Feast objects reading their offline data under ``offline_root``.

    ``offline_root`` is an absolute directory or ``s3://bucket/prefix``; ``s3_endpoint`` (e.g.
    ``http://minio:9000``) is the S3-compatible server to use instead of AWS, for ``s3://`` roots.
    """
    if not isinstance(offline_root, str) or not offline_root:
        raise ValueError(f"offline_root must be a directory or s3://bucket/prefix, got {offline_root!r}")
    if s3_endpoint and not offline_root.startswith("s3://"):
        raise ValueError(f"s3_endpoint is only for an s3:// offline_root, got {offline_root!r}")

    video = Entity(name=VIDEO, join_keys=[VIDEO_KEY], value_type=ValueType.INT64,
                   description="a video of the catalogue (non-negative integer id)")
    user = Entity(name=USER, join_keys=[USER_KEY], value_type=ValueType.STRING,
                  description="a user (string id, as in the dataset)")

    interactions = _source(INTERACTIONS, offline_root, s3_endpoint,
                           "the watch log: one row per (user_id, video_id, event_timestamp)")
    history_src = _source(USER_HISTORY, offline_root, s3_endpoint,
                          "each user's last watched videos, built from the interactions")
    meta_src = _source(VIDEO_META, offline_root, s3_endpoint, "video metadata, one file per publication")
    emb_src = _source(VIDEO_EMBEDDING, offline_root, s3_endpoint,
                      "item embeddings and gate weights, one file per published model version")
    push = PushSource(name=USER_HISTORY_PUSH, batch_source=history_src,
                      description="live history updates when a user watches a video")

    no_expiry = timedelta(0)  # histories and videos are valid until replaced
    user_history = FeatureView(
        name=USER_HISTORY,
        entities=[user],
        ttl=no_expiry,
        schema=[Field(name=USER_KEY, dtype=String),
                Field(name="watched", dtype=Array(Int64),
                      description=f"the last <= {HISTORY_LENGTH} watched video ids, most recent last"),
                # exact to the ms, unlike the online event time (Feast's SQLite store keeps whole
                # seconds): what makes re-pushing a watch a no-op, and newer-row checks exact
                Field(name="last_watch", dtype=Int64, description="time of the last watch, ms since the epoch")],
        source=push,
        online=True,
        description="what the transformer reads online to rank for a user",
    )
    video_meta = FeatureView(
        name=VIDEO_META,
        entities=[video],
        ttl=no_expiry,
        schema=[Field(name=VIDEO_KEY, dtype=Int64),
                Field(name="title", dtype=String),
                Field(name="published", dtype=Int64, description="publish time, ms since the epoch"),
                Field(name="popularity", dtype=Int64, description="training interactions")],
        source=meta_src,
        online=True,
    )
    video_embedding = FeatureView(
        name=VIDEO_EMBEDDING,
        entities=[video],
        ttl=no_expiry,
        schema=[Field(name=VIDEO_KEY, dtype=Int64),
                Field(name="embedding", dtype=Array(Float32), description="item embedding [d]"),
                Field(name="gate", dtype=Array(Float32), description="gate weights pi [L] (empty: no fusion)"),
                Field(name="contributions", dtype=Array(Float32), description="layer shares [L]"),
                Field(name="model_version", dtype=String, description="NAME_vV that published the row")],
        source=emb_src,
        online=True,
    )
    return Definitions(offline_root=offline_root, s3_endpoint=s3_endpoint or None, video=video, user=user,
                       interactions_source=interactions, user_history_source=history_src,
                       video_meta_source=meta_src, video_embedding_source=emb_src,
                       user_history_push=push, user_history=user_history, video_meta=video_meta,
                       video_embedding=video_embedding)
