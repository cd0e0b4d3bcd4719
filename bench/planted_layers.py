"""Does the layer gate find the right layers? A controlled experiment on planted features.

With the tiny random-weight backbone every kept layer carries the same content, so the MoE and the
uniform layer average tie (README). Here the layers are made to differ on purpose. Every video has
a topic (what users' tastes are about) and a *kind*; its kind decides which one of the ``L`` layers
carries its topic:

    x[v, l, k] = P[topic_v] + noise           if l == kind_v       (the informative layer)
               = P[decoy_vl] + noise          otherwise            (a random other topic per layer)
    x[v, 0, k] += M[kind_v]                                        (the kind is seen at L0)

``P`` are random topic prototypes, ``M`` random kind markers, ``decoy_vl`` a topic drawn at random
per video and layer (never the true one), ``noise`` per-token Gaussian noise. So a single layer
knows the topic of only the videos of its kind and tells a plausible lie about the others; the
uniform average of the layers holds one true topic among ``L - 1`` decoys; a per-video gate that
reads the kind at L0 and compares the layers can pick the right layer for every video. The kind is
shown at L0 only (``marker_layers="first"``, as low-level style is in early layers): shown in every
layer, each expert's residual MLP can learn to silence its own layer for the other kinds, and the
uniform average then gates itself (``marker_layers="all"``). Per-layer decoys
(``decoys="per_layer"``) keep the uniform average from cancelling one shared decoy with another
layer's copy of it (``decoys="shared"``). Users like one or two topics; each watches a sequence of
videos drawn uniformly from a liked topic (kept with probability ``stickiness`` from one video to
the next; no popularity), so content is all there is to learn. The interactions are split
leave-one-out like the real data.

Variants (the main job's expert design, ``model_config_for``): the MoE (``linkedout``), the
uniform average (``uniform``) and every single-layer ablation (``layer:N``), trained with the main
job's schedule and scored on the test split (full catalogue, history masked). For the MoE it also
reports the share of each video's gate mass on its informative layer (mean of ``pi[v, l*_v]``),
how often the gate's largest weight is that layer, and the same for the contribution shares
``pi_l ||h^(l)|| / sum_j pi_j ||h^(j)||`` (``linkedout.interpret.contributions``).

    python bench/planted_layers.py --seeds 42 43

Writes ``bench/results/planted_layers.json``. ``tests/test_planted_layers.py`` runs the same code at
tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from linkedout.data.split import SplitData, leave_one_out
from linkedout.job.variants import main_train_config, model_config_for, parse_variant
from linkedout.utils import configure_logging, set_seed

METRICS = ("HR@10", "NDCG@10")


@dataclass
class PlantedConfig:
    """Sizes and noise of the planted dataset."""

    videos: int = 480
    users: int = 2000
    topics: int = 40
    layers: int = 6  # L
    tokens: int = 16  # K
    hidden: int = 64  # D
    topics_per_user: int = 2
    stickiness: float = 0.8  # P(the next video keeps the previous video's topic)
    min_length: int = 6  # interactions per user: uniform in [min_length, max_length]
    max_length: int = 12
    # "per_layer": each non-informative layer carries its own random decoy topic; "shared": they
    # all carry one (then the wrong topic is the majority of the video's layers).
    decoys: str = "per_layer"
    token_noise: float = 1.0  # std of the per-token noise (prototype entries have std 1)
    marker_scale: float = 1.0  # std of the kind markers' entries
    # Where the kind marker is: the "first" layer only (the kind is low-level, seen at L0, the topic
    # deeper: only a comparison across layers can pick the informative one) or "all" layers (each
    # layer shows the kind, so a nonlinear expert can learn to silence its own layer by itself).
    marker_layers: str = "first"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.topics < 2 or self.layers < 2 or self.videos < self.topics:
            raise ValueError("PlantedConfig needs >= 2 topics, >= 2 layers and >= one video per topic")
        if self.decoys not in ("shared", "per_layer"):
            raise ValueError(f"PlantedConfig.decoys must be 'shared' or 'per_layer', got {self.decoys!r}")
        if self.marker_layers not in ("all", "first"):
            raise ValueError(f"PlantedConfig.marker_layers must be 'all' or 'first', got {self.marker_layers!r}")


@dataclass
class Planted:
    """The planted dataset: the split, the ground truth, and reads of the features.

    Every read of a video draws its decoy topics and token noise afresh (``draw``), so they carry no
    identity a model could memorise: the only stable content of a video is its topic in its
    informative layer and its kind at L0. Training reads fresh draws (``sampler``); evaluation
    reads one fixed draw (``features``, also what calling the object returns).
    """

    cfg: PlantedConfig
    split: SplitData
    topics: np.ndarray  # (N+1,) int64 topic of each item (-1 for padding)
    informative: np.ndarray  # (N+1,) int64 informative layer (= kind) of each item (-1 for padding)
    prototypes: torch.Tensor  # (T, D)
    markers: torch.Tensor  # (L, D)
    features: torch.Tensor  # (N+1, L, K, D) float32, the fixed evaluation read; row 0 = padding (zeros)

    def draw(self, item_idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One read (M, L, K, D) of items ``item_idx`` (M,) with fresh decoys and noise."""
        cfg = self.cfg
        idx = item_idx.detach().to("cpu", torch.long)
        m, L, T = idx.numel(), cfg.layers, cfg.topics
        topic = torch.from_numpy(self.topics)[idx].clamp_min(0)  # (M,)
        kind = torch.from_numpy(self.informative)[idx].clamp_min(0)  # (M,)
        shift = torch.randint(1, T, (m, 1 if cfg.decoys == "shared" else L), generator=generator)
        decoy = (topic[:, None] + shift) % T  # (M, 1 | L) never the true topic
        layer_topic = torch.where(torch.arange(L)[None, :] == kind[:, None], topic[:, None], decoy)  # (M, L)
        where = torch.ones(L) if cfg.marker_layers == "all" else torch.eye(L)[0]  # (L,) layers showing the kind
        x = self.prototypes[layer_topic] + where[None, :, None] * self.markers[kind][:, None, :]  # (M, L, D)
        noise = torch.randn((m, L, cfg.tokens, cfg.hidden), generator=generator) * cfg.token_noise
        out = x[:, :, None, :] + noise  # (M, L, K, D)
        return out * (idx > 0).to(out.dtype)[:, None, None, None]  # padding rows are zeros

    def sampler(self, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """A feature function for training: a fresh read at every call, seeded by ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        return lambda item_idx: self.draw(item_idx, gen)

    def __call__(self, item_idx: torch.Tensor) -> torch.Tensor:
        """The fixed evaluation read (M, L, K, D) of items ``item_idx`` (M,)."""
        return self.features[item_idx.detach().to("cpu", torch.long)]

    @property
    def spec(self) -> Any:
        """What ``model_config_for`` reads from a feature store's spec."""
        f = self.features
        return SimpleNamespace(layers=tuple(range(f.shape[1])), tokens=int(f.shape[2]), hidden=int(f.shape[3]))


def make_planted(cfg: PlantedConfig) -> Planted:
    """Generate the planted dataset (deterministic in ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    n, L, T = cfg.videos, cfg.layers, cfg.topics
    topic = rng.permutation(np.arange(n) % T)  # (N,) balanced topics
    kind = rng.permutation(np.arange(n) % L)  # (N,) the informative layer, balanced and independent
    by_topic = [np.flatnonzero(topic == t) for t in range(T)]
    rows = []
    for u in range(cfg.users):
        likes = rng.choice(T, size=min(cfg.topics_per_user, T), replace=False)
        length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
        seen: set[int] = set()
        current = int(rng.choice(likes))
        for step in range(length):
            if rng.random() >= cfg.stickiness:
                current = int(rng.choice(likes))
            for _ in range(20):  # a user never watches a video twice
                v = int(rng.choice(by_topic[current]))
                if v not in seen:
                    break
            seen.add(v)
            rows.append((f"u{u}", f"v{v}", step))
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"]).astype({"timestamp": "int64"})
    split = leave_one_out(inter, max_history=10, catalog=[f"v{v}" for v in range(n)])
    gen = torch.Generator().manual_seed(cfg.seed)
    planted = Planted(cfg=cfg, split=split, topics=np.concatenate([[-1], topic]).astype(np.int64),
                      informative=np.concatenate([[-1], kind]).astype(np.int64),
                      prototypes=torch.randn((T, cfg.hidden), generator=gen),
                      markers=torch.randn((L, cfg.hidden), generator=gen) * cfg.marker_scale,
                      features=torch.zeros(0))
    planted.features = planted.draw(torch.arange(n + 1), gen)  # (N+1, L, K, D)
    return planted


def run_variant(planted: Planted, variant: str, seed: int, run_dir: Path, *, epochs: int | None = None,
                d_model: int = 64, batch_size: int | None = None) -> dict[str, Any]:
    """Train ``variant`` on the planted data, evaluate on its test split; gate statistics for the MoE."""
    from linkedout.evaluation import evaluate
    from linkedout.interpret.contributions import layer_contributions
    from linkedout.model import build_model
    from linkedout.training import Trainer
    from linkedout.training.checkpoint import load_model_from_checkpoint

    split = planted.split
    t0 = time.perf_counter()
    mcfg = model_config_for(parse_variant(variant), planted.spec, d_model=d_model)
    tcfg = main_train_config(seed=seed, epochs=epochs, batch_size=batch_size)
    set_seed(seed)
    model = build_model(mcfg, split.num_items, split.item_counts)
    def validate(m: Any, eval_set: Any, _features: Any, cfg: Any, _split: Any) -> dict[str, float]:
        return evaluate(m, eval_set, planted, exclude=split.train_sequences, sampled_negatives=0).summary()

    fit = Trainer(model, split, planted.sampler(seed), tcfg, run_dir, evaluate_fn=validate).fit()
    best = load_model_from_checkpoint(run_dir / "checkpoints" / "best.pt", split.num_items)
    exclude = [np.append(s, t) for s, t in zip(split.train_sequences, split.valid.targets)]
    res = evaluate(best, split.test, planted, exclude=exclude, sampled_negatives=0, seed=0)
    out: dict[str, Any] = {"variant": variant, "seed": seed, "best_epoch": fit.best_epoch,
                           "seconds": time.perf_counter() - t0, **{m: res.full.overall[m] for m in METRICS}}
    if mcfg.fusion.mode == "moe":
        with torch.no_grad():
            c = layer_contributions(best, planted, layer_names=[f"L{i}" for i in range(mcfg.fusion.num_layers)])
        inf = planted.informative[c.item_idx]  # (N,)
        rows = np.arange(len(inf))
        out["gate_share_informative"] = float(c.gate[rows, inf].mean())
        out["gate_argmax_informative"] = float((c.gate.argmax(axis=1) == inf).mean())
        out["contrib_share_informative"] = float(c.contrib[rows, inf].mean())
        out["contrib_argmax_informative"] = float((c.contrib.argmax(axis=1) == inf).mean())
        out["gate_share_by_kind"] = [float(c.gate[inf == g, g].mean()) for g in range(c.num_layers)]
    return out


def variants_for(layers: int) -> list[str]:
    return ["linkedout", "uniform", *(f"layer:{i}" for i in range(layers))]


def run_experiment(cfg: PlantedConfig, seeds: list[int], workdir: Path, *, epochs: int | None = None,
                   d_model: int = 64, batch_size: int | None = None, variants: list[str] | None = None,
                   ) -> dict[str, Any]:
    """Every variant on the planted data for each seed: ``{"runs": {variant: [row per seed]}, "summary"}``."""
    planted = make_planted(cfg)
    variants = variants or variants_for(cfg.layers)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for seed in seeds:
        for v in variants:
            row = run_variant(planted, v, seed, workdir / f"seed{seed}" / v.replace(":", ""), epochs=epochs,
                              d_model=d_model, batch_size=batch_size)
            runs[v].append(row)
            extra = (f"  gate on informative layer {row['gate_share_informative']:.3f} "
                     f"(argmax {row['gate_argmax_informative']:.3f})" if "gate_share_informative" in row else "")
            print(f"seed {seed} {v:<10} HR@10 {row['HR@10']:.4f}  NDCG@10 {row['NDCG@10']:.4f}"
                  f"  ({row['seconds']:.0f} s){extra}", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for v, rows in runs.items():
        summary[v] = {}
        for key in rows[0]:
            vals = [r[key] for r in rows]
            if all(isinstance(x, float) for x in vals):  # metrics None over 0 users are left out
                summary[v][key] = {"mean": statistics.fmean(vals),
                                   "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return {"config": asdict(cfg), "seeds": seeds, "num_items": planted.split.num_items,
            "users": len(planted.split.test.targets), "runs": runs, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    for f, default in asdict(PlantedConfig()).items():
        parser.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--epochs", type=int, default=None, help="cap on epochs (default: the main job's)")
    parser.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/planted_layers.json"))
    args = parser.parse_args()
    configure_logging("WARNING")
    cfg = PlantedConfig(**{f: getattr(args, f) for f in asdict(PlantedConfig())})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_experiment(cfg, args.seeds, args.workdir or Path(tmp), epochs=args.epochs)
    result["seconds"] = time.perf_counter() - t0
    print(f"\nplanted layers: {result['num_items']} videos, {result['users']} users, {cfg.layers} layers, "
          f"mean over seeds {args.seeds} (test, full catalogue, history masked)")
    cols = [("HR@10", "HR@10"), ("NDCG@10", "NDCG@10"), ("gate_share_informative", "gate on inf. layer"),
            ("gate_argmax_informative", "gate argmax = inf."), ("contrib_share_informative", "contrib. on inf.")]
    print(f"{'variant':<12}" + "".join(f"{title:>24}" for _, title in cols))
    for v, s in result["summary"].items():
        print(f"{v:<12}" + "".join((f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" if k in s else "-").rjust(24)
                                   for k, _ in cols))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
