"""The main job, stage by stage: dataset -> features -> split -> training -> evaluation -> report.

Each stage is a function the CLI calls (and that the Kubeflow components will wrap later). Every
stage is resumable: it reads what an earlier run left in the work directory and skips what is
complete (the synthetic dataset, finished feature shards, trained checkpoints, written evaluations).

Work directory layout (``linkedout run --workdir W``)::

    W/data/                 the dataset (MicroLens layout; generated when not given)
    W/features/             feature shards, spec.json, index.json
    W/split/                the preprocessed leave-one-out split (cached)
    W/runs/<variant>/       config.json, metrics.jsonl, tb/, checkpoints/{last,best}.pt, eval.json
    W/report.html           the report
    W/summary.json          the metrics table of the run, machine-readable
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def has_dataset(root: Path) -> bool:
    return root.is_dir() and (any(root.glob("*_pairs.csv")) or any(root.glob("*_pairs.tsv")))


def ensure_dataset(root: Path, preset: str, seed: int | None = None) -> Path:
    """Generate the synthetic dataset at ``root`` unless one is already there."""
    if has_dataset(root):
        log.info("dataset found at %s", root)
        return root
    from linkedout.data import synth

    cfg = synth.SynthConfig.preset(preset, **({} if seed is None else {"seed": seed}))
    log.info("generating the %r synthetic dataset at %s", preset, root)
    return synth.generate(root, cfg)


# ---------------------------------------------------------------------------------------- extraction


def extraction_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(ExtractionConfig, BackboneConfig)`` from ``linkedout extract`` arguments."""
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import DEFAULT_PROMPTS, ExtractionConfig

    ecfg = ExtractionConfig(
        layers=args.layers, prompts=tuple(args.prompts) if args.prompts else DEFAULT_PROMPTS,
        num_frames=args.frames, frame_size=args.frame_size, tokens=args.tokens, dtype=args.dtype,
        batch_size=args.batch_size, shard_size=args.shard_size, early_exit=not args.no_early_exit,
    )
    bcfg = BackboneConfig(source=args.backbone, device=args.device, dtype=args.backbone_dtype, seed=args.seed)
    return ecfg, bcfg


def extract(data: Path, out: str | os.PathLike[str], configs: tuple[Any, Any] | None = None, *,
            s3_endpoint: str | None = None) -> Any:
    """Extract the features of every video of the dataset at ``data`` into the store ``out``."""
    from linkedout.data.microlens import load_microlens
    from linkedout.extraction.extractor import extract_dataset

    ecfg, bcfg = configs if configs is not None else (None, None)
    # Missing or corrupt videos are not a reason to stop: the extractor records each by id with the
    # reason, and the split drops their interactions.
    dataset = load_microlens(data, check_videos=False)
    return extract_dataset(dataset, str(out), ecfg, bcfg, endpoint_url=s3_endpoint)


def features_info(args: argparse.Namespace) -> str:
    """The text of ``linkedout features info``: a store's figures, or those of a given setting."""
    from linkedout.features import FeatureReader, FeatureSpec
    from linkedout.features.info import format_info, info_from_store, storage_summary

    if args.store:
        reader = FeatureReader(args.store, endpoint_url=args.s3_endpoint)
        return format_info(info_from_store(reader))
    spec = FeatureSpec(backbone="(setting)", layers=tuple(range(0, 4 * args.layers, 4)), prompts=("-",),
                       num_frames=8, frame_size=224, tokens=args.tokens, hidden=args.hidden, dtype=args.dtype)
    return format_info(storage_summary(spec, args.videos))


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


# --------------------------------------------------------------------------------------------- split


def build_split(data: Path, features: str | None, cache_dir: Path | None = None, *,
                s3_endpoint: str | None = None) -> Any:
    """MicroLens preprocessing and leave-one-out split, over the videos that have features.

    Videos whose extraction failed (corrupt files) have no features: their interactions are dropped
    before preprocessing, and how many is logged, so that every model is compared on the same split.
    The split is cached in ``cache_dir`` (rebuilt when the dataset or the store changes).
    """
    from linkedout.data.microlens import load_microlens
    from linkedout.data.split import SplitData, leave_one_out, preprocess

    dataset = load_microlens(data, check_videos=False)
    catalog = list(dataset.item_ids)
    pairs = sorted(Path(data).glob(f"{dataset.prefix}_pairs.*"))
    stamp: dict[str, Any] = {
        "data": str(Path(data).resolve()), "items": len(catalog),
        "pairs": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in pairs],
    }
    if features is not None:
        from linkedout.features import FeatureReader

        reader = FeatureReader(features, endpoint_url=s3_endpoint)
        if not reader.storage.exists("index.json"):
            raise ValueError(f"feature store {features} is incomplete (no index.json: extraction is still "
                             "running or was stopped); finish it with `linkedout extract` first")
        have = set(reader.ids)
        stamp["features"] = str(features)
        stamp["feature_ids"] = hashlib.sha256("\n".join(sorted(have)).encode()).hexdigest()
        missing = [i for i in catalog if i not in have]
        if missing:
            log.warning("%d videos have no features (failed extraction: %s%s); their interactions are dropped",
                        len(missing), ", ".join(missing[:5]), " ..." if len(missing) > 5 else "")
            catalog = [i for i in catalog if i in have]
            stamp["items"] = len(catalog)
    stamp_file = None if cache_dir is None else cache_dir / "stamp.json"
    if stamp_file is not None and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return SplitData.load(stamp_file.parent)
    inter = dataset.interactions
    inter = inter[inter["item"].isin(set(catalog))]
    split = leave_one_out(preprocess(inter), max_history=10, catalog=catalog)
    if cache_dir is not None:
        split.save(cache_dir)
        atomic_write_text(cache_dir / "stamp.json", json.dumps(stamp, indent=2))
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
    from linkedout.features import FeatureReader
    from linkedout.features.items import ItemFeatures

    return ItemFeatures(FeatureReader(features, endpoint_url=s3_endpoint), split.item_ids)


def train_variant(data: Path, features: str | None, run_dir: Path, variant: str, *, seed: int = 42,
                  epochs: int | None = None, batch_size: int | None = None, loss: str | None = None,
                  device: str = "auto", s3_endpoint: str | None = None, split: Any = None,
                  item_features: Any = None) -> dict[str, Any]:
    """Train one variant into ``run_dir`` (resuming a killed run) and return the training result."""
    from linkedout.model import build_model
    from linkedout.model.config import FEATURE_KINDS
    from linkedout.model.recommender import LinkedOutRecommender
    from linkedout.training import Trainer

    v = parse_variant(variant)
    run_dir = Path(run_dir)
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
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps({
        "variant": v.name, "display": v.display, "group": v.group, "data": str(data),
        "features": None if features is None else str(features), "num_items": split.num_items,
        "model": mcfg.to_dict(), "train": tcfg.to_dict(),
    }, indent=2))
    set_seed(seed)  # the initial weights depend on the seed alone, not on what ran before
    model = build_model(mcfg, split.num_items, split.item_counts)
    if v.side_info:
        # titles and covers become model buffers: saved with every checkpoint, so evaluation and
        # export need nothing but the checkpoint
        assert isinstance(model, LinkedOutRecommender)
        model.set_item_side_info(*item_side_info(data, split.item_ids, mcfg))
    log.info("training %s (%s) in %s", v.display, v.name, run_dir)
    result = Trainer(model, split, item_features, tcfg, run_dir).fit()
    return dict(result.to_dict())


def _checkpoint_of(run_dir: Path) -> Path:
    """The run's best checkpoint, else its last one."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise FileNotFoundError(f"{run_dir} has no checkpoint (train it first: linkedout train --run-dir {run_dir})")


def evaluate_run(data: Path, features: str | None, run_dir: Path, *, which: str = "test",
                 s3_endpoint: str | None = None, split: Any = None, item_features: Any = None) -> dict[str, Any]:
    """Evaluate a run's best checkpoint on the test (or validation) split and write ``eval.json``."""
    from linkedout.evaluation import evaluate
    from linkedout.interpret.report import count_parameters, write_eval_json
    from linkedout.training.checkpoint import load_model_from_checkpoint

    run_dir = Path(run_dir)
    _checkpoint_of(run_dir)  # fail before any loading when the run was never trained
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
    if which not in ("test", "valid"):
        raise ValueError(f"which must be 'test' or 'valid', got {which!r}")
    eval_set = split.test if which == "test" else split.valid
    if which == "test":
        exclude = [np.append(s, t) for s, t in zip(split.train_sequences, split.valid.targets)]
    else:
        exclude = list(split.train_sequences)
    t0 = time.perf_counter()
    result = evaluate(model, eval_set, item_features if model.needs_features else None, exclude=exclude,
                      sampled_negatives=100, seed=0)
    log.info("evaluated %s on %s in %.1f s: %s", run_dir.name, which, time.perf_counter() - t0,
             {k: round(v, 4) for k, v in result.summary().items()})
    train_seed = int(cfg.get("train", {}).get("seed", 0))
    write_eval_json(run_dir / "eval.json", result, model=str(cfg.get("display", run_dir.name)),
                    params=count_parameters(model), seed=train_seed,
                    extra={"group": cfg.get("group", "model"), "split": which, "variant": cfg.get("variant")})
    return json.loads((run_dir / "eval.json").read_text())


# -------------------------------------------------------------------------------------------- report


def report(runs: Sequence[Path], out: Path, *, data: Path | None = None, features: str | None = None,
           s3_endpoint: str | None = None, notes: Sequence[str] | None = None) -> Path:
    """Write the HTML report of ``runs``; gate heatmaps come from the first run with a learned gate."""
    import torch

    from linkedout.interpret.contributions import layer_contributions
    from linkedout.interpret.report import load_run, write_report
    from linkedout.model.config import FEATURE_KINDS
    from linkedout.training.checkpoint import load_model_from_checkpoint

    records = [load_run(r) for r in runs]
    contributions = None
    labels = counts = None
    dataset_summary: dict[str, Any] | None = None
    split = None
    if data is not None:
        from linkedout.data.microlens import load_microlens
        from linkedout.data.stats import dataset_stats

        dataset_summary = dataset_stats(load_microlens(data, check_videos=False))
        split = build_split(data, features, s3_endpoint=s3_endpoint)
    if split is not None and features is not None:
        for rec in records:
            mode = ((rec.config or {}).get("model", {}).get("fusion", {}) or {}).get("mode")
            kind = (rec.config or {}).get("model", {}).get("kind")
            if kind in FEATURE_KINDS and mode == "moe":
                model: Any = load_model_from_checkpoint(_checkpoint_of(rec.run_dir), split.num_items)
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
        item_counts=counts,
    )


# ------------------------------------------------------------------------------------------ main job


def run_all(workdir: Path, *, preset: str = "small", data: Path | None = None, epochs: int | None = None,
            variants: Sequence[str] | None = None, seed: int = 42, stop_after: str | None = None,
            extraction: Any = None, backbone: Any = None) -> Path:
    """The main job on the embedded default; returns the report's path (or the last stage's output).

    ``extraction`` / ``backbone``: an ``ExtractionConfig`` / ``BackboneConfig`` (default: the
    paper's layers, prompts, 8 frames at 224 px, K = 64, float16, on the tiny seeded backbone).
    """
    from linkedout.data.microlens import load_microlens, validate_microlens
    from linkedout.data.stats import dataset_stats, format_stats
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.features import FeatureReader
    from linkedout.features.info import format_info, info_from_store

    t_start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    variant_names = tuple(variants) if variants else DEFAULT_VARIANTS
    chosen = [(name, parse_variant(name)) for name in variant_names]  # fail on a bad name before any work

    # 1. dataset
    data_dir = Path(data) if data is not None else ensure_dataset(workdir / "data", preset)
    vreport = validate_microlens(data_dir, check_videos=True)
    if vreport.errors or vreport.warnings:
        print(vreport.format())
    # Tables must be sound; missing or unreadable videos are only reported here and recorded as
    # failed by the extraction (their interactions are then dropped).
    validate_microlens(data_dir, check_videos=False).raise_if_errors()
    dataset = load_microlens(data_dir, check_videos=False)
    print("== dataset\n" + format_stats(dataset_stats(dataset)), flush=True)
    if stop_after == "data":
        return data_dir

    # 2. features (resumable: finished shards are skipped)
    features = workdir / "features"
    summary = extract(data_dir, features, (extraction or ExtractionConfig(shard_size=64), backbone or BackboneConfig()))
    if summary.failed:
        print(f"== {len(summary.failed)} videos could not be decoded and have no features:")
        for vid, why in sorted(summary.failed.items())[:20]:
            print(f"   {vid}: {why}")
    print("== features\n" + format_info(info_from_store(FeatureReader(features))), flush=True)
    if stop_after == "extract":
        return features

    # 3. split, training, evaluation
    split = build_split(data_dir, str(features), cache_dir=workdir / "split")
    item_features = item_features_for(split, str(features), None)
    run_dirs = []
    for name, v in chosen:
        run_dir = workdir / "runs" / v.name
        run_dirs.append(run_dir)
        if (run_dir / "eval.json").is_file():
            log.info("%s already trained and evaluated; skipping", v.name)
            continue
        train_variant(data_dir, str(features), run_dir, name, seed=seed, epochs=epochs, split=split,
                      item_features=item_features)
        if stop_after == "train":
            continue
        evaluate_run(data_dir, str(features), run_dir, split=split, item_features=item_features)
    if stop_after == "train":
        return workdir / "runs"

    # 4. report
    table = summary_table(run_dirs)
    atomic_write_text(workdir / "summary.json", json.dumps(table, indent=2))
    print("== test metrics (full catalogue, history masked)\n" + format_table(table), flush=True)
    out = report(run_dirs, workdir / "report.html", data=data_dir, features=str(features))
    print(f"== report: {out}  ({time.perf_counter() - t_start:.0f} s in all)", flush=True)
    return out


def summary_table(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows ``{model, group, overall: {...}, warm: {...}, cold: {...}}`` from the runs' ``eval.json``."""
    rows = []
    for run_dir in run_dirs:
        ev = json.loads((Path(run_dir) / "eval.json").read_text())
        full = ev["full"]
        rows.append({"model": ev["model"], "group": ev.get("group"), "params": ev.get("params"),
                     "n_users": full.get("n_users"),
                     **{part: full[part] for part in ("overall", "warm", "cold")},
                     "sampled": (ev.get("sampled") or {}).get("overall")})
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = [("overall", "HR@10"), ("overall", "NDCG@10"), ("warm", "HR@10"), ("warm", "NDCG@10"),
            ("cold", "HR@10"), ("cold", "NDCG@10")]
    head = f"{'model':<24}" + "".join(f"{p + ' ' + m:>16}" for p, m in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for part, metric in cols:
            value = (r.get(part) or {}).get(metric)
            cells.append(f"{value:>16.4f}" if isinstance(value, (int, float)) else f"{'-':>16}")
        lines.append(f"{r['model']:<24}" + "".join(cells))
    return "\n".join(lines)

