"""The main job end to end (``linkedout run``): the ``linkedout`` Kubeflow pipeline, run on this machine.

There is one orchestration of the main job: the pipeline in ``pipelines/linkedout.py``. Here it
runs through ``kfp.local`` (:mod:`pipelines.local`: one subprocess per task, the work directory in
place of the cluster's volume), with the embedded default's arguments: the synthetic dataset, the
tiny backbone on CPU, every variant trained, the main model deployed to the local stack (Triton,
the KServe transformer, Feast on loopback) and asked one gRPC query. What a re-run reuses is
decided inside the steps, by the stage functions' fingerprints (:mod:`linkedout.pipeline`): KFP's
cache is off.

``stop_after``: ``"extract"`` runs the ``extract`` pipeline alone; ``"report"`` the ``linkedout``
pipeline with ``deploy_to="none"`` (no export, Feast or serving).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from linkedout.pipeline import DEFAULT_VARIANTS, parse_variant
from linkedout.steps import format_table, report_fingerprint, summary_table  # noqa: F401 (kept importable here)
from linkedout.utils import format_duration, get_logger

log = get_logger(__name__)

STOP_AFTER = ("extract", "report")


def local_arguments(workdir: Path, *, preset: str = "small", data: Path | None = None, epochs: int | None = None,
                    variants: Sequence[str] | None = None, seed: int = 42, extraction: Any = None,
                    backbone: Any = None, force: bool = False, retry_failed: bool = False,
                    max_failed_share: float = 0.01, deploy_to: str = "local", extract_workers: int = 2,
                    model_repository_uri: str = "", s3_endpoint: str = "") -> dict[str, Any]:
    """The ``linkedout`` pipeline's arguments for a run on this machine (validated before anything runs).

    ``extraction`` / ``backbone``: an ``ExtractionConfig`` / ``BackboneConfig`` (default: the paper's
    layers, prompts, 8 frames at 224 px, K = 64, float16, shards of 64 videos, on the tiny seeded
    backbone). GPU counts are this machine's; the first variant is the model that is served.
    """
    import torch

    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig

    names = tuple(variants) if variants else DEFAULT_VARIANTS
    for name in names:
        parse_variant(name)  # a bad name fails before any work
    if not 0 <= max_failed_share <= 1:
        raise ValueError(f"max_failed_share must be in [0, 1], got {max_failed_share}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    ecfg = extraction or ExtractionConfig(shard_size=64)
    carried = {"layers", "prompts", "num_frames", "frame_size", "tokens", "text_tokens", "dtype", "frame_sampling",
               "batch_size", "shard_size", "decode_workers"}  # the pipeline's extraction parameters (below)
    dropped = [f.name for f in dataclasses.fields(ecfg)
               if f.name not in carried and getattr(ecfg, f.name) != getattr(ExtractionConfig(), f.name)]
    if dropped:
        raise ValueError(f"ExtractionConfig field(s) {dropped} are not parameters of the linkedout pipeline: "
                         "leave them at their defaults, or run `linkedout extract` for the features")
    bcfg = backbone or BackboneConfig()
    bcfg.check()  # a missing GPU or checkpoint directory, before any work
    defaults = BackboneConfig()
    options = {f.name: getattr(bcfg, f.name) for f in dataclasses.fields(bcfg)
               if f.name not in ("source", "dtype", "seed") and getattr(bcfg, f.name) != getattr(defaults, f.name)}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {
        "workdir": str(Path(workdir).resolve()), "dataset": "" if data is None else str(Path(data).resolve()),
        "preset": preset, "features": "", "backbone": bcfg.source, "backbone_dtype": bcfg.dtype,
        "backbone_seed": bcfg.seed, "backbone_options": options, "layers": list(ecfg.layers),
        "prompts": list(ecfg.prompts), "frames": ecfg.num_frames, "frame_size": ecfg.frame_size,
        "tokens": ecfg.tokens, "text_tokens": ecfg.text_tokens, "dtype": ecfg.dtype,
        "frame_sampling": ecfg.frame_sampling, "extract_batch_size": ecfg.batch_size, "shard_size": ecfg.shard_size,
        "decode_workers": ecfg.decode_workers, "extract_workers": extract_workers, "extract_gpus": min(gpus, 1),
        "max_failed_share": max_failed_share, "retry_failed": retry_failed, "variants": list(names),
        "model_variant": names[0], "model_name": "linkedout", "epochs": epochs or 100, "seed": seed,
        "train_gpus": gpus, "deploy_to": deploy_to, "model_repository_uri": model_repository_uri,
        "s3_endpoint": s3_endpoint, "force": force,
    }


def pipelines_module(name: str = "local") -> Any:
    """``pipelines.<name>``. The package sits beside ``linkedout`` in the source tree; a checkout
    installed without it (an editable install of an older package list) still finds it there."""
    try:
        return importlib.import_module(f"pipelines.{name}")
    except ModuleNotFoundError as e:
        root = Path(__file__).resolve().parents[1]
        if e.name not in ("pipelines", "components") or not (root / "pipelines" / "local.py").is_file():
            raise
        sys.path.insert(0, str(root))
        return importlib.import_module(f"pipelines.{name}")


def run_all(workdir: Path, *, preset: str = "small", data: Path | None = None, epochs: int | None = None,
            variants: Sequence[str] | None = None, seed: int = 42, stop_after: str | None = None,
            extraction: Any = None, backbone: Any = None, force: bool = False, retry_failed: bool = False,
            max_failed_share: float = 0.01, extract_workers: int = 2) -> Path:
    """The main job on the embedded default, through kfp.local; returns the report's path (the feature store's
    with ``stop_after="extract"``).

    Stages are reused when their fingerprints match (see :mod:`linkedout.pipeline`); ``force`` redoes,
    instead of refusing, the stages whose recorded inputs differ; ``retry_failed`` tries every failed
    video again; more failed videos than ``max_failed_share`` stop the job after extraction. A failed
    step raises :class:`linkedout.steps.StepFailed` with that step's own error.
    """
    if stop_after not in (None, *STOP_AFTER):
        raise ValueError(f"stop_after must be one of {STOP_AFTER} (or None), got {stop_after!r}")
    t0 = time.time()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args = local_arguments(workdir, preset=preset, data=data, epochs=epochs, variants=variants, seed=seed,
                           extraction=extraction, backbone=backbone, force=force, retry_failed=retry_failed,
                           max_failed_share=max_failed_share, extract_workers=extract_workers,
                           deploy_to="none" if stop_after == "report" else "local")
    name = "extract" if stop_after == "extract" else "linkedout"
    if name == "extract":
        args = {k: v for k, v in args.items() if k in EXTRACT_PARAMETERS}
    print(f"== the {name!r} pipeline through kfp.local, one subprocess per task (their logs: "
          f"{workdir / 'kfp' / 'logs'}/)", flush=True)
    outputs = pipelines_module("local").run(name, args, workdir)
    took = format_duration(time.time() - t0)
    if name == "extract":
        features = Path(str(outputs.get("Output", workdir / "features")))
        print(f"== features: {features}  ({took} in all)", flush=True)
        return features
    report = Path(str(outputs.get("Output", workdir / "report.html")))
    print(f"== report: {report}", flush=True)
    _print_outcome(workdir, t0)
    print(f"== done in {took}", flush=True)
    return report


#: Parameters of the ``extract`` pipeline (a subset of the ``linkedout`` pipeline's).
EXTRACT_PARAMETERS = frozenset({
    "workdir", "dataset", "preset", "features", "backbone", "backbone_dtype", "backbone_seed", "backbone_options",
    "layers", "prompts", "frames", "frame_size", "tokens", "text_tokens", "dtype", "frame_sampling",
    "extract_batch_size", "shard_size", "decode_workers", "extract_workers", "extract_gpus", "max_failed_share",
    "retry_failed", "force", "s3_endpoint",
})


def _print_outcome(workdir: Path, since: float) -> None:
    """The deploy decision and the query's answer of this run (files the steps wrote after ``since``)."""
    decision = _fresh_json(workdir / "pipeline" / "decision.json", since)
    answer = _fresh_json(workdir / "serving" / "answer.json", since)
    if decision is not None and not decision.get("deploy"):
        print(f"== not deployed: {decision['reason']}\n   the serving model answers as before: "
              f"linkedout serve --workdir {workdir}", flush=True)
    if answer is not None:
        first = answer["answers"][0]
        print(f"== answer to the query: user {answer['user']}, top {len(first['items'])} of {first['model_version']}: "
              f"{first['items']}", flush=True)
        print(f"   serve it again: linkedout serve --workdir {workdir}\n"
              f"   then ask it:    linkedout recommend --workdir {workdir} --user {answer['user']} --k 10 --explain",
              flush=True)


def _fresh_json(path: Path, since: float) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and float(doc.get("time", 0)) >= since else None
