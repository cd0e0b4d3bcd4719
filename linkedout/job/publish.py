"""Publishing a trained model: the deploy decision (at least as good as the serving model on validation),
the ONNX encoder and ranker as a new version of the Triton model repository, and the steps
:func:`compare` and :func:`export`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import torch

from linkedout.data.microlens import load_microlens
from linkedout.evaluation import evaluate as evaluate_model
from linkedout.export import (
    ExportConfig,
    ModelRepository,
    export_model,
    ranker_name,
)
from linkedout.export.catalog import read_meta
from linkedout.job.split import build_split, load_split
from linkedout.job.step import step
from linkedout.job.training import checkpoint_of, item_features_for, run_dir_of
from linkedout.training.checkpoint import load_model_from_checkpoint
from linkedout.utils import atomic_write_text, get_logger
from linkedout.workdir import Workdir

log = get_logger(__name__)

def export_run(data: Path, features: str | None, run_dir: Path, repository: str | os.PathLike[str], *,
               name: str | None = None, config: Any = None, s3_endpoint: str | None = None, split: Any = None,
               item_features: Any = None, extra_source: dict[str, Any] | None = None) -> Any:
    """Export a trained run's best checkpoint and its catalogue into a Triton model repository.

    The catalogue is the split's videos (those with features), in the model's item order, with their
    training popularity and publish time (a MicroLens video's first interaction). ``extra_source`` is
    recorded with the version's source (e.g. the validation metric the deploy decision compares).
    Returns the ``linkedout.export.ExportResult``.
    """
    run_dir = Path(run_dir)
    ckpt = checkpoint_of(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if split is None:
        split = build_split(data, features, s3_endpoint=s3_endpoint)
    model: Any = load_model_from_checkpoint(ckpt, split.num_items)
    if model.needs_features and item_features is None:
        if features is None:
            raise ValueError(f"{run_dir} holds a model that reads backbone features: pass --features")
        item_features = item_features_for(split, features, s3_endpoint)
    layers = None
    if item_features is not None:
        layers = [f"L{layer}" for layer in item_features.reader.spec.layers]
    inter = load_microlens(data, check_videos=False).interactions
    first = inter.groupby("item")["timestamp"].min()
    published = np.asarray([int(first.get(i, 0)) for i in split.item_ids[1:]], dtype=np.int64)
    export_cfg = config if config is not None else ExportConfig(name=name or str(cfg.get("variant", run_dir.name)))
    source = {"run_dir": str(run_dir.resolve()), "checkpoint": ckpt.name,
              "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "variant": cfg.get("variant"),
              "data": str(data), "features": None if features is None else str(features), **(extra_source or {})}
    return export_model(model, repository, item_ids=split.item_ids, item_features=item_features,
                        popularity=split.item_counts, published=published, layers=layers, source=source,
                        config=export_cfg)


def export_if_new(data: Path, features: str, run_dir: Path, repository: Path, *, name: str, split: Any = None,
                  item_features: Any = None, extra_source: dict[str, Any] | None = None) -> int:
    """Export ``run_dir`` as ``name`` unless the repository's latest version already serves this checkpoint.

    That version is the checkpoint's own export, whose catalogue ``linkedout catalog add`` may have
    changed in place since: the videos added or removed are kept, never dropped by exporting the
    checkpoint again over the training catalogue. Returns the ranker
    version that serves the run.
    """
    repo = ModelRepository(repository)
    ckpt = checkpoint_of(Path(run_dir))
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    latest = repo.latest(ranker_name(name))
    if latest is not None:
        meta = read_meta(repo.version_dir(ranker_name(name), latest))
        if (meta.get("source") or {}).get("checkpoint_sha256") == sha:
            log.info("%s_ranker version %d already serves %s", name, latest, ckpt)
            return latest
    result = export_run(data, features, run_dir, repository, name=name, split=split, item_features=item_features,
                        extra_source=extra_source)
    return int(result.ranker_version)


# ---------------------------------------------------------------------------- the deploy decision


def validation_metric(checkpoint: Path, split: Any, item_features: Any, metric: str = "NDCG@10") -> float:
    """``metric`` of the model in ``checkpoint`` on the split's validation users (full catalogue, history masked).

    The items before each validation user's history window are masked too, as in training's validation.
    """
    model: Any = load_model_from_checkpoint(checkpoint, split.num_items)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    result = evaluate_model(model, split.valid, item_features if model.needs_features else None,
                      exclude=list(split.train_sequences), sampled_negatives=0)
    values = result.summary()
    if metric not in values:
        raise ValueError(f"unknown validation metric {metric!r}; choose from {sorted(values)}")
    return float(values[metric])


def compare_with_serving(run_dir: Path, repository: Path, *, name: str, split: Any, item_features: Any,
                         metric: str = "NDCG@10") -> dict[str, Any]:
    """Decide whether the model trained in ``run_dir`` may replace the one ``repository`` serves as ``name``.

    The model now serving is the newest version of ``NAME_ranker``; the candidate is deployed when
    nothing serves yet, when that version already is this checkpoint, or when its validation
    ``metric`` is at least the serving model's on the same split. The serving model's value is the
    one recorded when it was exported, if it was measured on this split; otherwise its checkpoint is
    measured again here (when it is still there and fits this catalogue); a serving model that cannot
    be measured on this split (another catalogue, a checkpoint gone) is replaced, and the reason says so.

    Returns ``{"deploy", "reason", "metric", "candidate", "serving", "serving_version", "validation"}``;
    ``validation`` is the record to store with an exported version (``export_if_new(extra_source=...)``).
    """
    ckpt = checkpoint_of(Path(run_dir))
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    candidate = validation_metric(ckpt, split, item_features, metric)
    record = {"validation": {"metric": metric, "value": candidate, "split": split.digest()}}
    out: dict[str, Any] = {"metric": metric, "candidate": candidate, "serving": None, "serving_version": None,
                           "validation": record}
    repo = ModelRepository(repository)
    latest = repo.latest(ranker_name(name)) if Path(repository).is_dir() else None
    if latest is None:
        return {**out, "deploy": True, "reason": f"nothing serves {name!r} yet: deploy (validation {metric} "
                                                 f"{candidate:.4f})"}
    source = read_meta(repo.version_dir(ranker_name(name), latest)).get("source") or {}
    out["serving_version"] = latest
    if source.get("checkpoint_sha256") == sha:
        return {**out, "deploy": True, "serving": candidate,
                "reason": f"{name} v{latest} already serves this checkpoint (validation {metric} {candidate:.4f})"}
    serving = None
    recorded = source.get("validation") or {}
    if recorded.get("metric") == metric and recorded.get("split") == split.digest():
        serving = float(recorded["value"])
    else:
        old = Path(str(source.get("run_dir", ""))) / "checkpoints" / str(source.get("checkpoint", "best.pt"))
        if old.is_file() and hashlib.sha256(old.read_bytes()).hexdigest() == source.get("checkpoint_sha256"):
            try:
                serving = validation_metric(old, split, item_features, metric)
            except (ValueError, RuntimeError, KeyError) as e:
                log.warning("cannot measure %s v%d on this split: %s", name, latest, e)
    if serving is None:
        return {**out, "deploy": True,
                "reason": f"{name} v{latest} cannot be measured on this split (another catalogue, or its checkpoint "
                          f"is gone): the new model replaces it (validation {metric} {candidate:.4f})"}
    out["serving"] = serving
    if candidate >= serving:
        return {**out, "deploy": True, "reason": f"validation {metric} {candidate:.4f} >= {serving:.4f} of {name} "
                                                 f"v{latest}: deploy"}
    return {**out, "deploy": False, "reason": f"validation {metric} {candidate:.4f} < {serving:.4f} of {name} "
                                              f"v{latest}: v{latest} keeps serving"}


# ----------------------------------------------------------------------------------- the steps


@step("compare-with-serving")
def compare(workdir: str, features: str, split: str, variant: str, model_name: str = "linkedout",
            metric: str = "NDCG@10", s3_endpoint: str = "", record: str = "") -> dict[str, Any]:
    """Whether the model trained for ``variant`` may replace the one ``W/model_repository`` serves as ``model_name``
    (:func:`compare_with_serving`). The decision is written to ``W/pipeline/decision.json``
    and to ``record`` (the export step reads the validation record there)."""
    work = Workdir.of(workdir)
    sp = load_split(split)
    decision = compare_with_serving(run_dir_of(workdir, variant), work.model_repository, name=model_name,
                                            split=sp, item_features=item_features_for(sp, features, s3_endpoint or None),
                                            metric=metric)
    print(f"== deploy decision: {decision['reason']}", flush=True)
    doc = json.dumps({**decision, "time": time.time()}, indent=2)
    atomic_write_text(work.decision, doc)
    if record:
        atomic_write_text(record, doc)
    return decision


@step("export")
def export(workdir: str, data: str, features: str, split: str, variant: str, model_name: str = "linkedout",
           decision: str = "", upload_uri: str = "", s3_endpoint: str = "") -> dict[str, Any]:
    """ONNX encoder and ranker of ``variant``'s best checkpoint as a new version of ``model_name`` in
    ``W/model_repository`` (unless its newest version already is that checkpoint), uploaded to
    ``upload_uri`` (``s3://bucket/prefix`` or a directory) when given. ``decision``: the compare step's
    record, whose validation figure is stored with the version (the next decision compares with it)."""
    if upload_uri.startswith("s3://"):
        _check_s3_credentials(upload_uri)  # before minutes of export: a configuration error, not a transient one
    validation = json.loads(Path(decision).read_text()).get("validation") if decision else None
    sp = load_split(split)
    repo = Workdir.of(workdir).model_repository
    version = export_if_new(Path(data), features, run_dir_of(workdir, variant), repo, name=model_name,
                                    split=sp, item_features=item_features_for(sp, features, s3_endpoint or None),
                                    extra_source=validation or None)
    uploaded: list[str] = []
    if upload_uri:
        uploaded = ModelRepository(repo).upload(upload_uri, endpoint_url=s3_endpoint or None)
        log.info("uploaded %d files of %s to %s", len(uploaded), repo, upload_uri)
    return {"model": model_name, "version": version, "repository": str(repo), "uploaded_to": upload_uri,
            "uploaded": len(uploaded)}


def _check_s3_credentials(uri: str) -> None:
    """``ValueError`` when boto3 finds no credentials for an upload to ``uri``."""
    if boto3.Session().get_credentials() is None:
        raise ValueError(f"no S3 credentials to upload the model repository to {uri}: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (on a cluster: the linkedout-s3 Secret), or set "
                         "model_repository_uri to a directory or to '' (no upload)")
