"""Evaluation in the main job: a run's best checkpoint on the test split (full catalogue, history masked,
warm and cold users apart), reused while its fingerprint (the run's training fingerprint, the
checkpoint's sha256, the split, the feature shards, the protocol) is the same; and the
:func:`evaluate` step."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linkedout.evaluation import evaluate as evaluate_model
from linkedout.fingerprint import (
    Fingerprint,
    evaluation_fingerprint,
    file_sha256,
    read_fingerprint,
    write_fingerprint,
)
from linkedout.interpret.runs import count_parameters, write_eval_json
from linkedout.job.split import build_split, load_split
from linkedout.job.step import step
from linkedout.job.training import checkpoint_of, features_digest_of, item_features_for, run_dir_of
from linkedout.model.config import FEATURE_KINDS
from linkedout.shards import FeatureReader
from linkedout.shards.verify import store_digest
from linkedout.training.checkpoint import load_model_from_checkpoint
from linkedout.utils import get_logger

log = get_logger(__name__)

EVAL_PROTOCOL = {"sampled_negatives": 100, "seed": 0}


def eval_fingerprint(run_dir: Path, split: Any, features_digest: str | None, which: str = "test") -> Fingerprint:
    """The inputs of ``run_dir``'s evaluation (see :func:`linkedout.fingerprint.evaluation_fingerprint`)."""
    training = read_fingerprint(run_dir)
    return evaluation_fingerprint(None if training is None else training.digest, file_sha256(checkpoint_of(run_dir)),
                                  split.digest(), features_digest, which, EVAL_PROTOCOL)


def evaluation_is_fresh(run_dir: Path, fp: Fingerprint) -> bool:
    """Whether ``run_dir/eval.json`` was made from exactly the inputs ``fp``."""
    stored = read_fingerprint(run_dir / "eval.json")
    return (run_dir / "eval.json").is_file() and stored is not None and stored.digest == fp.digest


def evaluate_run(data: Path, features: str | None, run_dir: Path, *, which: str = "test",
                 s3_endpoint: Any = None, split: Any = None, item_features: Any = None) -> dict[str, Any]:
    """Evaluate a run's best checkpoint on the test (or validation) split; write ``eval.json`` and its fingerprint."""
    run_dir = Path(run_dir)
    checkpoint_of(run_dir)  # fail before any loading when the run was never trained
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if split is None:
        split = build_split(data, features, s3_endpoint=s3_endpoint)
    model: Any = load_model_from_checkpoint(checkpoint_of(run_dir), split.num_items)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # scoring the catalogue is the heavy part
    if model.needs_features and item_features is None:
        if features is None:
            raise ValueError(f"{run_dir} holds a model that reads backbone features: pass --features")
        item_features = item_features_for(split, features, s3_endpoint)
    fp = eval_fingerprint(run_dir, split, features_digest_of(item_features) if model.needs_features else None, which)
    eval_set = split.test if which == "test" else split.valid
    if which == "test":
        exclude = [np.append(s, t) for s, t in zip(split.train_sequences, split.valid.targets)]
    else:
        exclude = list(split.train_sequences)
    t0 = time.perf_counter()
    result = evaluate_model(model, eval_set, item_features if model.needs_features else None, exclude=exclude,
                      sampled_negatives=EVAL_PROTOCOL["sampled_negatives"], seed=EVAL_PROTOCOL["seed"])
    log.info("evaluated %s on %s in %.1f s: %s", run_dir.name, which, time.perf_counter() - t0,
             {k: round(v, 4) for k, v in result.summary().items()})
    train_seed = int(cfg.get("train", {}).get("seed", 0))
    write_eval_json(run_dir / "eval.json", result, model=str(cfg.get("display", run_dir.name)),
                    params=count_parameters(model), seed=train_seed,
                    extra={"group": cfg.get("group", "model"), "split": which, "variant": cfg.get("variant"),
                           "num_items": split.num_items})
    write_fingerprint(run_dir / "eval.json", fp)
    return json.loads((run_dir / "eval.json").read_text())


@step("evaluate", "variant")
def evaluate(workdir: str, data: str, features: str, split: str, variant: str, checkpoint: str = "",
             s3_endpoint: str = "") -> dict[str, Any]:
    """Test metrics of ``W/runs/<variant>``'s best checkpoint (``checkpoint``: the trained model's copy,
    which must be that checkpoint), reused when its evaluation is of exactly these inputs."""
    run_dir = run_dir_of(workdir, variant)
    ckpt = checkpoint_of(run_dir)
    if checkpoint and file_sha256(checkpoint) != file_sha256(ckpt):
        raise ValueError(f"the model given ({checkpoint}) is not the best checkpoint of {run_dir} (was it trained "
                         "again meanwhile?)")
    sp = load_split(split)
    digest = None
    if reads_features(run_dir):  # the store's digest from its manifests; the features are read only to evaluate
        digest = store_digest(FeatureReader(features, endpoint_url=s3_endpoint or None))
    fp = eval_fingerprint(run_dir, sp, digest)
    if evaluation_is_fresh(run_dir, fp):
        log.info("%s already evaluated on these inputs", run_dir.name)
        ev = json.loads((run_dir / "eval.json").read_text())
    else:  # evaluate_run loads the feature table when the model reads it
        ev = evaluate_run(Path(data), features, run_dir, split=sp, s3_endpoint=s3_endpoint or None)
    return {"run_dir": str(run_dir), "model": ev.get("model"), "metrics": flat_metrics(ev)}


def reads_features(run_dir: Path) -> bool:
    """Whether the model trained in ``run_dir`` reads backbone features (its evaluation's fingerprint then
    holds the feature store's digest): its config's kind is one of ``linkedout.model.config.FEATURE_KINDS``,
    the set the model itself answers ``needs_features`` from."""
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    return (cfg.get("model") or {}).get("kind") in FEATURE_KINDS


def flat_metrics(ev: dict[str, Any]) -> dict[str, float]:
    """``{"HR@10": .., "warm/HR@10": .., "cold/NDCG@10": ..}`` of an ``eval.json`` (full catalogue; nulls dropped)."""
    full = ev.get("full") or {}
    out: dict[str, float] = {}
    for part in ("overall", "warm", "cold"):
        for k, v in (full.get(part) or {}).items():
            if isinstance(v, (int, float)):
                out[k if part == "overall" else f"{part}/{k}"] = float(v)
    return out
