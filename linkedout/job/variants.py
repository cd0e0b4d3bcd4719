"""The models the main job trains: named variants (the model, the baselines, the ablations), their configs
and the training schedule of the embedded default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from linkedout.model import ModelConfig
from linkedout.model.config import FEATURE_KINDS, FusionConfig, ImageConfig, SequenceConfig, TextConfig
from linkedout.shards import FeatureSpec
from linkedout.training import TrainConfig

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


def main_train_config(**overrides: Any) -> TrainConfig:
    """The training schedule of the embedded default (a few thousand users, a few hundred videos).

    The paper's rates (1e-4 video encoder, 1e-5 ranking head) are set for 100 epochs of
    MicroLens-100K at batch 256, about 39 k steps (one training window per user, ~390 a epoch). The
    ``small`` preset's 1,500 users give 6 steps an epoch, ~600 in 100 epochs, in which a freshly
    initialised head barely moves at 1e-5; so the default job uses 1e-3 for every group, for up to
    the paper's 100 epochs, early-stopped on validation NDCG@10 (patience 10). Every other setting
    is the paper's: AdamW, weight decay 0.1, clip 5.0, batch 256, step schedule without warm-up,
    in-batch softmax with logQ correction, seed 42.
    """
    base: dict[str, Any] = dict(epochs=100, batch_size=256, lr_video=1e-3, lr_text=1e-3, lr_image=1e-3,
                                lr_id=1e-3, lr_head=1e-3, early_stopping_patience=10, log_every=10)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def model_config_for(variant: Variant, spec: FeatureSpec | None, d_model: int = 64) -> ModelConfig:
    """The ``ModelConfig`` of a variant, sized from the feature store's spec (L, K, D).

    The embedded default's experts compress each layer's K tokens with 4 learned queries and a
    residual MLP (``expert_queries=4, expert_hidden=128``): picked on validation NDCG@10 of the
    ``small`` synthetic preset (0.259, against 0.214 for one query and no MLP, 0.257 for 8 queries
    and a 256-wide MLP, 0.218 for d = 128). The paper-sized config is ``ModelConfig.paper()``.
    Ablations share the expert design, so they differ from the model only in how layers are fused.
    """
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
