"""One model for warm and cold videos: choosing its ID part on validation, and the larger-scale comparison.

``select``: the alternatives of the ``warmcold`` item tower (ID dropout shares, a frequency gate on
the ID part, a learned content -> ID mapping, a minimum count) and the references (ID-free
LinkedOut, SASRec on IDs, the hybrid) trained on a *pseudo-cold* split of a main-job work directory
and scored on its validation set. The leave-one-out validation set of the synthetic data holds no
cold targets (cold videos only occur as a user's last interaction), so the split holds out a
random share of the warm videos from training (their rows leave the training sequences, their
counts become 0): validation targets among them are cold, exactly as test targets of never-seen
videos are. The test set is never looked at.

    python bench/warm_cold.py select --workdir runs/demo --seeds 42 43

``calibrate``: the post-hoc factor ``IDConfig.cold_scale`` on the embedding of videos without an
ID row, swept on ``select``'s checkpoints of one alternative (the split of ``--holdout``, the
dataset's never-trained videos masked), with the rule that sets the default:

    python bench/warm_cold.py select --workdir runs/demo --holdout 0.05 --alternatives map10_dropout50,linkedout
    python bench/warm_cold.py calibrate --workdir runs/demo --holdout 0.05

``scale``: the same comparison as ``bench/compare.py`` (test, full catalogue, history masked, warm
and cold targets) on a larger synthetic dataset, the ``microlens-100k`` preset restricted to
``--videos`` videos and ``--users`` users: generates it, extracts its features with the tiny
backbone, trains and evaluates each variant once, and times every stage.

    python bench/warm_cold.py scale --workdir runs/scale --videos 3000 --users 15000 --epochs 20

Figures go to ``bench/results/warm_cold_{select,calibrate,scale}.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.data.split import EvalSet, SplitData
from linkedout.job.dataset import has_dataset
from linkedout.job.evaluation import evaluate_run
from linkedout.job.extraction import extract
from linkedout.job.split import build_split
from linkedout.job.training import item_features_for, train_variant
from linkedout.job.variants import main_train_config, model_config_for, parse_variant
from linkedout.utils import configure_logging, set_seed

METRICS = ("HR@10", "NDCG@10")
PARTS = ("overall", "warm", "cold")

#: name -> (variant, IDConfig fields). ``warmcold:*`` are the alternatives of the ID part.
ALTERNATIVES: dict[str, tuple[str, dict[str, Any]]] = {
    "linkedout": ("linkedout", {}),
    "sasrec_id": ("sasrec_id", {}),
    "hybrid": ("hybrid", {}),
    "mask_only": ("warmcold", {"dropout": 0.0}),
    "dropout25": ("warmcold", {"dropout": 0.25}),
    "dropout50": ("warmcold", {"dropout": 0.5}),
    "dropout75": ("warmcold", {"dropout": 0.75}),
    "freq_gate": ("warmcold", {"dropout": 0.0, "gate": "frequency"}),
    "freq_gate_dropout50": ("warmcold", {"dropout": 0.5, "gate": "frequency"}),
    "map": ("warmcold", {"dropout": 0.0, "map_weight": 1.0}),
    "map_dropout25": ("warmcold", {"dropout": 0.25, "map_weight": 1.0}),
    "map_dropout50": ("warmcold", {"dropout": 0.5, "map_weight": 1.0}),
    "map_dropout75": ("warmcold", {"dropout": 0.75, "map_weight": 1.0}),
    "maprank_dropout50": ("warmcold", {"dropout": 0.5, "map_weight": 1e-6}),  # the mapping learns from ranking alone
    "map10_dropout50": ("warmcold", {"dropout": 0.5, "map_weight": 10.0}),
    "map10": ("warmcold", {"dropout": 0.0, "map_weight": 10.0}),
    "map10_dropout25": ("warmcold", {"dropout": 0.25, "map_weight": 10.0}),
    "map30_dropout50": ("warmcold", {"dropout": 0.5, "map_weight": 30.0}),
    "map100_dropout50": ("warmcold", {"dropout": 0.5, "map_weight": 100.0}),
    "dropout50_min3": ("warmcold", {"dropout": 0.5, "min_count": 3}),
    "freq_map_dropout50": ("warmcold", {"dropout": 0.5, "gate": "frequency", "map_weight": 1.0}),
    "batch30_dropout50": ("warmcold", {"dropout": 0.5, "batch_dropout": 0.3}),
    "batch50_dropout25": ("warmcold", {"dropout": 0.25, "batch_dropout": 0.5}),
    "batch30_map_dropout50": ("warmcold", {"dropout": 0.5, "batch_dropout": 0.3, "map_weight": 1.0}),
    "kp_dropout50": ("warmcold", {"dropout": 0.5, "fusion": {"kp_weight": 1.0}}),
    "map_kp_dropout50": ("warmcold", {"dropout": 0.5, "map_weight": 1.0, "fusion": {"kp_weight": 1.0}}),
    "unk_map_dropout50": ("warmcold", {"dropout": 0.5, "map_weight": 1.0, "unknown_row": True}),
    "unk_dropout25": ("warmcold", {"dropout": 0.25, "unknown_row": True}),
    "unk_dropout50": ("warmcold", {"dropout": 0.5, "unknown_row": True}),
    "unk_dropout75": ("warmcold", {"dropout": 0.75, "unknown_row": True}),
}


def holdout_split(split: SplitData, share: float, seed: int) -> tuple[SplitData, np.ndarray]:
    """``split`` with a random ``share`` of its warm videos removed from training (pseudo-cold).

    Returns the new split (training sequences without the held-out videos, recounted
    ``item_counts``, ``cold`` flags of validation and test recomputed) and the held-out indices.
    """
    warm = np.flatnonzero(split.item_counts > 0)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(warm, size=max(1, round(share * len(warm))), replace=False))
    out = np.zeros(split.num_items + 1, dtype=bool)
    out[held] = True
    train = [s[~out[s]] for s in split.train_sequences]
    flat = np.concatenate(train) if train else np.zeros(0, np.int64)
    counts = np.bincount(flat, minlength=split.num_items + 1).astype(np.int64)
    counts[0] = 0

    def recold(es: EvalSet) -> EvalSet:
        return EvalSet(list(es.user_ids), es.histories, es.targets, counts[es.targets] == 0)

    return SplitData(item_ids=list(split.item_ids), train_sequences=train, valid=recold(split.valid),
                     test=recold(split.test), item_counts=counts,
                     user_full_history=dict(split.user_full_history)), held


def model_config(variant: str, spec: Any, ids: dict[str, Any]) -> Any:
    """The main job's ``ModelConfig`` of ``variant`` with ``IDConfig`` fields ``ids`` replaced.

    The key ``"fusion"`` of ``ids``, when there, replaces ``FusionConfig`` fields instead.
    """
    cfg = model_config_for(parse_variant(variant), spec)
    ids = dict(ids)
    fusion = ids.pop("fusion", {})
    return dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, **ids),
                               fusion=dataclasses.replace(cfg.fusion, **fusion))


def train_and_validate(split: SplitData, item_features: Any, variant: str, ids: dict[str, Any], seed: int,
                       run_dir: Path, exclude: list[np.ndarray], epochs: int | None = None) -> dict[str, Any]:
    """Train ``variant`` (with ``ids``) on ``split`` with the main job's schedule; validation figures.

    ``exclude``: each user's items before the validation window (the *original* training sequences,
    so that a held-out video a user watched early is masked as in the standard protocol).
    """
    from linkedout.evaluation import evaluate
    from linkedout.model import build_model
    from linkedout.training import Trainer
    from linkedout.training.checkpoint import load_model_from_checkpoint

    result_file = run_dir / "valid.json"
    if result_file.is_file():
        return dict(json.loads(result_file.read_text()))
    spec = item_features.reader.spec
    mcfg = model_config(variant, spec, ids)
    tcfg = main_train_config(seed=seed, epochs=epochs)

    def validate(model: Any, eval_set: Any, feats: Any, cfg: Any, _split: Any) -> dict[str, float]:
        res = evaluate(model, eval_set, feats if model.needs_features else None, exclude=exclude,
                       sampled_negatives=0, seed=cfg.seed)
        return res.summary()

    t0 = time.perf_counter()
    set_seed(seed)
    model = build_model(mcfg, split.num_items, split.item_counts)
    fit = Trainer(model, split, item_features if model.needs_features else None, tcfg, run_dir,
                  evaluate_fn=validate).fit()
    best = load_model_from_checkpoint(run_dir / "checkpoints" / "best.pt", split.num_items)
    res = evaluate(best, split.valid, item_features if best.needs_features else None, exclude=exclude,
                   sampled_negatives=0, seed=0)
    full = res.full.to_dict()
    out = {"variant": variant, "ids": ids, "seed": seed, "best_epoch": fit.best_epoch,
           "seconds": time.perf_counter() - t0, "n_users": full["n_users"],
           **{p: {m: full[p][m] for m in METRICS} for p in PARTS}}
    result_file.write_text(json.dumps(out, indent=2))
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else float("nan"),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def select(args: argparse.Namespace) -> None:
    data, features = args.workdir / "data", str(args.workdir / "features")
    base = build_split(data, features, cache_dir=args.workdir / "split")
    item_features = item_features_for(base, features)
    split, held = holdout_split(base, args.holdout, args.holdout_seed)
    exclude = list(base.train_sequences)
    print(f"pseudo-cold split: {len(held)} of {int((base.item_counts > 0).sum())} warm videos held out; "
          f"validation: {int(split.valid.cold.sum())} cold of {len(split.valid.targets)} targets", flush=True)
    names = [n.strip() for n in args.alternatives.split(",")]
    unknown = [n for n in names if n not in ALTERNATIVES]
    if unknown:
        raise SystemExit(f"unknown alternative(s) {unknown}; known: {sorted(ALTERNATIVES)}")
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for name in names:
            variant, ids = ALTERNATIVES[name]
            run_dir = (args.workdir / "warm_cold_select" / f"holdout{args.holdout:g}_seed{args.holdout_seed}"
                       / f"seed{seed}" / name)
            r = train_and_validate(split, item_features, variant, ids, seed, run_dir, exclude, args.epochs)
            rows[name].append(r)
            print(f"seed {seed} {name:<22} " + "  ".join(f"{p} {m} {r[p][m]:.4f}" for p in PARTS for m in METRICS)
                  + f"  ({r['seconds']:.0f} s, best epoch {r['best_epoch']})", flush=True)
    summary = {n: {f"{p}/{m}": mean_std([r[p][m] for r in rs]) for p in PARTS for m in METRICS}
               for n, rs in rows.items()}
    print(f"\nvalidation (pseudo-cold split), mean ± std over seeds {args.seeds}")
    print(f"{'alternative':<22}" + "".join(f"{p + ' ' + m:>20}" for p in PARTS for m in METRICS))
    for n, s in summary.items():
        print(f"{n:<22}" + "".join(f"{s[f'{p}/{m}']['mean']:>12.4f} ± {s[f'{p}/{m}']['std']:.3f}"
                                   for p in PARTS for m in METRICS))
    out = {"workdir": str(args.workdir), "seeds": args.seeds, "holdout": args.holdout,
           "holdout_seed": args.holdout_seed, "held_out_videos": len(held),
           "valid_cold_targets": int(split.valid.cold.sum()), "valid_targets": len(split.valid.targets),
           "alternatives": {n: {"variant": ALTERNATIVES[n][0], "ids": ALTERNATIVES[n][1]} for n in names},
           "seconds": time.perf_counter() - t0, "summary": summary, "runs": rows}
    write(args.out or Path("bench/results/warm_cold_select.json"), out)


def calibrate(args: argparse.Namespace) -> None:
    """Sweep ``IDConfig.cold_scale`` on the pseudo-cold validation split of ``select``'s trained runs.

    Post hoc (the factor is not used in training): each seed's best checkpoint of ``--alternative``
    is evaluated on validation with every factor of ``--scales``. The dataset's own never-trained
    videos are masked for every validation user: in this split the held-out videos are the cold
    ones, and the never-trained videos can be no validation target (they only ever occur as a
    user's last interaction), so leaving them in would rank decoys a test catalogue does not have.
    The factor chosen is the largest whose mean overall HR@10 and NDCG@10 stay within one standard
    deviation (over seeds) of those of the factor with the best overall NDCG@10.
    """
    from linkedout.evaluation import evaluate
    from linkedout.evaluation.encode import item_table
    from linkedout.training.checkpoint import load_model_from_checkpoint

    data, features = args.workdir / "data", str(args.workdir / "features")
    base = build_split(data, features, cache_dir=args.workdir / "split")
    item_features = item_features_for(base, features)
    split, held = holdout_split(base, args.holdout, args.holdout_seed)
    never = np.flatnonzero(base.item_counts == 0)
    never = never[never > 0]
    exclude = [np.concatenate([s, never]) for s in base.train_sequences]
    keep = ~np.isin(split.valid.targets, never)  # (none on synthetic data: never-trained videos are last only)
    valid = EvalSet([u for u, k in zip(split.valid.user_ids, keep, strict=True) if k], split.valid.histories[keep],
                    split.valid.targets[keep], split.valid.cold[keep])
    exclude = [e for e, k in zip(exclude, keep, strict=True) if k]
    print(f"pseudo-cold split: {len(held)} held-out videos, {len(never)} never-trained videos masked; validation: "
          f"{int(valid.cold.sum())} cold of {len(valid.targets)} targets", flush=True)
    root = args.workdir / "warm_cold_select" / f"holdout{args.holdout:g}_seed{args.holdout_seed}"
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        for name in [args.alternative, *args.references]:
            ckpt = root / f"seed{seed}" / name / "checkpoints" / "best.pt"
            if not ckpt.is_file():
                raise SystemExit(f"{ckpt} is missing: run `select --holdout {args.holdout:g} --seeds {seed} "
                                 f"--alternatives {name}` first")
            model = load_model_from_checkpoint(ckpt, split.num_items)
            feats = item_features if model.needs_features else None
            scales = args.scales if name == args.alternative else [1.0]
            for a in scales:
                if name == args.alternative:
                    model.config.ids.cold_scale = a
                table = item_table(model, feats)
                full = evaluate(model, valid, feats, exclude=exclude, sampled_negatives=0, table=table).full.to_dict()
                key = f"{name} x{a:g}" if name == args.alternative else name
                rows.setdefault(key, []).append({p: {m: full[p][m] for m in METRICS} for p in PARTS})
                print(f"seed {seed} {key:<24} " + "  ".join(f"{p} {m} {full[p][m]:.4f}" for p in PARTS for m in METRICS),
                      flush=True)
    summary = {n: {f"{p}/{m}": mean_std([r[p][m] for r in rs]) for p in PARTS for m in METRICS}
               for n, rs in rows.items()}
    cands = [f"{args.alternative} x{a:g}" for a in args.scales]
    best = max(cands, key=lambda n: summary[n]["overall/NDCG@10"]["mean"])
    # the rule that sets IDConfig.cold_scale: the largest factor whose overall HR@10 and NDCG@10 stay
    # within one standard deviation (over seeds) of the best factor's (the targets' own tolerance)
    floor = {m: summary[best][f"overall/{m}"]["mean"] - summary[best][f"overall/{m}"]["std"] for m in METRICS}
    ok = [n for n in cands if all(summary[n][f"overall/{m}"]["mean"] >= floor[m] for m in METRICS)]
    chosen = max(ok, key=lambda n: args.scales[cands.index(n)])
    print(f"\nvalidation (pseudo-cold split, never-trained videos masked), mean ± std over seeds {args.seeds}")
    print(f"{'model':<24}" + "".join(f"{p + ' ' + m:>20}" for p in PARTS for m in METRICS))
    for n, s in summary.items():
        print(f"{n:<24}" + "".join(f"{s[f'{p}/{m}']['mean']:>12.4f} ± {s[f'{p}/{m}']['std']:.3f}"
                                   for p in PARTS for m in METRICS)
              + ("   <- best overall NDCG@10" if n == best else "") + ("   <- chosen" if n == chosen else ""))
    out = {"workdir": str(args.workdir), "seeds": args.seeds, "holdout": args.holdout,
           "holdout_seed": args.holdout_seed, "held_out_videos": len(held), "masked_never_trained": len(never),
           "valid_cold_targets": int(valid.cold.sum()), "valid_targets": len(valid.targets),
           "alternative": args.alternative, "scales": args.scales, "best": best, "chosen": chosen,
           "rule": "largest factor with overall HR@10 and NDCG@10 within one std of the best factor's", "summary": summary, "runs": rows}
    write(args.out or Path("bench/results/warm_cold_calibrate.json"), out)


def scale(args: argparse.Namespace) -> None:
    from linkedout.data import synth
    from linkedout.data.stats import dataset_stats
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig

    times: dict[str, float] = {}
    work = args.workdir
    data, features = work / "data", work / "features"
    t = time.perf_counter()
    if not has_dataset(data):
        cfg = synth.SynthConfig.preset("microlens-100k", num_videos=args.videos, num_users=args.users)
        synth.generate(data, cfg)
    times["dataset_s"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = extract(data, features, (ExtractionConfig(shard_size=256), BackboneConfig()))
    times["extract_s"] = time.perf_counter() - t
    t = time.perf_counter()
    split = build_split(data, str(features), cache_dir=work / "split")
    item_features = item_features_for(split, str(features))
    times["split_s"] = time.perf_counter() - t
    from linkedout.data.microlens import load_microlens

    prep_file = work / "prepare_times.json"
    if not prep_file.is_file():  # the first, real generation and extraction
        prep_file.write_text(json.dumps(times, indent=2))
    times = {**json.loads(prep_file.read_text()), "split_s": times["split_s"]}
    if args.prepare_only:
        print(f"prepared {work}: " + json.dumps(times), flush=True)
        return
    stats = dataset_stats(load_microlens(data, check_videos=False))
    size = {"videos": split.num_items, "users": len(split.test.targets),
            "train_interactions": int(split.item_counts.sum()),
            "interactions": int(stats.get("interactions", 0)) if isinstance(stats, dict) else None,
            "cold_test_targets": int(split.test.cold.sum()),
            "cold_videos": int(((split.item_counts == 0)[1:]).sum()), "failed_videos": len(summary.failed)}
    print("size: " + json.dumps(size), flush=True)
    variants = [v.strip() for v in args.variants.split(",")]
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        run_dir = work / "runs" / parse_variant(v).name
        t = time.perf_counter()
        timing = run_dir / "bench_seconds.json"  # the first (real) run's time, kept for a re-run
        if not (run_dir / "eval.json").is_file():
            train_variant(data, str(features), run_dir, v, seed=args.seed, epochs=args.epochs, split=split,
                                   item_features=item_features)
            evaluate_run(data, str(features), run_dir, split=split, item_features=item_features)
            timing.write_text(json.dumps({"seconds": time.perf_counter() - t}))
        ev = json.loads((run_dir / "eval.json").read_text())
        res = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
        rows[v] = {**{p: {m: ev["full"][p][m] for m in METRICS} for p in PARTS},
                   "n_users": ev["full"]["n_users"], "epochs": res.get("epochs_completed"),
                   "best_epoch": res.get("best_epoch"),
                   "seconds": json.loads(timing.read_text())["seconds"] if timing.is_file() else None}
        times[f"{v}_s"] = rows[v]["seconds"]
        print(f"{v:<12} " + "  ".join(f"{p} {m} {ev['full'][p][m] or 0:.4f}" for p in PARTS for m in METRICS)
              + f"  ({rows[v]['seconds'] or 0:.0f} s)", flush=True)
    out = {"workdir": str(work), "preset": "microlens-100k", "size": size, "seed": args.seed, "times": times,
           "rows": rows}
    write(args.out or Path("bench/results/warm_cold_scale.json"), out)


def write(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("select", help="alternatives of the ID part on a pseudo-cold validation split")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    p.add_argument("--alternatives", default=",".join(ALTERNATIVES))
    p.add_argument("--holdout", type=float, default=0.1, help="share of warm videos held out (pseudo-cold)")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="cap on epochs (default: the main job's)")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(fn=select)
    p = sub.add_parser("calibrate", help="sweep IDConfig.cold_scale on select's pseudo-cold runs")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    p.add_argument("--alternative", default="map10_dropout50")
    p.add_argument("--references", nargs="*", default=["linkedout"])
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0])
    p.add_argument("--holdout", type=float, default=0.05, help="the share select held out")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(fn=calibrate)
    p = sub.add_parser("scale", help="the comparison on a larger microlens-100k-preset dataset")
    p.add_argument("--workdir", type=Path, default=Path("runs/scale"))
    p.add_argument("--videos", type=int, default=3000)
    p.add_argument("--users", type=int, default=15000)
    p.add_argument("--variants", default="warmcold,linkedout,sasrec_id,hybrid")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--prepare-only", action="store_true", help="generate and extract, train nothing")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(fn=scale)
    args = parser.parse_args()
    configure_logging("WARNING")
    args.fn(args)


if __name__ == "__main__":
    main()
