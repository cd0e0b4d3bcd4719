"""Storage arithmetic for ``linkedout features info``: bytes per video and per catalogue.

Units: MB and GB are decimal (1e6, 1e9 bytes), as in the paper; MiB/GiB are also reported.

Paper setting (6 layers x 64 tokens x 4096 hidden, float16): 6 * 64 * 4096 * 2 = 3,145,728 B per
video = 3.15 MB (3.00 MiB). For MicroLens-100K's 19,738 videos that is 62,090,379,264 B = 62.09 GB
(57.83 GiB). DESIGN.md / the paper quote 62.2 GB: that is 19,738 x 3.15 MB, the per-video figure
rounded *before* multiplying (62.17 GB -> 62.2); the exact total is 62.09 GB. int8 with per-row
float32 scales: 6 * 64 * (4096 + 4) = 1,574,400 B per video, 50.05 % of float16 (31.08 GB).
With Qwen2-7B's true hidden size 3584 float16 is 2,752,512 B per video (54.33 GB in all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from linkedout.shards.layout import INDEX_KEY
from linkedout.shards.reader import FeatureReader
from linkedout.shards.spec import FeatureSpec


def storage_summary(spec: FeatureSpec, num_videos: int) -> dict[str, Any]:
    """Bytes per video and in total for ``num_videos`` videos stored as ``spec`` (file headers excluded).

    Keys: ``backbone, dtype, shape [L, K, D], num_videos, data_bytes_per_video, scale_bytes_per_video,
    bytes_per_video, mb_per_video, mib_per_video, float16_bytes_per_video, ratio_to_float16,
    total_bytes, total_gb, total_gib``.
    """
    if isinstance(num_videos, bool) or not isinstance(num_videos, int | np.integer) or num_videos < 0:
        raise ValueError(f"num_videos must be an integer >= 0, got {num_videos!r}")
    per_video = spec.bytes_per_video()
    fp16 = spec.rows_per_video * spec.hidden * 2
    total = per_video * int(num_videos)
    return {
        "backbone": spec.backbone,
        "dtype": spec.dtype,
        "shape": list(spec.shape),
        "num_videos": int(num_videos),
        "data_bytes_per_video": spec.data_bytes_per_video(),
        "scale_bytes_per_video": spec.scale_bytes_per_video(),
        "bytes_per_video": per_video,
        "mb_per_video": per_video / 1e6,
        "mib_per_video": per_video / 2**20,
        "float16_bytes_per_video": fp16,
        "ratio_to_float16": per_video / fp16,
        "total_bytes": total,
        "total_gb": total / 1e9,
        "total_gib": total / 2**30,
    }


def info_from_store(reader: FeatureReader) -> dict[str, Any]:
    """:func:`storage_summary` for the videos of a store, plus what it actually takes in storage.

    Extra keys: ``uri, num_shards, num_failed, stored_shard_bytes`` (data and scale files of the
    indexed shards, from their manifests, .npy headers included), ``stored_bytes_per_video``,
    ``store_total_bytes`` / ``store_total_gb`` (every object under the store: spec, index,
    manifests, and leftovers of killed runs if any) and ``has_index`` (whether index.json exists).
    On S3 this reads every manifest and asks the size of every object (one request each).
    """
    summary = storage_summary(reader.spec, len(reader))
    shard_bytes = sum(entry.bytes for shard in reader.shards for entry in reader.manifest(shard).files.values())
    storage = reader.storage
    total = sum(storage.size(key) for key in storage.list())
    summary.update(
        uri=storage.uri,
        num_shards=len(reader.shards),
        num_failed=len(reader.failed),
        stored_shard_bytes=shard_bytes,
        stored_bytes_per_video=shard_bytes / len(reader) if len(reader) else 0.0,
        store_total_bytes=total,
        store_total_gb=total / 1e9,
        has_index=storage.exists(INDEX_KEY),
    )
    return summary


def format_info(summary: Mapping[str, Any]) -> str:
    """Human-readable lines for a :func:`storage_summary` or :func:`info_from_store` result."""
    L, K, D = summary["shape"]
    lines = []
    if "uri" in summary:
        lines.append(f"store:            {summary['uri']}")
    lines += [
        f"backbone:         {summary['backbone']}",
        f"per video:        [L={L}, K={K}, D={D}] {summary['dtype']}",
        f"bytes per video:  {summary['bytes_per_video']:,} B = {summary['mb_per_video']:.2f} MB "
        f"({summary['mib_per_video']:.2f} MiB)",
    ]
    if summary["scale_bytes_per_video"]:
        lines.append(f"  of which:       {summary['data_bytes_per_video']:,} B values + "
                     f"{summary['scale_bytes_per_video']:,} B float32 scales")
    lines += [
        f"vs float16:       {100 * summary['ratio_to_float16']:.2f} % "
        f"({summary['float16_bytes_per_video']:,} B)",
        f"videos:           {summary['num_videos']:,}",
        f"total:            {summary['total_bytes']:,} B = {summary['total_gb']:.2f} GB "
        f"({summary['total_gib']:.2f} GiB)",
    ]
    if "stored_shard_bytes" in summary:
        lines += [
            f"shards:           {summary['num_shards']:,} ({summary['num_failed']:,} failed videos)",
            f"stored in shards: {summary['stored_shard_bytes']:,} B "
            f"({summary['stored_bytes_per_video']:,.0f} B per video, headers included)",
            f"store total:      {summary['store_total_bytes']:,} B = {summary['store_total_gb']:.3f} GB"
            + ("" if summary["has_index"] else "  (no index.json: run finalize)"),
        ]
    return "\n".join(lines)
