"""Which videos of a dataset a shard store still needs: one dataset's catalogue, kept in step.

A shard store holds the features of **one** dataset's catalogue under **one** extraction config
(the spec, checked by ``ShardWriter``). Before an extraction plans its shards,
:func:`reconcile_store` compares the store with the dataset:

- the store's ``dataset.json`` names the dataset (its prefix, e.g. ``MicroLens-100k``) that filled
  it; another name is refused, naming both;
- every video in the store was recorded with what identified its file
  (:func:`linkedout.fingerprint.video_source`). A **failed** video whose file changed since (fixed,
  replaced, appeared) is dropped from its shard so that it is tried again — every failed video
  with ``retry_failed``; a **written** video whose file now holds other content is dropped too
  (its shard keeps its other rows as stored) and extracted again;
- when none of the store's videos is in the catalogue, or most of those in both hold other content
  now, the dataset is not the one the store was made from: that is refused (re-extracting a whole
  store silently, or mixing two catalogues in one store, is never what was meant). A catalogue
  that grew or shrank is the same dataset: new videos are extracted, dropped ones stay readable.
  ``replace`` (``--force``) empties the store first instead.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from linkedout.fingerprint import same_video
from linkedout.shards.layout import DATASET_KEY, SPEC_KEY
from linkedout.shards.manifest import read_manifest
from linkedout.shards.storage import MissingKeyError, ShardStoreError, Storage, StoreMismatch
from linkedout.shards.writer import ShardWriter
from linkedout.utils import get_logger, utc_now

log = get_logger(__name__)

__all__ = [
    "Reconciled",
    "VideoDataset",
    "check_store_dataset",
    "clear_store",
    "dataset_name",
    "open_store_for",
    "read_dataset_doc",
    "reconcile_store",
]

FORCE_HINT = ("use a new shard store (--out, or a new --workdir), or --force to delete this store's "
              "features and extract again")


class VideoDataset(Protocol):
    """What the extraction needs of a dataset: its video ids and their files (``MicroLensDataset`` has it)."""

    @property
    def item_ids(self) -> Sequence[str]: ...

    def video_path(self, item: str) -> Path: ...


@dataclass
class Reconciled:
    """What :func:`reconcile_store` did: the videos dropped from their shards to be extracted again."""

    retried: list[str] = field(default_factory=list)  # failed before; their file changed (or retry_failed)
    changed: list[str] = field(default_factory=list)  # written before; their file now holds other content


def dataset_name(dataset: Any) -> str | None:
    """The dataset's name (its MicroLens prefix), when it has one."""
    prefix = getattr(dataset, "prefix", None)
    return str(prefix) if prefix else None


def clear_store(storage: Storage) -> int:
    """Delete every object of a store (``--force``); returns how many. The spec goes last."""
    keys = storage.list()
    for key in sorted(keys, key=lambda k: k == SPEC_KEY):
        storage.delete(key)
    log.warning("deleted the %d objects of shard store %s (--force)", len(keys), storage.uri)
    return len(keys)


def read_dataset_doc(storage: Storage) -> dict[str, Any] | None:
    """The store's ``dataset.json`` (which dataset filled it), or None when it has none or it is unreadable."""
    try:
        doc = json.loads(storage.read_bytes(DATASET_KEY))
        return doc if isinstance(doc, dict) else None
    except MissingKeyError:
        return None
    except ValueError:
        return None


def _write_dataset_doc(storage: Storage, name: str | None, root: str | None, videos: int,
                       previous: dict[str, Any] | None) -> None:
    now = utc_now()
    doc = {"format": "linkedout-feature-dataset", "version": 1, "name": name, "root": root, "videos": videos,
           "created": (previous or {}).get("created", now), "updated": now}
    storage.write_bytes(DATASET_KEY, json.dumps(doc, indent=2).encode())


def _check_one_dataset(uri: str, previous: dict[str, Any] | None, name: str | None, root: Any, catalog: set[str],
                       manifests: Sequence[Any], dataset: VideoDataset) -> None:
    """Raise :class:`StoreMismatch` when the store at ``uri`` holds another dataset's features than ``dataset``."""
    if previous and name and previous.get("name") and previous["name"] != name:
        raise StoreMismatch(
            f"{uri} holds features of dataset {previous['name']!r} (from {previous.get('root')}), "
            f"not of {name!r} (at {root}); a shard store holds one dataset's catalogue: {FORCE_HINT}")
    stored: set[str] = set()
    written_here = 0
    changed: list[str] = []
    for manifest in manifests:
        stored.update(manifest.ids, manifest.failed)
        for vid in manifest.ids:
            if vid in catalog:
                written_here += 1
                if not same_video(manifest.sources.get(vid), dataset.video_path(vid)):
                    changed.append(vid)
    in_catalog = len(stored & catalog)
    if stored and (in_catalog == 0 or (written_here and 2 * len(changed) > written_here)):
        first = sorted(changed)[:5]
        raise StoreMismatch(
            f"{uri} holds features of another dataset than the one at {root}: {len(stored) - in_catalog:,} of "
            f"its {len(stored):,} videos are not in the catalogue, and {len(changed):,} of the {written_here:,} in both "
            f"hold other content now{f' (first: {first})' if first else ''}; a shard store holds one dataset's "
            f"catalogue: {FORCE_HINT}")


def check_store_dataset(reader: Any, dataset: VideoDataset, ids: Sequence[str]) -> None:
    """Refuse (:class:`StoreMismatch`) a complete shard store (a ``FeatureReader``) of another dataset.

    The read-only half of :func:`reconcile_store`, for the stages that read features (the split,
    training, evaluation): the same tests, on the store's recorded dataset and video sources.
    """
    manifests = [reader.manifest(shard) for shard in reader.shards]
    _check_one_dataset(reader.storage.uri, read_dataset_doc(reader.storage), dataset_name(dataset),
                       getattr(dataset, "root", None), set(ids), manifests, dataset)


def reconcile_store(writer: ShardWriter, dataset: VideoDataset, ids: Sequence[str], *,
                    retry_failed: bool = False) -> Reconciled:
    """Drop from ``writer``'s store what must be extracted again for ``dataset`` (see the module docstring).

    Raises :class:`StoreMismatch` (naming both datasets, and the way out) when the store holds
    another dataset's features.
    """
    storage = writer.storage
    name = dataset_name(dataset)
    root = getattr(dataset, "root", None)
    previous = read_dataset_doc(storage)
    catalog = set(ids)
    retry: dict[int, list[str]] = defaultdict(list)
    changed: dict[int, list[str]] = defaultdict(list)
    manifests = []
    for shard in writer.complete_shards():
        try:
            manifests.append((shard, read_manifest(storage, shard)))
        except ShardStoreError:
            continue  # replanned by the writer
    _check_one_dataset(storage.uri, previous, name, root, catalog, [m for _, m in manifests], dataset)
    for shard, manifest in manifests:
        for vid in manifest.failed:
            if vid in catalog and (retry_failed or not same_video(manifest.sources.get(vid), dataset.video_path(vid))):
                retry[shard].append(vid)
        for vid in manifest.ids:
            if vid in catalog and not same_video(manifest.sources.get(vid), dataset.video_path(vid)):
                changed[shard].append(vid)
    result = Reconciled()
    for shard in sorted(set(retry) | set(changed)):
        drop = [*retry.get(shard, []), *changed.get(shard, [])]
        writer.drop_videos(shard, drop)
        result.retried += retry.get(shard, [])
        result.changed += changed.get(shard, [])
    if result.retried:
        log.info("%d failed videos will be tried again (%s): %s%s", len(result.retried),
                 "--retry-failed" if retry_failed else "their file changed", ", ".join(result.retried[:5]),
                 " ..." if len(result.retried) > 5 else "")
    if result.changed:
        log.warning("%d videos changed content since they were extracted and will be extracted again: %s%s",
                    len(result.changed), ", ".join(result.changed[:5]), " ..." if len(result.changed) > 5 else "")
    _write_dataset_doc(storage, name or (previous or {}).get("name"), None if root is None else str(root),
                       len(ids), previous)
    return result


def open_store_for(storage: Storage, spec: Any, shard_size: int, dataset: VideoDataset, ids: Sequence[str], *,
                   retry_failed: bool = False, replace: bool = False) -> tuple[ShardWriter, Reconciled]:
    """A :class:`ShardWriter` on ``storage`` for ``dataset``'s catalogue ``ids``, reconciled (:func:`reconcile_store`).

    A store of another extraction config or another dataset raises :class:`StoreMismatch`;
    ``replace`` (``--force``) empties it and starts again instead.
    """
    try:
        writer = ShardWriter(storage, spec, shard_size)
        return writer, reconcile_store(writer, dataset, ids, retry_failed=retry_failed)
    except StoreMismatch as err:
        if not replace:
            raise
        log.warning("%s", err)
        clear_store(storage)  # --force: the store held another config's or another dataset's features
        writer = ShardWriter(storage, spec, shard_size)
        return writer, reconcile_store(writer, dataset, ids, retry_failed=retry_failed)
