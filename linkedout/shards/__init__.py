"""Feature shards: per-video backbone hidden states ``[L, K, D]`` in shards, locally or on S3.

(Not the feature store: that is Feast, :mod:`linkedout.featurestore`.)

- :mod:`.storage`: the ``Storage`` protocol (atomic writes), ``LocalStorage``, ``S3Storage`` and
  ``S3Config`` (bounded timeouts and retries), ``open_storage(uri)``.
- :mod:`.layout`: where each object of a store lives (``spec.json``, ``shards/``, ``index.json``, ...).
- :mod:`.spec`: ``FeatureSpec`` (the extraction config stored beside the features), ``read_spec``.
- :mod:`.manifest`: ``ShardManifest`` (what a shard holds), ``FeatureIndex`` (where each video is),
  the checks of shard files against their manifest.
- :mod:`.writer`: ``ShardWriter`` (crash-safe, resumable shard writes, ``drop_videos``,
  ``finalize`` -> ``index.json``).
- :mod:`.reader`: ``FeatureReader`` (random access by video id, memory-mapped locally, cached from
  S3, every shard file's hash checked when first opened).
- :mod:`.quant`: symmetric int8 with one float32 scale per ``(layer, token)`` row.
- :mod:`.info`: storage arithmetic for ``linkedout features info``.
- :mod:`.verify`: ``verify_store`` (every checksum, every id once: ``linkedout features verify``)
  and ``store_digest`` (the store's content fingerprint for the stages downstream).
- :mod:`.items` (imports torch, so not re-exported here): item index -> features for training.
"""

from linkedout.shards.info import format_info, info_from_store, storage_summary
from linkedout.shards.manifest import FeatureIndex, ShardManifest, list_shards
from linkedout.shards.quant import dequantize_int8, quantize_int8
from linkedout.shards.reader import FeatureReader
from linkedout.shards.spec import FeatureSpec, read_spec
from linkedout.shards.storage import (
    LocalStorage,
    MissingKeyError,
    S3Config,
    S3Storage,
    ShardStoreError,
    Storage,
    StoreMismatch,
    open_storage,
)
from linkedout.shards.writer import ShardWriter

__all__ = [
    "FeatureIndex",
    "FeatureReader",
    "FeatureSpec",
    "LocalStorage",
    "MissingKeyError",
    "S3Config",
    "S3Storage",
    "ShardManifest",
    "ShardStoreError",
    "ShardWriter",
    "Storage",
    "StoreMismatch",
    "dequantize_int8",
    "format_info",
    "info_from_store",
    "list_shards",
    "open_storage",
    "quantize_int8",
    "read_spec",
    "storage_summary",
]
