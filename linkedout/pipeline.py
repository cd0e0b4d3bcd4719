"""The main job, stage by stage: dataset -> features -> split -> training -> evaluation -> report.

Each stage is a plain function with explicit inputs and outputs; the CLI calls them, and the
Kubeflow components will wrap the same functions. A stage is reused only when the inputs it was
made from are the ones asked for now: each stores a fingerprint of its inputs beside its outputs
(:mod:`linkedout.fingerprint`) and, on a re-run, compares it with the new one:

============  ===================================================  ======================================
stage         inputs in its fingerprint                            when they differ
============  ===================================================  ======================================
dataset       the synthetic dataset's config (``W/data`` only)      refused; ``force`` regenerates it
features      per video: its file (size, mtime, sampled hash);      changed files re-extracted; another
              the store: the extraction spec, the dataset's name    config or dataset refused (``force``
                                                                    replaces the store)
split         the dataset's tables, the feature store's content     rebuilt
training      variant, model and training configs (seed, epochs),   refused (``force`` retrains it)
              the split's and the store's content
evaluation    the run's training fingerprint, the checkpoint's      evaluated again
              sha256, split, features, protocol
report        every evaluation, dataset and features                written again
============  ===================================================  ======================================

Every stage is also resumable: finished feature shards and checkpoints of a killed run are kept.

Work directory layout (``linkedout run --workdir W``)::

    W/data/                 the dataset (MicroLens layout; generated when not given)
    W/features/             feature shards, spec.json, index.json, dataset.json, failures.json
    W/split/                the preprocessed leave-one-out split (cached), fingerprint.json
    W/runs/<variant>/       config.json, fingerprint.json, metrics.jsonl, tb/, checkpoints/{last,best}.pt,
                            eval.json, eval.fingerprint.json
    W/report.html           the report (report.fingerprint.json beside it)
    W/summary.json          the metrics table of the run, machine-readable
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.fingerprint import (
    Fingerprint,
    StageMismatch,
    canonical_digest,
    dataset_tables,
    evaluation_fingerprint,
    file_sha256,
    files_digest,
    read_fingerprint,
    training_fingerprint,
    write_fingerprint,
)
from linkedout.utils import atomic_write_text, get_logger, set_seed

log = get_logger(__name__)

#: Variants trained by the main job: the model, the baselines and the paper's ablations. The first
#: is the model the job serves: ``warmcold`` (LinkedOut + ID rows for the videos seen in training).
DEFAULT_VARIANTS = ("warmcold", "linkedout", "sasrec_id", "popularity", "last_layer", "uniform")


@dataclass(frozen=True)
class Variant:
    """A named model of the comparison: which ``ModelConfig`` kind and fusion mode it uses."""

    name: str  # CLI / directory name
    display: str  # name in the report
    group: str  # "model" | "baseline" | "ablation"
    kind: str  # ModelConfig.kind
    mode: str = "moe"  # FusionConfig.mode
    single_layer: int = -1  # FusionConfig.single_layer, for mode "single"
    side_info: bool = False  # also encode titles (hashed word pieces) and cover images


def parse_variant(name: str) -> Variant:
    """``warmcold | linkedout | hybrid | multimodal | sasrec_id | popularity | last_layer | uniform | layer:N``
    -> ``Variant``.

    ``layer:N`` is the single-layer ablation on the N-th *kept* layer (0-based position in the
    feature store's layer list, e.g. ``layer:2`` is L8 at the paper's layers).
    """
    fixed = {
        "warmcold": Variant("warmcold", "LinkedOut + seen-video IDs", "model", "warmcold"),
        "linkedout": Variant("linkedout", "LinkedOut (MoE)", "model", "linkedout"),
        "hybrid": Variant("hybrid", "LinkedOut + IDs", "model", "hybrid"),
        "multimodal": Variant("multimodal", "LinkedOut + title + cover", "model", "linkedout",
                              side_info=True),
        "sasrec_id": Variant("sasrec_id", "SASRec (IDs)", "baseline", "sasrec_id"),
        "popularity": Variant("popularity", "Popularity", "baseline", "popularity"),
        "last_layer": Variant("last_layer", "last layer only", "ablation", "linkedout", "single", -1),
        "uniform": Variant("uniform", "uniform layer average", "ablation", "linkedout", "uniform"),
    }
    if name in fixed:
        return fixed[name]
    if name.startswith("layer:"):
        try:
            pos = int(name.split(":", 1)[1])
        except ValueError:
            pos = -2
        if pos < 0:
            raise ValueError(f"variant {name!r}: expected layer:N with N >= 0 (position in the kept layers)")
        return Variant(f"layer{pos}", f"single layer #{pos}", "ablation", "linkedout", "single", pos)
    raise ValueError(f"unknown variant {name!r}; choose from {[*fixed, 'layer:N']}")


def demo_train_config(**overrides: Any) -> Any:
    """The training schedule of the embedded default (a few thousand users, a few hundred videos).

    The paper's rates (1e-4 video encoder, 1e-5 ranking head) are set for 100 epochs of
    MicroLens-100K at batch 256, about 39 k steps (one training window per user, ~390 a epoch). The
    ``small`` preset's 1,500 users give 6 steps an epoch, ~600 in 100 epochs, in which a freshly
    initialised head barely moves at 1e-5; so the default job uses 1e-3 for every group, for up to
    the paper's 100 epochs, early-stopped on validation NDCG@10 (patience 10). Every other setting
    is the paper's: AdamW, weight decay 0.1, clip 5.0, batch 256, step schedule without warm-up,
    in-batch softmax with logQ correction, seed 42.
    """
    from linkedout.training import TrainConfig

    base: dict[str, Any] = dict(epochs=100, batch_size=256, lr_video=1e-3, lr_text=1e-3, lr_image=1e-3,
                                lr_id=1e-3, lr_head=1e-3, early_stopping_patience=10, log_every=10)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- data

MIN_INTERACTIONS = 5  # MicroLens preprocessing: users with fewer interactions are dropped
MAX_INTERACTIONS = 13  # ... and each user's last 13 are kept
MAX_HISTORY = 10


def has_dataset(root: Path) -> bool:
    return root.is_dir() and (any(root.glob("*_pairs.csv")) or any(root.glob("*_pairs.tsv")))


def ensure_dataset(root: Path, preset: str, seed: int | None = None, *, force: bool = False) -> Path:
    """Generate the synthetic dataset at ``root`` unless the same one is already there.

    A dataset generated at ``root`` with another config (another preset or seed) is refused with
    :class:`StageMismatch` (``force``: deleted and generated again); a dataset there that
    ``linkedout`` did not generate is used as it is.
    """
    from linkedout.data import synth

    cfg = synth.SynthConfig.preset(preset, **({} if seed is None else {"seed": seed}))
    if has_dataset(root):
        saved = root / f"{cfg.prefix}_synth_config.json"
        if not saved.is_file():
            log.info("dataset found at %s (not a generated one: used as it is)", root)
            return root
        old = Fingerprint("synthetic dataset", synth.content_config(json.loads(saved.read_text())))
        new = Fingerprint("synthetic dataset", synth.content_config(dataclasses.asdict(cfg)))
        if old.digest == new.digest:
            log.info("dataset found at %s", root)
            return root
        if not force:
            raise StageMismatch(str(root), "a synthetic dataset", old.diff(new),
                                f"Use another --workdir, or --force to generate the {preset!r} dataset again "
                                "(every later stage is then redone).")
        log.warning("--force: deleting the synthetic dataset at %s (%s)", root, "; ".join(old.diff(new)[:4]))
        shutil.rmtree(root)
    log.info("generating the %r synthetic dataset at %s", preset, root)
    return synth.generate(root, cfg)


def dataset_digest(data: Path) -> dict[str, Any]:
    """The dataset's fingerprint inputs: its prefix and the sha256 of its tables (videos are
    identified one by one by the extraction)."""
    from linkedout.data.microlens import find_prefix

    prefix, _ = find_prefix(data)
    return dataset_tables(data, prefix)


def interactions_digest(interactions: Any) -> str:
    """sha256 of an interactions table's rows (``user, item, timestamp``, in order)."""
    import hashlib

    import pandas as pd

    rows = pd.util.hash_pandas_object(interactions[["user", "item", "timestamp"]], index=False)
    return hashlib.sha256(rows.to_numpy().tobytes()).hexdigest()


def check_trainable(interactions: Any, source: str) -> None:
    """``DatasetError`` up front when MicroLens preprocessing would leave no user to train on."""
    from linkedout.data.microlens import DatasetError

    counts = interactions.groupby("user", sort=False).size()
    if not (counts >= MIN_INTERACTIONS).any():
        raise DatasetError(
            f"{source}: no user has >= {MIN_INTERACTIONS} interactions ({len(counts):,} users, at most "
            f"{int(counts.max()) if len(counts) else 0} each): MicroLens preprocessing drops users with fewer, so "
            "nothing would be left to train or evaluate on")


# ---------------------------------------------------------------------------------------- extraction


def extract(data: Path, out: str | Any, configs: tuple[Any, Any] | None = None, *,
            s3_endpoint: Any = None, retry_failed: bool = False, force: bool = False) -> Any:
    """Extract the features of every video of the dataset at ``data`` into the store ``out``.

    ``configs``: ``(ExtractionConfig, BackboneConfig)``; ``s3_endpoint``: an endpoint URL or an
    ``S3Config``; ``retry_failed``: try every failed video again; ``force``: a store of another
    extraction config or dataset is emptied first instead of refused. See ``extract_dataset``.
    """
    from linkedout.data.microlens import load_microlens
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import extract_dataset

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


# --------------------------------------------------------------------------------------------- split


def build_split(data: Path, features: str | None, cache_dir: Path | None = None, *,
                s3_endpoint: Any = None, interactions: Any = None) -> Any:
    """MicroLens preprocessing and leave-one-out split, over the videos that have features.

    Videos whose extraction failed (corrupt files) have no features: their interactions are dropped
    before preprocessing, and how many is logged, so that every model is compared on the same split.
    The split is cached in ``cache_dir`` with its fingerprint (the dataset's tables and the feature
    store's content) and rebuilt when they change.

    ``interactions``: the interactions to split (``user, item, timestamp`` as linkedout/data holds
    them, e.g. read back from Feast's offline store) instead of the dataset's own table; the
    catalogue is still the dataset's, and the interactions' content is part of the fingerprint.
    """
    from linkedout.data.microlens import DatasetError, load_microlens
    from linkedout.data.split import SplitData, leave_one_out, preprocess

    dataset = load_microlens(data, check_videos=False)
    catalog = list(dataset.item_ids)
    inputs: dict[str, Any] = {"dataset": dataset_digest(Path(data)), "features": None,
                              "preprocess": [MIN_INTERACTIONS, MAX_INTERACTIONS, MAX_HISTORY]}
    if interactions is not None:
        inputs["interactions"] = interactions_digest(interactions)
    if features is not None:
        from linkedout.extraction.catalog import check_store_dataset
        from linkedout.shards import FeatureReader
        from linkedout.shards.verify import store_digest

        reader = FeatureReader(features, endpoint_url=s3_endpoint)
        if not reader.storage.exists("index.json"):
            raise ValueError(f"feature store {features} is incomplete (no index.json: extraction is still "
                             "running or was stopped); finish it with `linkedout extract` first")
        check_store_dataset(reader, dataset, catalog)
        have = set(reader.ids)
        inputs["features"] = store_digest(reader)
        missing = [i for i in catalog if i not in have]
        if missing:
            log.warning("%d videos have no features (failed extraction: %s%s); their interactions are dropped",
                        len(missing), ", ".join(missing[:5]), " ..." if len(missing) > 5 else "")
            catalog = [i for i in catalog if i in have]
    fp = Fingerprint("split", inputs)
    if cache_dir is not None and (cache_dir / "split.json").is_file():
        stored = read_fingerprint(cache_dir)
        if stored is not None and stored.digest == fp.digest:
            return SplitData.load(cache_dir)
        if stored is not None:
            log.info("the split in %s is stale (%s); rebuilding it", cache_dir, "; ".join(stored.diff(fp)[:4]))
    inter = dataset.interactions if interactions is None else interactions
    inter = inter[inter["item"].isin(set(catalog))]
    pre = preprocess(inter, MIN_INTERACTIONS, MAX_INTERACTIONS)
    if pre.empty:
        check_trainable(inter, f"dataset {data}" + (" (videos with features only)" if features else ""))
        raise DatasetError(f"dataset {data}: no interactions left after preprocessing")
    split = leave_one_out(pre, max_history=MAX_HISTORY, catalog=catalog)
    if cache_dir is not None:
        split.save(cache_dir)
        write_fingerprint(cache_dir, fp)
    return split


# -------------------------------------------------------------------------------------------- models


def model_config_for(variant: Variant, spec: Any | None, d_model: int = 64) -> Any:
    """The ``ModelConfig`` of a variant, sized from the feature store's spec (L, K, D).

    The embedded default's experts compress each layer's K tokens with 4 learned queries and a
    residual MLP (``expert_queries=4, expert_hidden=128``): picked on validation NDCG@10 of the
    ``small`` synthetic preset (0.259, against 0.214 for one query and no MLP, 0.257 for 8 queries
    and a 256-wide MLP, 0.218 for d = 128). The paper-sized config is ``ModelConfig.paper()``.
    Ablations share the expert design, so they differ from the model only in how layers are fused.
    """
    from linkedout.model import ModelConfig
    from linkedout.model.config import FEATURE_KINDS, FusionConfig, ImageConfig, SequenceConfig, TextConfig

    sequence = SequenceConfig(max_history=10, num_layers=2, num_heads=2, ffn_dim=4 * d_model, dropout=0.2)
    if variant.kind in FEATURE_KINDS:
        if spec is None:
            raise ValueError(f"variant {variant.name!r} reads backbone features: give a feature store")
        fusion = FusionConfig(num_layers=len(spec.layers), tokens=spec.tokens, in_dim=spec.hidden,
                              d_model=d_model, expert_queries=4, expert_hidden=128,
                              mode=variant.mode,  # type: ignore[arg-type]
                              single_layer=variant.single_layer)
        text, image = TextConfig(enabled=variant.side_info), ImageConfig(enabled=variant.side_info)
        return ModelConfig(kind=variant.kind, d_model=d_model, fusion=fusion,  # type: ignore[arg-type]
                           sequence=sequence, head_hidden=4 * d_model, text=text, image=image)
    return ModelConfig(kind=variant.kind, d_model=d_model, sequence=sequence)  # type: ignore[arg-type]


def item_side_info(data: Path, item_ids: Sequence[str], cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Hashed title tokens int64 [N+1, Lt] and covers uint8 [N+1, 3, S, S] in item-index order.

    Row 0 (padding) is empty. A missing or unreadable cover is logged and left black.
    """
    from PIL import Image, UnidentifiedImageError

    from linkedout.data.microlens import load_microlens
    from linkedout.model.towers import hash_title_tokens

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
    from linkedout.shards import FeatureReader
    from linkedout.shards.items import ItemFeatures

    return ItemFeatures(FeatureReader(features, endpoint_url=s3_endpoint), split.item_ids)


def features_digest_of(item_features: Any) -> str | None:
    if item_features is None:
        return None
    from linkedout.shards.verify import store_digest

    return store_digest(item_features.reader)


def side_info_digest(data: Path, v: Variant) -> str | None:
    """Titles (in the tables) and covers (names, sizes, mtimes) of a variant that reads them."""
    if not v.side_info:
        return None
    from linkedout.data.microlens import load_microlens

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
             split: Any = None, item_features: Any = None) -> RunPlan:
    """The configs and the fingerprint of training ``variant`` on these inputs (nothing is written)."""
    from linkedout.model.config import FEATURE_KINDS

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
    tcfg = demo_train_config(seed=seed, epochs=epochs, batch_size=batch_size, loss=loss, device=device)
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
        _checkpoint_of(run_dir)
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
    from linkedout.model import build_model
    from linkedout.model.recommender import LinkedOutRecommender
    from linkedout.training import Trainer

    run_dir = Path(run_dir)
    if plan is None:
        plan = plan_run(data, features, variant, seed=seed, epochs=epochs, batch_size=batch_size, loss=loss,
                        device=device, s3_endpoint=s3_endpoint, split=split, item_features=item_features)
    prepare_run_dir(run_dir, plan, data, features, force=force, hint=hint)
    v, split = plan.variant, plan.split
    set_seed(seed)  # the initial weights depend on the seed alone, not on what ran before
    model = build_model(plan.model, split.num_items, split.item_counts)
    if v.side_info:
        # titles and covers become model buffers: saved with every checkpoint, so evaluation and
        # export need nothing but the checkpoint
        assert isinstance(model, LinkedOutRecommender)
        model.set_item_side_info(*item_side_info(data, split.item_ids, plan.model))
    log.info("training %s (%s) in %s", v.display, v.name, run_dir)
    result = Trainer(model, split, plan.item_features, plan.train, run_dir).fit()
    return dict(result.to_dict())


def _checkpoint_of(run_dir: Path) -> Path:
    """The run's best checkpoint, else its last one."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise FileNotFoundError(f"{run_dir} has no checkpoint (train it first: linkedout train --run-dir {run_dir})")


EVAL_PROTOCOL = {"sampled_negatives": 100, "seed": 0}


def eval_fingerprint(run_dir: Path, split: Any, features_digest: str | None, which: str = "test") -> Fingerprint:
    """The inputs of ``run_dir``'s evaluation (see :func:`linkedout.fingerprint.evaluation_fingerprint`)."""
    training = read_fingerprint(run_dir)
    return evaluation_fingerprint(None if training is None else training.digest, file_sha256(_checkpoint_of(run_dir)),
                                  split.digest(), features_digest, which, EVAL_PROTOCOL)


def evaluation_is_fresh(run_dir: Path, fp: Fingerprint) -> bool:
    """Whether ``run_dir/eval.json`` was made from exactly the inputs ``fp``."""
    stored = read_fingerprint(run_dir / "eval.json")
    return (run_dir / "eval.json").is_file() and stored is not None and stored.digest == fp.digest


def evaluate_run(data: Path, features: str | None, run_dir: Path, *, which: str = "test",
                 s3_endpoint: Any = None, split: Any = None, item_features: Any = None) -> dict[str, Any]:
    """Evaluate a run's best checkpoint on the test (or validation) split; write ``eval.json`` and its fingerprint."""
    from linkedout.evaluation import evaluate
    from linkedout.interpret.report import count_parameters, write_eval_json
    from linkedout.training.checkpoint import load_model_from_checkpoint

    run_dir = Path(run_dir)
    _checkpoint_of(run_dir)  # fail before any loading when the run was never trained
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if split is None:
        split = build_split(data, features, s3_endpoint=s3_endpoint)
    import torch

    model: Any = load_model_from_checkpoint(_checkpoint_of(run_dir), split.num_items)
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
    result = evaluate(model, eval_set, item_features if model.needs_features else None, exclude=exclude,
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


# -------------------------------------------------------------------------------------------- report


def report(runs: Sequence[Path], out: Path, *, data: Path | None = None, features: str | None = None,
           s3_endpoint: Any = None, notes: Sequence[str] | None = None, split: Any = None,
           item_features: Any = None) -> Path:
    """Write the HTML report of ``runs``; gate heatmaps come from the first run with a learned gate.

    ``split`` / ``item_features``: the split the runs were trained and evaluated on and its feature
    table, when the caller has them (the pipeline's report step); otherwise built from ``data``.

    The "Dataset and configuration" section shows the data's figures, the feature extraction
    (from the store's spec), and every run's model and training configuration.
    """
    import torch

    from linkedout.interpret.contributions import layer_contributions
    from linkedout.interpret.report import load_run, write_report
    from linkedout.model.config import FEATURE_KINDS
    from linkedout.training.checkpoint import load_model_from_checkpoint

    records = [load_run(r) for r in runs]
    contributions = None
    labels = counts = None
    dataset_summary: dict[str, Any] | None = None
    extraction: dict[str, Any] | None = None
    split = None
    if data is not None:
        from linkedout.data.microlens import load_microlens
        from linkedout.data.stats import dataset_stats

        dataset_summary = dataset_stats(load_microlens(data, check_videos=False))
        if split is None:
            split = build_split(data, features, s3_endpoint=s3_endpoint)
    if features is not None:
        from linkedout.shards import FeatureReader

        reader = FeatureReader(features, endpoint_url=s3_endpoint)
        extraction = {**reader.spec.to_dict(), "videos": len(reader), "failed": len(reader.failed),
                      "store": reader.storage.uri}
    if split is not None and features is not None:
        for rec in records:
            mode = ((rec.config or {}).get("model", {}).get("fusion", {}) or {}).get("mode")
            kind = (rec.config or {}).get("model", {}).get("kind")
            if kind in FEATURE_KINDS and mode == "moe":
                model: Any = load_model_from_checkpoint(_checkpoint_of(rec.run_dir), split.num_items)
                if item_features is None:
                    item_features = item_features_for(split, features, s3_endpoint)
                names = [f"L{layer}" for layer in item_features.reader.spec.layers]
                with torch.no_grad():
                    contributions = layer_contributions(model, item_features, layer_names=names)
                labels = [f"video {i}" for i in split.item_ids]
                counts = split.item_counts
                break
    return write_report(
        out, title="LinkedOut report", metrics_rows=[r for r in records if r.eval is not None],
        training_logs={r.name: r.logs for r in records if r.logs}, contributions=contributions,
        dataset_summary=dataset_summary, notes=list(notes) if notes else None, item_labels=labels,
        item_counts=counts, extraction=extraction,
        run_configs={r.name: r.config for r in records if r.config},
    )


# ----------------------------------------------------------------------------------- model summary


def model_summary(config: Path | None, hidden: int) -> str:
    from linkedout.model import ModelConfig, build_model
    from linkedout.model.summary import format_summary, paper_comparison, parameter_summary

    if config is None:
        return paper_comparison() if hidden in (3584, 4096) else _summary_at(hidden)
    import torch

    cfg = ModelConfig.from_dict(json.loads(Path(config).read_text()))
    with torch.device("meta"):
        model = build_model(cfg, 1000, np.ones(1001, dtype=np.int64))
    return format_summary(parameter_summary(model), title=f"trainable parameters ({config}, 1,000 items)")


def _summary_at(hidden: int) -> str:
    from linkedout.model.summary import format_summary, paper_parameter_summary

    return format_summary(paper_parameter_summary(hidden), title=f"paper config at D={hidden}")
