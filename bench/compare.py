"""Model comparison over several seeds: LinkedOut vs. baselines vs. ablations on one dataset.

Trains every variant for each seed on the same dataset, feature store and split (the main job's
stages), evaluates on the test split (full catalogue, history masked; warm and cold targets) and
prints mean ± std over seeds, and the same as rows of the README's Markdown table; writes
``bench/results/compare.json``.

    python bench/compare.py --workdir runs/demo --seeds 42 43 44

``--workdir`` is a main-job work directory (``linkedout run --workdir W --stop-after extract``
prepares one); runs go to ``W/compare/seed<S>/<variant>`` and finished ones are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from linkedout.job.evaluation import evaluate_run
from linkedout.job.split import build_split
from linkedout.job.training import item_features_for, train_variant
from linkedout.job.variants import parse_variant
from linkedout.utils import configure_logging

METRICS = ("HR@10", "NDCG@10")
PARTS = ("overall", "warm", "cold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--variants", default="warmcold,linkedout,sasrec_id,popularity,last_layer,uniform,hybrid")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/compare.json"))
    args = parser.parse_args()
    configure_logging("WARNING")

    data, features = args.workdir / "data", str(args.workdir / "features")
    split = build_split(data, features, cache_dir=args.workdir / "split")
    item_features = item_features_for(split, features)
    variants = [v.strip() for v in args.variants.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for v in variants:
            run_dir = args.workdir / "compare" / f"seed{seed}" / parse_variant(v).name
            if not (run_dir / "eval.json").is_file():
                train_variant(data, features, run_dir, v, seed=seed, epochs=args.epochs, split=split,
                                       item_features=item_features)
                evaluate_run(data, features, run_dir, split=split, item_features=item_features)
            ev = json.loads((run_dir / "eval.json").read_text())
            runs[v].append({"seed": seed, **{p: {m: ev["full"][p][m] for m in METRICS} for p in PARTS},
                            "n_users": ev["full"]["n_users"]})
            print(f"seed {seed} {v:<12} " + "  ".join(
                f"{p} {m} {ev['full'][p][m]:.4f}" for p in PARTS for m in METRICS), flush=True)

    summary: dict[str, Any] = {}
    header = f"{'variant':<12}" + "".join(f"{p + ' ' + m:>22}" for p in PARTS for m in METRICS)
    print(f"\nmean ± std over seeds {args.seeds} (test, full catalogue)\n{header}")
    for v, rows in runs.items():
        cells, summary[v] = [], {}
        for p in PARTS:
            for m in METRICS:
                vals = [r[p][m] for r in rows if r[p][m] is not None]
                mean = statistics.fmean(vals) if vals else float("nan")
                std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                summary[v][f"{p}/{m}"] = {"mean": mean, "std": std}
                cells.append(f"{mean:>14.4f} ± {std:.4f}")
        print(f"{v:<12}" + "".join(cells))
    print("\nMarkdown rows (README table: HR@10, NDCG@10 overall, warm, cold):")
    for v, cells_by_key in summary.items():
        cells = []
        for p in PARTS:
            for m in METRICS:
                ms = cells_by_key[f"{p}/{m}"]
                cells.append(f"{ms['mean']:.3f}" if ms["std"] == 0 else f"{ms['mean']:.3f} ± {ms['std']:.3f}")
        print(f"| {parse_variant(v).display} | " + " | ".join(cells) + " |")
    out = {"workdir": str(args.workdir), "seeds": args.seeds, "num_items": split.num_items,
           "users": len(split.test.targets), "cold_test_users": int(split.test.cold.sum()),
           "seconds": time.perf_counter() - t0, "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
