"""Training in the main job: a variant's configs and fingerprint (:class:`RunPlan`), its run directory, the
training itself (one process, or ``torchrun`` over the node's GPUs), and the two steps
(:func:`plan_training`, :func:`train`).

A run directory ``W/runs/<variant>`` holds one run of one set of inputs (variant, model and
training configs, split, feature shards, side information): a run of other inputs is refused with
what differs (``force``: cleared), a killed run resumes, a finished one is reused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from linkedout.data.microlens import load_microlens
from linkedout.fingerprint import (
    Fingerprint,
    StageMismatch,
    canonical_digest,
    file_sha256,
    files_digest,
    read_fingerprint,
    training_fingerprint,
    write_fingerprint,
)
from linkedout.job.dataset import dataset_digest
from linkedout.job.params import config_from_dict
from linkedout.job.split import build_split, load_split
from linkedout.job.step import step
from linkedout.job.variants import Variant, main_train_config, model_config_for, parse_variant
from linkedout.model import build_model
from linkedout.model.config import FEATURE_KINDS
from linkedout.model.recommender import LinkedOutRecommender
from linkedout.model.towers import hash_title_tokens
from linkedout.shards import FeatureReader
from linkedout.shards.items import ItemFeatures
from linkedout.shards.verify import store_digest
from linkedout.training import TrainConfig, Trainer
from linkedout.utils import atomic_write_text, get_logger, set_seed
from linkedout.workdir import Workdir

log = get_logger(__name__)


def run_dir_of(workdir: str | Path, variant: str) -> Path:
    """``W/runs/<variant's directory name>``."""
    return Workdir.of(workdir).run(parse_variant(variant).name)


def item_side_info(data: Path, item_ids: Sequence[str], cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Hashed title tokens int64 [N+1, Lt] and covers uint8 [N+1, 3, S, S] in item-index order.

    Row 0 (padding) is empty. A missing or unreadable cover is logged and left black.
    """
    dataset = load_microlens(data, check_videos=False)
    titles = dict(zip(dataset.titles["item"], dataset.titles["title"]))
    tokens = hash_title_tokens(["", *(titles.get(i, "") for i in item_ids[1:])], cfg.text.max_tokens,
                               cfg.text.num_buckets)  # (N+1, Lt)
    size = cfg.image.size
    covers = np.zeros((len(item_ids), 3, size, size), dtype=np.uint8)  # (N+1, 3, S, S)
    bad = []
    for row, item in enumerate(item_ids[1:], start=1):
        try:
            with Image.open(dataset.cover_path(item)) as img:
                covers[row] = np.asarray(img.convert("RGB").resize((size, size))).transpose(2, 0, 1)
        except (OSError, UnidentifiedImageError):
            bad.append(item)
    if bad:
        log.warning("%d covers missing or unreadable (left black): %s", len(bad), bad[:5])
    return tokens, covers


def item_features_for(split: Any, features: str | None, s3_endpoint: str | None = None) -> Any:
    """``ItemFeatures`` over the store ``features`` in the split's item order (None without a store)."""
    if features is None:
        return None
    return ItemFeatures(FeatureReader(features, endpoint_url=s3_endpoint), split.item_ids)


def features_digest_of(item_features: Any) -> str | None:
    if item_features is None:
        return None
    return store_digest(item_features.reader)


def side_info_digest(data: Path, v: Variant) -> str | None:
    """Titles (in the tables) and covers (names, sizes, mtimes) of a variant that reads them."""
    if not v.side_info:
        return None
    dataset = load_microlens(data, check_videos=False)
    return canonical_digest([dataset_digest(Path(data)), files_digest(dataset.covers_dir, "*.jpg")])


TRAIN_HINT = "Use another --run-dir, or --force to clear it and train from scratch."
RUN_HINT = "Retrain with `linkedout run --force` (their run directories are cleared first), or use another --workdir."


def check_run_dir(run_dir: Path, fp: Fingerprint, *, force: bool = False, hint: str = TRAIN_HINT) -> None:
    """Refuse (:class:`StageMismatch`) a run directory that holds a run of other inputs; ``force`` clears it.

    A run directory written before fingerprints existed is checked by its ``config.json``
    (variant, model and training configs) and adopted when they agree.
    """
    stored = read_fingerprint(run_dir)
    config_file = run_dir / "config.json"
    if stored is None and config_file.is_file():
        old = json.loads(config_file.read_text())
        train = {k: v for k, v in (old.get("train") or {}).items() if k in fp.inputs["train"]}
        stored = Fingerprint("training", {**fp.inputs, "variant": old.get("variant"), "model": old.get("model"),
                                          "train": train})
        if stored.digest == fp.digest:
            log.warning("%s has no fingerprint (written by an older version): adopting it; its split and "
                        "features cannot be checked", run_dir)
            return
    try:
        fp.check(stored, str(run_dir), hint)
    except StageMismatch:
        if not force:
            raise
        log.warning("--force: clearing %s, which holds a run of other inputs", run_dir)
        shutil.rmtree(run_dir)


@dataclass
class RunPlan:
    """What a training run is made from: the variant, its configs, its fingerprint, its inputs."""

    variant: Variant
    model: Any  # ModelConfig
    train: Any  # TrainConfig
    fingerprint: Fingerprint
    split: Any  # SplitData
    item_features: Any  # ItemFeatures | None


def plan_run(data: Path, features: str | None, variant: str, *, seed: int = 42, epochs: int | None = None,
             batch_size: int | None = None, loss: str | None = None, device: str = "auto", s3_endpoint: Any = None,
             split: Any = None, item_features: Any = None, training: Mapping[str, Any] | None = None) -> RunPlan:
    """The configs and the fingerprint of training ``variant`` on these inputs (nothing is written).

    ``training``: the pipelines' ``training`` parameter (``TrainConfig`` fields over the main job's
    schedule); when given, ``seed``, ``epochs``, ``batch_size`` and ``loss`` are not read.
    """
    v = parse_variant(variant)
    if split is None:
        if features is None:
            log.warning("no feature store given: the split keeps every video, also those whose extraction "
                        "failed; pass --features to compare with LinkedOut runs on the same split")
        split = build_split(data, features, s3_endpoint=s3_endpoint)
    spec = None
    if v.kind in FEATURE_KINDS:
        if features is None:
            raise ValueError(f"variant {variant!r} reads backbone features: pass --features")
        if item_features is None:
            item_features = item_features_for(split, features, s3_endpoint)
        spec = item_features.reader.spec
    else:
        item_features = None
    mcfg = model_config_for(v, spec)
    tcfg = main_train_config(seed=seed, epochs=epochs, batch_size=batch_size, loss=loss, device=device) if training is None \
        else dataclasses.replace(config_from_dict(TrainConfig, training, "training"), device=device)
    fp = training_fingerprint(v.name, mcfg.to_dict(), tcfg.to_dict(), split.digest(), features_digest_of(item_features),
                              side_info_digest(data, v))
    return RunPlan(v, mcfg, tcfg, fp, split, item_features)


def prepare_run_dir(run_dir: Path, plan: RunPlan, data: Path, features: str | None, *, force: bool = False,
                    hint: str = TRAIN_HINT) -> None:
    """Refuse a run directory of other inputs (``force``: clear it), then write the fingerprint and ``config.json``."""
    check_run_dir(run_dir, plan.fingerprint, force=force, hint=hint)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_fingerprint(run_dir, plan.fingerprint)
    v = plan.variant
    atomic_write_text(run_dir / "config.json", json.dumps({
        "variant": v.name, "display": v.display, "group": v.group, "data": str(data),
        "features": None if features is None else str(features), "num_items": plan.split.num_items,
        "model": plan.model.to_dict(), "train": plan.train.to_dict(),
    }, indent=2))


def training_is_complete(run_dir: Path, fp: Fingerprint) -> bool:
    """Whether ``run_dir`` holds a finished run (``result.json`` and its checkpoint) of exactly the inputs ``fp``."""
    stored = read_fingerprint(run_dir)
    if stored is None or stored.digest != fp.digest or not (run_dir / "result.json").is_file():
        return False
    try:
        checkpoint_of(run_dir)
    except FileNotFoundError:
        return False
    return True


def train_variant(data: Path, features: str | None, run_dir: Path, variant: str, *, seed: int = 42,
                  epochs: int | None = None, batch_size: int | None = None, loss: str | None = None,
                  device: str = "auto", s3_endpoint: Any = None, split: Any = None,
                  item_features: Any = None, force: bool = False, hint: str = TRAIN_HINT,
                  plan: RunPlan | None = None) -> dict[str, Any]:
    """Train one variant into ``run_dir`` (resuming a killed run) and return the training result.

    ``plan``: the :func:`plan_run` of exactly these arguments when the caller made it already.

    The run's fingerprint (:func:`linkedout.fingerprint.training_fingerprint`) is written into
    ``run_dir`` before training; a run directory that holds a run of other inputs (another variant,
    model or training config, seed, split or feature store) is refused with :class:`StageMismatch`
    naming what differs, before anything in it is touched (``force``: cleared and trained anew).
    """
    run_dir = Path(run_dir)
    if plan is None:
        plan = plan_run(data, features, variant, seed=seed, epochs=epochs, batch_size=batch_size, loss=loss,
                        device=device, s3_endpoint=s3_endpoint, split=split, item_features=item_features)
    prepare_run_dir(run_dir, plan, data, features, force=force, hint=hint)
    v, split = plan.variant, plan.split
    set_seed(plan.train.seed)  # the initial weights depend on the seed alone, not on what ran before
    model = build_model(plan.model, split.num_items, split.item_counts)
    if v.side_info:
        # titles and covers become model buffers: saved with every checkpoint, so evaluation and
        # export need nothing but the checkpoint
        assert isinstance(model, LinkedOutRecommender)
        model.set_item_side_info(*item_side_info(data, split.item_ids, plan.model))
    log.info("training %s (%s) in %s", v.display, v.name, run_dir)
    result = Trainer(model, split, plan.item_features, plan.train, run_dir).fit()
    return dict(result.to_dict())


def checkpoint_of(run_dir: Path) -> Path:
    """The run's best checkpoint, else its last one."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise FileNotFoundError(f"{run_dir} has no checkpoint (train it first: linkedout train --run-dir {run_dir})")


@step("plan-training")
def plan_training(workdir: str, data: str, features: str, split: str, variants: Sequence[str],
                  training: Mapping[str, Any] | None = None, force: bool = False, s3_endpoint: str = "",
                  model_variant: str = "") -> list[dict[str, str]]:
    """Check every variant's run directory before any training starts: one of other inputs (another
    ``training`` schedule or seed, split or features) is refused with what differs (``force``: cleared). ``model_variant`` (the
    one to deploy) must be among them. Returns one item per variant: ``{"variant", "data", "features",
    "split"}``, what a training task needs."""
    if not variants:
        raise ValueError("variants: give at least one model to train")
    names = [parse_variant(v).name for v in variants]  # a bad name fails before any work
    if len(set(names)) != len(names):
        raise ValueError(f"variants: {list(variants)} name a model twice")
    if model_variant and parse_variant(model_variant).name not in names:
        raise ValueError(f"model_variant {model_variant!r} (the model to deploy) is not among the variants "
                         f"{list(variants)}")
    sp = load_split(split)
    item_features = item_features_for(sp, features, s3_endpoint or None)
    problems = []
    for v in variants:
        plan = plan_run(Path(data), features, v, training=training, split=sp, item_features=item_features)
        try:
            check_run_dir(run_dir_of(workdir, v), plan.fingerprint, force=force, hint=RUN_HINT)
        except StageMismatch as e:
            problems.append(f"{plan.variant.name} ({'; '.join(e.differences[:4])})")
    if problems:
        raise StageMismatch(str(Path(workdir) / "runs"), "trained runs", problems, RUN_HINT)
    return [{"variant": v, "data": data, "features": features, "split": split} for v in variants]


@step("train", "variant")
def train(workdir: str, data: str, features: str, split: str, variant: str, model_dir: str, *,
          training: Mapping[str, Any] | None = None, gpus: int = 1, force: bool = False,
          s3_endpoint: str = "") -> dict[str, Any]:
    """Train ``variant`` into ``W/runs/<variant>`` on every GPU of the node (``torchrun`` when there are
    several), resuming a killed run and reusing a finished one of the same inputs; copy the best
    checkpoint with its config and fingerprint into ``model_dir`` (the ``Output[Model]``)."""
    run_dir = run_dir_of(workdir, variant)
    sp = load_split(split)
    plan = plan_run(Path(data), features, variant, training=training, split=sp, s3_endpoint=s3_endpoint or None)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and visible < gpus and torch.cuda.is_available():
        log.warning("the task asked for %d GPU(s) and sees %d", gpus, visible)
    processes = max(1, min(gpus, visible))  # one process per asked-for GPU it sees (kfp.local sees them all)
    if training_is_complete(run_dir, plan.fingerprint):
        log.info("%s already trained on these inputs (%s); reusing it", plan.variant.name, run_dir)
    elif processes > 1 and not plan.variant.side_info:
        prepare_run_dir(run_dir, plan, Path(data), features, force=force, hint=RUN_HINT)
        _torchrun(run_dir, plan, split, features, processes, s3_endpoint)
    else:
        if processes > 1:
            log.warning("%s reads titles and covers, which the torchrun entry point does not load: one process",
                        plan.variant.name)
        train_variant(Path(data), features, run_dir, variant, split=sp,
                      item_features=plan.item_features, force=force, hint=RUN_HINT, s3_endpoint=s3_endpoint or None,
                      plan=plan)
    ckpt = checkpoint_of(run_dir)
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt, out / ckpt.name)
    for name in ("config.json", "fingerprint.json", "result.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
    return {"run_dir": str(run_dir), "variant": plan.variant.name, "checkpoint": ckpt.name,
            "checkpoint_sha256": file_sha256(ckpt), "best_metric": result.get("best_metric"),
            "best_epoch": result.get("best_epoch"), "epochs_completed": result.get("epochs_completed"),
            "processes": processes}


def _torchrun(run_dir: Path, plan: Any, split: str, features: str, processes: int, s3_endpoint: str) -> None:
    """``torchrun --nproc-per-node N -m linkedout.training.distributed`` on this node; its output goes to the log."""
    (run_dir / "model_config.json").write_text(json.dumps(plan.model.to_dict()))
    (run_dir / "train_config.json.in").write_text(json.dumps(plan.train.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "linkedout.training.distributed", "--split", split, "--run-dir", str(run_dir),
           "--model-config", str(run_dir / "model_config.json"), "--train-config",
           str(run_dir / "train_config.json.in")]
    if plan.item_features is not None:
        cmd += ["--features", features]
    if s3_endpoint:
        cmd += ["--s3-endpoint", s3_endpoint]
    log.info("training %s on %d processes: %s", plan.variant.name, processes, " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun training of {plan.variant.name} failed (exit {done.returncode}); "
                           f"its ranks' output is above, its checkpoints in {run_dir} (a re-run resumes)")
