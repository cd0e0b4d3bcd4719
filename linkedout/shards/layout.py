"""Where each object of a shard store lives, and the format stamp of its JSON documents.

Layout under the store root (a directory or ``s3://bucket/prefix``)::

    spec.json                         the extraction config (FeatureSpec), written first
    shards/shard-00000.data.npy       float16 [n, L, K, D]  or  int8 [n, L, K, D]
    shards/shard-00000.scale.npy      float32 [n, L, K]     (int8 only: per-row scales)
    shards/shard-00000.json           the shard's manifest, written LAST
    ...
    index.json                        video id -> [shard, row], and failed ids (written by finalize)
    dataset.json                      which dataset filled the store (written by the extraction)
    failures.json                     the extraction's failure summary
"""

from __future__ import annotations

import re

FORMAT = "linkedout-features"
FORMAT_VERSION = 1
SPEC_KEY = "spec.json"
INDEX_KEY = "index.json"
DATASET_KEY = "dataset.json"  # which dataset the store's videos belong to (written by the extraction)
FAILURES_KEY = "failures.json"  # the extraction's failure summary
SHARD_DIR = "shards"
MANIFEST_KEY_PATTERN = re.compile(r"^shards/shard-(\d{5,})\.json$")  # group 1: the shard index
DATA_KEY_PATTERN = re.compile(r"^shards/shard-(\d{5,})\.(data|scale)\.npy$")  # groups: the shard index, the file


def manifest_key(shard: int) -> str:
    """The key of shard ``shard``'s manifest."""
    return f"{SHARD_DIR}/shard-{shard:05d}.json"


def data_key(shard: int) -> str:
    """The key of shard ``shard``'s values (``.npy``)."""
    return f"{SHARD_DIR}/shard-{shard:05d}.data.npy"


def scale_key(shard: int) -> str:
    """The key of shard ``shard``'s int8 scales (``.npy``)."""
    return f"{SHARD_DIR}/shard-{shard:05d}.scale.npy"
