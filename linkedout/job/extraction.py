"""The extraction stage as a fan-out: plan the shards, extract groups of them in parallel, collect the index.

:func:`extract` runs the extraction in one process (``linkedout extract``). On a cluster the shards are
extracted by several GPU pods at once (the ``extract`` pipeline's ``ParallelFor``), so the same
work is split in three plain functions with explicit inputs and outputs:

1. :func:`plan_extraction` (CPU, cheap; one task): the store is opened with the spec the extraction will
   write (:func:`planned_spec`: computed from the configs, no weights loaded), a store of another
   extraction config or dataset is refused (``force``: emptied), the store is reconciled with the
   dataset (changed and failed videos dropped to be extracted again: the store's own resume
   logic, :func:`linkedout.extraction.reconcile.reconcile_store`), the shards are planned
   incrementally and dealt into ``groups``; the :class:`ShardPlan` is written to a JSON file that
   every later task reads (shard assignments can be large; pipeline parameters stay small).
2. :func:`extract_group` (GPU; one task per group, retried on failure): the group's shards that
   are not complete yet are extracted (a re-run, or a retry after a crash, skips complete shards;
   a group with nothing left loads no backbone). Only this task writes its shards, so the groups
   never write the same object.
3. :func:`finish_extraction` (CPU; the fan-in): every planned shard must be complete; ``index.json``
   and ``failures.json`` are written, and more failed videos than allowed stop the job.

The spec of the loaded backbone is compared with the planned one before anything is written, so
the plan and the extraction can never disagree silently.

The main job's three steps (:func:`plan_shards`, :func:`extract_shards`, :func:`collect_index`) are
these functions with the pipelines' plain parameters: the ``extraction`` and ``backbone`` dicts
(:mod:`linkedout.job.params`), locations as strings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaOnevisionConfig

from linkedout.data.microlens import load_microlens, sort_ids
from linkedout.extraction.backbone import load_backbone
from linkedout.extraction.backbone_config import BackboneConfig, architecture_config, tiny_name
from linkedout.extraction.driver import ExtractionSummary, decode_ahead, extract_dataset, failures_document
from linkedout.extraction.driver import extract_shards as extract_shard_batches
from linkedout.extraction.extractor import ExtractionConfig, LinkedOutExtractor, feature_spec
from linkedout.extraction.reconcile import open_store_for
from linkedout.job.params import as_parameter, config_from_dict
from linkedout.job.step import step
from linkedout.shards import FeatureReader, FeatureSpec
from linkedout.shards.info import format_info, info_from_store
from linkedout.shards.layout import FAILURES_KEY
from linkedout.shards.storage import ShardStoreError, open_storage
from linkedout.shards.writer import ShardWriter
from linkedout.utils import atomic_write_text, format_duration, get_logger
from linkedout.workdir import Workdir

log = get_logger(__name__)

#: The shard size of the main job's feature store: 64 videos (the embedded default's 400 videos in 7 shards, so
#: that two extraction tasks share the work and a killed run loses little).
MAIN_JOB_SHARD_SIZE = 64


def extraction_defaults() -> dict[str, Any]:
    """The ``extraction`` parameter's default: ``ExtractionConfig``'s fields (shards of :data:`MAIN_JOB_SHARD_SIZE`)."""
    return as_parameter(dataclasses.asdict(ExtractionConfig(shard_size=MAIN_JOB_SHARD_SIZE)))


def backbone_defaults() -> dict[str, Any]:
    """The ``backbone`` parameter's default: ``BackboneConfig``'s fields (the tiny seeded backbone)."""
    return as_parameter(dataclasses.asdict(BackboneConfig()))

PLAN_FORMAT = "linkedout-shard-plan"
PLAN_VERSION = 1


@dataclass
class ShardPlan:
    """Which shard holds which videos, and which task extracts which shards.

    ``shards`` maps a shard index to its video ids (written and failed); ``groups`` lists the shard
    indices of each extraction task; ``pending`` the shards that were not complete when planned.
    ``extraction`` / ``backbone`` are the ``ExtractionConfig`` / ``BackboneConfig`` fields (device
    and dtype resolved, so every task runs the backbone the same way); ``spec`` the ``FeatureSpec``
    the tasks must produce.
    """

    store: str
    data: str
    spec: dict[str, Any]
    extraction: dict[str, Any]
    backbone: dict[str, Any]
    shards: dict[int, list[str]]
    groups: list[list[int]]
    pending: list[int] = field(default_factory=list)
    videos: int = 0
    retried: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shards"] = {str(k): v for k, v in self.shards.items()}
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **d}

    def save(self, path: str | os.PathLike[str]) -> Path:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ShardPlan:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"shard plan {path} does not exist (run the plan step first)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"shard plan {path} is not JSON: {e}") from None
        if d.get("format") != PLAN_FORMAT or d.get("version") != PLAN_VERSION:
            raise ValueError(f"{path} is not a shard plan of format {PLAN_FORMAT!r} version {PLAN_VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        d["shards"] = {int(k): list(v) for k, v in d["shards"].items()}
        d["groups"] = [[int(i) for i in g] for g in d["groups"]]
        d["pending"] = [int(i) for i in d.get("pending", [])]
        return cls(**d)

    def configs(self) -> tuple[Any, Any]:
        """``(ExtractionConfig, BackboneConfig)`` of the plan."""
        return ExtractionConfig(**self.extraction), BackboneConfig(**self.backbone)

    def shard_list(self) -> list[list[str]]:
        """The plan as :meth:`ShardWriter.plan_incremental` returns it: entry ``i`` is shard ``i``."""
        size = max(self.shards) + 1 if self.shards else 0
        return [self.shards.get(i, []) for i in range(size)]


# ---------------------------------------------------------------------------------------------- spec


def resolve_device(backbone: Any, gpus: int) -> Any:
    """``backbone`` with ``device`` and ``dtype`` resolved for a task that gets ``gpus`` GPUs.

    ``auto`` means CUDA when the extraction task has GPUs; resolving it once, in the plan, gives
    every task (and the spec) the same answer, whichever machine the plan itself runs on.
    """
    device = backbone.device if backbone.device != "auto" else ("cuda" if gpus > 0 else "cpu")
    resolved = dataclasses.replace(backbone, device=device)
    # BackboneConfig's own rule for "auto" (bfloat16 on CUDA, float32 elsewhere), on the resolved device
    return dataclasses.replace(resolved, dtype=str(resolved.resolved_dtype()).removeprefix("torch."))


def planned_spec(extraction: Any, backbone: Any) -> Any:
    """The ``FeatureSpec`` that extracting with ``extraction`` and ``backbone`` writes, without loading weights.

    ``backbone`` must have its device resolved (:func:`resolve_device`). The backbone's name, hidden
    size and layer count come from its architecture (``tiny``, ``random:``) or from the checkpoint's
    ``config.json`` (a directory or a hub id); a kept layer the backbone does not have is a
    ``ValueError`` here, before any task starts.
    """
    src = backbone.source
    if src == "tiny" or src.startswith("random:"):
        config = architecture_config(backbone)
        name = tiny_name(backbone) if src == "tiny" else src
    else:
        try:
            config = LlavaOnevisionConfig.from_pretrained(src, revision=backbone.revision)  # config.json only
        except OSError as e:
            raise ValueError(f"BackboneConfig.source {src!r}: cannot read its config.json: {e}") from None
        name = str(Path(src).resolve()) if Path(src).expanduser().is_dir() else src
        if backbone.revision:
            name += f"@{backbone.revision}"
    text: Any = config.text_config
    layers = int(text.num_hidden_layers)
    bad = [layer for layer in extraction.layers if layer > layers]
    if bad:
        raise ValueError(f"ExtractionConfig.layers {bad} do not exist in backbone {name!r}, which has hidden states "
                         f"0..{layers} (0 = embeddings, i = output of decoder layer i)")
    dtype = str(backbone.resolved_dtype()).removeprefix("torch.")
    return FeatureSpec(backbone=name, layers=tuple(extraction.layers), prompts=tuple(extraction.prompts),
                       num_frames=extraction.num_frames, frame_size=extraction.frame_size, tokens=extraction.tokens,
                       hidden=int(text.hidden_size), dtype=extraction.dtype, compression=extraction.compression,
                       backbone_dtype=dtype, frame_sampling=extraction.frame_sampling)


# ---------------------------------------------------------------------------------------------- plan


def deal(shards: Sequence[int], pending: Sequence[int], groups: int) -> list[list[int]]:
    """Deal ``shards`` into at most ``groups`` non-empty groups, the ``pending`` ones evenly first.

    The work of a group is its pending shards, so those are spread round-robin; complete shards
    follow (they cost a size check each). Groups come out sorted; none is empty.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    n = max(1, min(groups, len(shards)))
    out: list[list[int]] = [[] for _ in range(n)]
    waiting = set(pending)
    todo = [s for s in shards if s in waiting]
    done = [s for s in shards if s not in waiting]
    for k, s in enumerate(todo):
        out[k % n].append(s)
    for k, s in enumerate(done):
        out[(len(todo) + k) % n].append(s)
    return [sorted(g) for g in out if g]


def plan_extraction(data: Path, features: str, extraction: ExtractionConfig, backbone: BackboneConfig, plan_path: str | os.PathLike[str], *,
                groups: int = 1, gpus: int = 0, retry_failed: bool = False, force: bool = False,
                s3_endpoint: Any = None) -> ShardPlan:
    """Plan the extraction of the dataset at ``data`` into the store ``features``; write the plan to ``plan_path``.

    ``gpus``: the GPUs each extraction task gets (``auto`` device and dtype are resolved for them);
    ``groups``: the most extraction tasks. See the module docstring for what is checked and when.
    """
    backbone = resolve_device(backbone, gpus)
    dataclasses.replace(backbone, device="cpu").check()  # the checkpoint directory exists (the GPU is the task's)
    spec = planned_spec(extraction, backbone)
    dataset = load_microlens(data, check_videos=False)
    ids = sort_ids(str(x) for x in dataset.item_ids)
    store = open_storage(str(features), s3_endpoint)
    writer, reconciled = open_store_for(store, spec, extraction.shard_size, dataset, ids,
                                        retry_failed=retry_failed, replace=force)
    plan = writer.plan_incremental(ids)
    shards = {i: chunk for i, chunk in enumerate(plan) if chunk}
    pending = [i for i, chunk in shards.items() if not writer.is_complete(i, chunk, verify="size")]
    result = ShardPlan(store=writer.storage.uri, data=str(data), spec=spec.to_dict(),
                       extraction=dataclasses.asdict(extraction), backbone=dataclasses.asdict(backbone),
                       shards=shards, groups=deal(sorted(shards), pending, groups), pending=pending,
                       videos=len(ids), retried=reconciled.retried, changed=reconciled.changed)
    result.save(plan_path)
    log.info("planned %d videos into %d shards of %s (%d to extract, %d complete) in %d group(s)", len(ids),
             len(shards), writer.storage.uri, len(pending), len(shards) - len(pending), len(result.groups))
    return result


# ------------------------------------------------------------------------------------------- extract


def extract_group(plan_path: str | os.PathLike[str], group: int, *, s3_endpoint: Any = None,
                  decoder: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Extract the shards of group ``group`` of the plan that are not complete yet; returns what was done.

    ``decoder``: see :func:`linkedout.extraction.extractor.extract_dataset`.
    """
    plan = ShardPlan.load(plan_path)
    if not 0 <= group < len(plan.groups):
        raise ValueError(f"group {group} is not in the plan {plan_path} ({len(plan.groups)} groups)")
    mine = plan.groups[group]
    ecfg, bcfg = plan.configs()
    spec = FeatureSpec.from_dict(plan.spec)
    writer = ShardWriter(open_storage(plan.store, s3_endpoint), spec, ecfg.shard_size)
    todo = [i for i in mine if not writer.is_complete(i, plan.shards[i], verify="size")]
    out: dict[str, Any] = {"group": group, "shards": mine, "written": [], "skipped": [i for i in mine if i not in todo],
                           "encoded": 0, "seconds": 0.0}
    if not todo:
        log.info("group %d: its %d shards are complete", group, len(mine))
        return out
    started = time.perf_counter()
    bb = load_backbone(bcfg)
    actual = feature_spec(bb, ecfg)
    if actual != spec:
        raise ShardStoreError(f"the backbone loaded for group {group} gives another spec than planned "
                                f"({'; '.join(spec.diff(actual))}): plan again")
    dataset = load_microlens(Path(plan.data), check_videos=False)
    extractor = LinkedOutExtractor(bb, ecfg)
    ids = [vid for i in todo for vid in plan.shards[i]]
    log.info("group %d: extracting %d shards (%d videos), %d already complete", group, len(todo), len(ids),
             len(out["skipped"]))
    t0 = time.perf_counter()
    done: list[int] = []

    def written(shard: int, manifest: Any) -> None:
        done.append(shard)
        elapsed = time.perf_counter() - t0
        videos = sum(len(plan.shards[i]) for i in done)
        rate = videos / elapsed if elapsed > 0 else 0.0
        eta = (len(ids) - videos) / rate if rate > 0 else float("nan")
        log.info("group %d: shard %d written (%d of %d; %d videos, %d failed); %.2f videos/s, ETA %s", group, shard,
                 len(done), len(todo), len(manifest.ids), len(manifest.failed), rate, format_duration(eta))

    stream = decode_ahead(dataset, ids, ecfg, decoder)
    try:
        out["encoded"] = extract_shard_batches(extractor, writer, plan.shard_list(), todo, iter(stream), written)
    finally:
        stream.close()
    out["written"] = done
    out["seconds"] = time.perf_counter() - started
    return out


# ------------------------------------------------------------------------------------------- collect


def finish_extraction(plan_path: str | os.PathLike[str], results: Sequence[dict[str, Any]] = (), *,
                      max_failed_share: float = 1.0, s3_endpoint: Any = None) -> ExtractionSummary:
    """The fan-in: check that every planned shard is complete, write ``index.json`` and ``failures.json``.

    ``results`` are the groups' :func:`extract_group` outputs (for the summary's counts). Returns the
    ``ExtractionSummary``; more failed videos than ``max_failed_share`` raise
    :class:`TooManyFailures` after ``failures.json`` is written (the shards stay:
    a re-run with a higher share, or with fixed files, resumes).
    """
    plan = ShardPlan.load(plan_path)
    spec = FeatureSpec.from_dict(plan.spec)
    writer = ShardWriter(open_storage(plan.store, s3_endpoint), spec, int(plan.extraction["shard_size"]))
    incomplete = [i for i, ids in sorted(plan.shards.items()) if not writer.is_complete(i, ids, verify="size")]
    if incomplete:
        raise ShardStoreError(f"{plan.store}: shards {incomplete[:10]} of the plan are not complete (an extraction "
                                "task failed or did not run); run the extraction again, complete shards are kept")
    index = writer.finalize()
    catalog = {vid for ids in plan.shards.values() for vid in ids}
    summary = ExtractionSummary(
        uri=writer.storage.uri, spec=plan.spec, videos=plan.videos, shards=len(plan.shards),
        shards_written=sum(len(r.get("written", [])) for r in results),
        shards_skipped=len(plan.shards) - sum(len(r.get("written", [])) for r in results),
        encoded=int(sum(int(r.get("encoded", 0)) for r in results)),
        failed={k: v for k, v in index.failed.items() if k in catalog},
        seconds=float(sum(float(r.get("seconds", 0.0)) for r in results)),
        retried=plan.retried, changed=plan.changed)
    writer.storage.write_bytes(FAILURES_KEY, json.dumps(failures_document(summary), indent=2).encode())
    log.info("extraction complete: %d videos in %d shards (%d written now), %d failed (%.2f %%)", plan.videos,
             len(plan.shards), summary.shards_written, len(summary.failed), 100 * summary.failed_share)
    check_failures(summary, max_failed_share)
    return summary


# ------------------------------------------------------------------------------- one process


def extract(data: Path, out: str | Any, configs: tuple[Any, Any] | None = None, *,
            s3_endpoint: Any = None, retry_failed: bool = False, force: bool = False) -> Any:
    """Extract the features of every video of the dataset at ``data`` into the store ``out``.

    ``configs``: ``(ExtractionConfig, BackboneConfig)``; ``s3_endpoint``: an endpoint URL or an
    ``S3Config``; ``retry_failed``: try every failed video again; ``force``: a store of another
    extraction config or dataset is emptied first instead of refused. See ``extract_dataset``.
    """
    ecfg, bcfg = configs if configs is not None else (None, None)
    (bcfg or BackboneConfig()).check()  # a missing GPU or checkpoint directory, before any work
    # Missing or corrupt videos are not a reason to stop: the extractor records each by id with the
    # reason, and the split drops their interactions.
    dataset = load_microlens(data, check_videos=False)
    return extract_dataset(dataset, out if not isinstance(out, Path) else str(out), ecfg, bcfg,
                           endpoint_url=s3_endpoint, retry_failed=retry_failed, replace=force)


class TooManyFailures(ValueError):
    """More videos failed to extract than the allowed share."""


def check_failures(summary: Any, max_failed_share: float) -> None:
    """:class:`TooManyFailures` when the extraction's failed share exceeds ``max_failed_share``."""
    if summary.failed_share > max_failed_share:
        raise TooManyFailures(
            f"{len(summary.failed):,} of {summary.videos:,} videos could not be extracted "
            f"({100 * summary.failed_share:.2f} % > the allowed {100 * max_failed_share:g} %, --max-failed-share); "
            f"the reasons are in {summary.uri}/failures.json. Fix or remove the files and run again (changed files "
            "are retried), or raise --max-failed-share")


# ----------------------------------------------------------------------------------- the steps


@step("plan-shards")
def plan_shards(workdir: str, data: str, features: str = "", *, extraction: Mapping[str, Any] | None = None,
                backbone: Mapping[str, Any] | None = None, groups: int = 1, gpus: int = 0, retry_failed: bool = False,
                force: bool = False, s3_endpoint: str = "") -> dict[str, Any]:
    """Plan the extraction into ``features`` (default ``W/features``) with the ``extraction`` / ``backbone``
    configs (dicts of ``ExtractionConfig`` / ``BackboneConfig`` fields; missing ones take their defaults):
    returns the plan's path and one item per group of shards (``{"plan", "group", "features"}``: what an
    extraction task needs)."""
    ecfg = config_from_dict(ExtractionConfig, extraction, "extraction")
    bcfg = config_from_dict(BackboneConfig, backbone, "backbone")
    work = Workdir.of(workdir)
    store = features or str(work.features)
    plan = plan_extraction(Path(data), store, ecfg, bcfg, work.shard_plan, groups=max(1, int(groups)), gpus=int(gpus),
                           retry_failed=retry_failed, force=force, s3_endpoint=s3_endpoint or None)
    items = [{"plan": str(work.shard_plan), "group": g, "features": store} for g in range(len(plan.groups))]
    return {"plan": str(work.shard_plan), "features": store, "items": items, "shards": len(plan.shards),
            "pending": len(plan.pending), "videos": plan.videos}


@step("extract-shards", "group")
def extract_shards(plan: str, group: int, gpus: int = 0, s3_endpoint: str = "") -> dict[str, Any]:
    """Extract the incomplete shards of one group of the plan (``gpus``: what the task was given, for the log)."""
    if gpus:
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if seen < gpus:
            log.warning("the task asked for %d GPU(s) and sees %d", gpus, seen)
    out = extract_group(plan, int(group), s3_endpoint=s3_endpoint or None)
    return {**out, "plan": plan}


@step("collect-index")
def collect_index(results: Sequence[dict[str, Any]], max_failed_share: float = 0.01, s3_endpoint: str = "",
                  plan: str = "") -> dict[str, Any]:
    """The fan-in of the extraction: ``index.json``, ``failures.json``, the failure check; returns the figures.

    ``results``: the extraction tasks' outputs (they name the plan, unless ``plan`` is given)."""
    plans = {str(r["plan"]) for r in results if r.get("plan")} | ({plan} if plan else set())
    if len(plans) != 1:
        raise ValueError(f"collect-index: expected the results of one shard plan, got {sorted(plans) or 'none'}")
    plan = plans.pop()
    summary = finish_extraction(plan, list(results), max_failed_share=float(max_failed_share),
                                     s3_endpoint=s3_endpoint or None)
    if summary.failed:
        print(f"== {len(summary.failed)} videos could not be decoded and have no features "
              f"(all listed in {summary.uri}/failures.json):")
        for vid, why in sorted(summary.failed.items())[:20]:
            print(f"   {vid}: {why}")
    print("== features\n" + format_info(info_from_store(FeatureReader(summary.uri, endpoint_url=s3_endpoint or None))),
          flush=True)
    return {"features": summary.uri, "videos": summary.videos, "failed": len(summary.failed),
            "failed_share": summary.failed_share, "shards": summary.shards, "shards_written": summary.shards_written,
            "encoded": summary.encoded}
