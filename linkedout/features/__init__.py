"""Feature store: per-video backbone hidden states ``[L, K, D]`` in shards, locally or on S3.

- :mod:`.storage`: the ``Storage`` protocol (atomic writes), ``LocalStorage``, ``S3Storage``,
  ``open_storage(uri)``.
- :mod:`.shards`: ``FeatureSpec`` (the extraction config stored beside the features),
  ``ShardWriter`` (crash-safe, resumable shard writes + ``finalize`` -> ``index.json``) and
  ``FeatureReader`` (random access by video id, memory-mapped locally, cached from S3).
- :mod:`.quant`: symmetric int8 with one float32 scale per ``(layer, token)`` row.
- :mod:`.info`: storage arithmetic for ``linkedout features info``.
- :mod:`.items` (imports torch, so not re-exported here): item index -> features for training.
"""

from linkedout.features.info import format_info, info_from_store, storage_summary
from linkedout.features.quant import dequantize_int8, quantize_int8
from linkedout.features.shards import (
    FeatureIndex,
    FeatureReader,
    FeatureSpec,
    ShardManifest,
    ShardWriter,
    list_shards,
    read_spec,
)
from linkedout.features.storage import (
    FeatureStoreError,
    LocalStorage,
    MissingKeyError,
    S3Storage,
    Storage,
    open_storage,
)

__all__ = [
    "FeatureIndex",
    "FeatureReader",
    "FeatureSpec",
    "FeatureStoreError",
    "LocalStorage",
    "MissingKeyError",
    "S3Storage",
    "ShardManifest",
    "ShardWriter",
    "Storage",
    "dequantize_int8",
    "format_info",
    "info_from_store",
    "list_shards",
    "open_storage",
    "quantize_int8",
    "read_spec",
    "storage_summary",
]
