"""The extraction driver: every video of a dataset into a shard store, resumable.

:func:`extract_dataset` reconciles the store with the dataset (:mod:`.reconcile`), plans the shards,
decodes the videos ahead of the model (:mod:`.prefetch`), encodes them with a
:class:`~linkedout.extraction.extractor.LinkedOutExtractor` and writes them with a
:class:`~linkedout.shards.writer.ShardWriter`; the failures go to the store's ``failures.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np

from linkedout.data.microlens import sort_ids
from linkedout.extraction.backbone import Backbone, load_backbone
from linkedout.extraction.backbone_config import BackboneConfig
from linkedout.extraction.extractor import ExtractionConfig, LinkedOutExtractor, feature_spec
from linkedout.extraction.prefetch import Decoded, DecodeJob, decode_job, decode_stream, threads_per_worker
from linkedout.extraction.reconcile import VideoDataset, open_store_for
from linkedout.shards.layout import FAILURES_KEY, SPEC_KEY
from linkedout.shards.manifest import ShardManifest, read_manifest
from linkedout.shards.storage import S3Options, Storage, open_storage
from linkedout.shards.writer import ShardWriter
from linkedout.utils import get_logger, progress, utc_now

__all__ = [
    "ExtractionSummary",
    "decode_ahead",
    "decode_jobs",
    "extract_dataset",
    "extract_shards",
    "failures_document",
]

log = get_logger(__name__)


@dataclass
class ExtractionSummary:
    """What one :func:`extract_dataset` run did.

    ``failed`` holds every video of the dataset's catalogue without features in the store and why
    (this run's and earlier runs'; also written to the store's ``failures.json``); ``retried`` the
    failed videos this run tried again, ``changed`` the videos re-extracted because their file
    changed; ``complete`` is False when the run stopped after ``max_shards`` shards.
    """

    uri: str
    spec: dict[str, Any]
    videos: int  # videos in the dataset
    shards: int  # shards planned
    shards_written: int  # shards computed by this run
    shards_skipped: int  # shards already complete (resume)
    encoded: int  # videos encoded by this run
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # decoding, encoding and writing (backbone loading excluded)
    load_seconds: float = 0.0  # loading the backbone
    complete: bool = True
    retried: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def failed_share(self) -> float:
        """Share of the catalogue's videos without features."""
        return len(self.failed) / self.videos if self.videos else 0.0

    @property
    def videos_per_second(self) -> float:
        """Throughput of this run over the videos it processed (encoded or failed)."""
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "videos_per_second": self.videos_per_second}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def decode_jobs(dataset: VideoDataset, ids: Sequence[str], cfg: ExtractionConfig) -> list[DecodeJob]:
    """One :class:`DecodeJob` per video of ``ids``, in order, with ``cfg``'s frames, size, sampling and threads."""
    threads = threads_per_worker(cfg.decode_workers, cfg.decode_threads)
    return [DecodeJob(vid, str(dataset.video_path(vid)), cfg.num_frames, cfg.frame_size, cfg.frame_sampling, threads)
            for vid in ids]


def decode_ahead(dataset: VideoDataset, ids: Sequence[str], cfg: ExtractionConfig,
                 decoder: Callable[[DecodeJob], Decoded] | None) -> Generator[Decoded, None, None]:
    """Decoded videos in ``ids`` order; with workers, up to ``2 * batch_size + workers`` ahead of the model."""
    window = 2 * cfg.batch_size + cfg.decode_workers
    return decode_stream(decode_jobs(dataset, ids, cfg), cfg.decode_workers, window, decoder or decode_job)


def extract_shards(
    extractor: LinkedOutExtractor,
    writer: ShardWriter,
    plan: list[list[str]],
    todo: list[int],
    stream: Iterator[Decoded],
    on_shard_written: Callable[[int, ShardManifest], None] | None,
) -> int:
    """Encode and write the shards ``todo`` from the decoded ``stream``; returns the videos encoded."""
    cfg = extractor.cfg
    encoded = 0
    for shard in todo:
        rows: list[np.ndarray] = []  # (b, L, K, D) per batch
        ok_ids: list[str] = []
        failed: dict[str, str] = {}
        sources: dict[str, dict[str, Any]] = {}
        batch_ids: list[str] = []
        batch: list[np.ndarray] = []
        for position in range(len(plan[shard])):
            item = next(stream)
            assert item.video_id == plan[shard][position], "the decode stream follows the plan"
            sources[item.video_id] = item.source
            if item.frames is None:
                log.warning("video %s skipped: %s", item.video_id, item.error)
                failed[item.video_id] = str(item.error)
            else:
                batch_ids.append(item.video_id)
                batch.append(item.frames)
            if batch and (len(batch) == cfg.batch_size or position == len(plan[shard]) - 1):
                rows.append(extractor.encode(np.stack(batch)))  # (b, L, K, D)
                ok_ids += batch_ids
                batch_ids, batch = [], []
        features = np.concatenate(rows) if rows else np.zeros((0, *writer.spec.shape), np.float32)  # (n, L, K, D)
        manifest = writer.write_shard(shard, ok_ids, features, failed, sources)
        encoded += len(ok_ids)
        if on_shard_written is not None:
            on_shard_written(shard, manifest)
    return encoded


def _reason_class(reason: str) -> str:
    """``"InvalidDataError: [Errno ...] ... '/x.mp4'"`` -> ``"InvalidDataError"``: reasons grouped for the summary."""
    head = reason.split(":", 1)[0].strip()
    return head if head and len(head) <= 60 else reason[:60]


def failures_document(summary: ExtractionSummary) -> dict[str, Any]:
    """The ``failures.json`` written beside the features: counts, share, reasons by id and by kind."""
    return {
        "format": "linkedout-extraction-failures", "version": 1,
        "updated": utc_now(),
        "store": summary.uri, "videos": summary.videos, "failed": len(summary.failed),
        "failed_share": summary.failed_share, "complete": summary.complete,
        "by_reason": dict(Counter(_reason_class(r) for r in summary.failed.values()).most_common()),
        "reasons": dict(sorted(summary.failed.items())),
        "retried": summary.retried, "changed": summary.changed,
    }


def extract_dataset(
    dataset: VideoDataset,
    storage: Storage | str | os.PathLike[str],
    cfg: ExtractionConfig | None = None,
    backbone: Backbone | BackboneConfig | None = None,
    *,
    max_shards: int | None = None,
    on_shard_written: Callable[[int, ShardManifest], None] | None = None,
    endpoint_url: S3Options = None,
    retry_failed: bool = False,
    replace: bool = False,
    decoder: Callable[[DecodeJob], Decoded] | None = None,
) -> ExtractionSummary:
    """Extract the features of every video of ``dataset`` into a shard store; resumable.

    First the store is reconciled with the dataset (:func:`linkedout.extraction.reconcile.reconcile_store`):
    a store of another extraction config or another dataset is refused (:class:`StoreMismatch`), or
    with ``replace`` (``--force``) emptied first; failed videos whose file changed (all failed
    videos with ``retry_failed``) and written videos whose file changed are dropped to be
    extracted again. Shards are then planned incrementally
    (:meth:`ShardWriter.plan_incremental`): shards already in the store keep their videos and are
    skipped when complete; the videos found in none (sorted by id, ``sort_ids``) are cut into new
    shards of ``cfg.shard_size``. So a re-run resumes where it stopped, and a grown catalogue
    extracts only its new videos. Videos are decoded ahead of the model in ``cfg.decode_workers``
    processes, encoded in batches of ``cfg.batch_size`` and written with :class:`ShardWriter`. A
    video that cannot be decoded is logged and recorded by id with the reason in its shard's
    ``failed`` map; it gets no row. ``max_shards`` stops after computing that many shards (the store
    stays resumable); ``on_shard_written(shard, manifest)`` is called after each shard is written.
    When every shard is complete the store's ``index.json`` is written; ``failures.json`` (the
    failure summary: :func:`failures_document`) after every run.

    ``backbone`` is a loaded :class:`Backbone` or a :class:`BackboneConfig` to load (default tiny).
    ``decoder`` replaces :func:`linkedout.extraction.prefetch.decode_job` (a module-level function, as
    it is sent to the decoding processes): e.g. a GPU decoder, or frames decoded beforehand.
    """
    cfg = cfg or ExtractionConfig()
    if max_shards is not None and max_shards < 0:
        raise ValueError(f"max_shards must be >= 0, got {max_shards}")
    started = time.perf_counter()
    store = open_storage(storage, endpoint_url)
    # Reach the store before loading the backbone (minutes for a 7B checkpoint): an S3 endpoint that
    # is down or never answers fails within the S3 client's bounds (30 s by default), naming it.
    store.exists(SPEC_KEY)
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone or BackboneConfig())
    loaded = time.perf_counter()
    extractor = LinkedOutExtractor(bb, cfg)
    spec = feature_spec(bb, cfg)
    ids = sort_ids(str(x) for x in dataset.item_ids)
    writer, reconciled = open_store_for(store, spec, cfg.shard_size, dataset, ids, retry_failed=retry_failed,
                                        replace=replace)
    plan, planned, pending = _plan_shards(writer, ids)
    skipped = len(planned) - len(pending)
    todo = pending[:max_shards] if max_shards is not None else pending
    log.info("extracting %d videos into %s: %d shards, %d already complete, %d to compute",
             len(ids), writer.storage.uri, len(planned), skipped, len(todo))
    encoded = _extract_planned(extractor, writer, dataset, plan, todo, decoder, on_shard_written)
    complete = len(todo) == len(pending)
    all_failed = _failed_videos(writer, ids, complete)
    summary = ExtractionSummary(
        uri=writer.storage.uri, spec=spec.to_dict(), videos=len(ids), shards=len(planned),
        shards_written=len(todo), shards_skipped=skipped, encoded=encoded, failed=all_failed,
        seconds=time.perf_counter() - loaded, load_seconds=loaded - started, complete=complete,
        retried=reconciled.retried, changed=reconciled.changed,
    )
    writer.storage.write_bytes(FAILURES_KEY, json.dumps(failures_document(summary), indent=2).encode())
    log.info("extraction %s: %d videos encoded in %.1f s (%.2f videos/s), %d of %d failed (%.2f %%)",
             "complete" if complete else "stopped early", encoded, summary.seconds,
             summary.videos_per_second, len(all_failed), len(ids), 100 * summary.failed_share)
    return summary


def _plan_shards(writer: ShardWriter, ids: list[str]) -> tuple[list[list[str]], list[int], list[int]]:
    """The incremental shard plan of ``ids``, the shards holding videos, and those not complete yet."""
    plan = writer.plan_incremental(ids)  # shards already written keep their videos; new videos go to new shards
    planned = [i for i, chunk in enumerate(plan) if chunk]
    pending = [i for i in planned if not writer.is_complete(i, plan[i], verify="size")]
    return plan, planned, pending


def _extract_planned(extractor: LinkedOutExtractor, writer: ShardWriter, dataset: VideoDataset,
                     plan: list[list[str]], todo: list[int], decoder: Callable[[DecodeJob], Decoded] | None,
                     on_shard_written: Callable[[int, ShardManifest], None] | None) -> int:
    """Decode the videos of the shards ``todo`` ahead of the model, encode and write them; the videos encoded."""
    todo_ids = [vid for i in todo for vid in plan[i]]
    decoded = decode_ahead(dataset, todo_ids, extractor.cfg, decoder)
    stream = progress(decoded, total=len(todo_ids), desc="extract", unit="video")
    try:
        return extract_shards(extractor, writer, plan, todo, stream, on_shard_written)
    finally:  # stop the decoding processes now, also when interrupted
        cast(Generator[Any, None, None], stream).close()
        decoded.close()


def _failed_videos(writer: ShardWriter, ids: list[str], complete: bool) -> dict[str, str]:
    """The videos of ``ids`` recorded as failed in the store, and why; the index is written when ``complete``."""
    catalog = set(ids)
    if complete:
        index = writer.finalize()
        return {k: v for k, v in index.failed.items() if k in catalog}
    failed: dict[str, str] = {}
    for i in writer.complete_shards():
        failed.update({k: v for k, v in read_manifest(writer.storage, i).failed.items() if k in catalog})
    return failed
