"""Typed, validated configuration of the learning model (fusion MoE, sequence model, baselines).

Every part has one dataclass, validated in ``__post_init__``: a bad value raises ``ValueError`` naming
the field (``"FusionConfig.num_layers must be >= 1, got 0"``). Defaults are a small sane model that
trains on a CPU; ``ModelConfig.paper()`` is the paper's setting (arXiv 2512.16891, DESIGN.md §1).
Configs are plain data: ``to_dict`` / ``from_dict`` round-trip through JSON, and the trainer saves
``ModelConfig.to_dict()`` beside every ``state_dict`` so that a checkpoint alone rebuilds its model
(``build_model(ModelConfig.from_dict(d), num_items, state_dict=sd)``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

FusionMode = Literal["moe", "uniform", "single"]
GateInput = Literal["expert", "backbone"]
ModelKind = Literal["linkedout", "sasrec_id", "popularity", "hybrid", "warmcold"]
IdGate = Literal["none", "frequency"]

FUSION_MODES: tuple[str, ...] = get_args(FusionMode)
GATE_INPUTS: tuple[str, ...] = get_args(GateInput)
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
ID_GATES: tuple[str, ...] = get_args(IdGate)
#: Kinds whose item tower reads backbone features (``Recommender.needs_features``).
FEATURE_KINDS: tuple[str, ...] = ("linkedout", "hybrid", "warmcold")
#: Kinds that need the training counts per item (``build_model(..., item_counts=...)``).
COUNT_KINDS: tuple[str, ...] = ("popularity", "warmcold")

#: Qwen2-7B hidden size (the LLM of LLaVA-OneVision-7B); the paper's table says 4096.
PAPER_HIDDEN = 3584

C = TypeVar("C")


def _check_int(cls: str, name: str, value: object, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{cls}.{name} must be an int, got {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"{cls}.{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{cls}.{name} must be <= {hi}, got {value}")


def _check_float(cls: str, name: str, value: object, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{cls}.{name} must be a number, got {value!r}")
    v = float(value)
    if v != v:  # NaN
        raise ValueError(f"{cls}.{name} must not be NaN")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{cls}.{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{cls}.{name} must be {'<' if hi_open else '<='} {hi}, got {value}")


def _check_choice(cls: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{cls}.{name} must be one of {list(choices)}, got {value!r}")


def _check_bool(cls: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{cls}.{name} must be a bool, got {value!r}")


def _from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build dataclass ``cls`` from a plain dict (nested dataclasses and tuples restored).

    Unknown keys raise ``ValueError`` naming them, so that a typo in a saved config is not dropped.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[key] = _from_dict(hint, value)
        elif get_origin(hint) is tuple and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


@dataclass
class FusionConfig:
    """Cross-layer Knowledge-Fusion MoE: one token-compressing expert per kept backbone layer + a soft gate.

    Input features are ``(M, L, K, D)`` per batch of ``M`` videos; output item embeddings ``(M, d)``.
    """

    # L: number of kept backbone layers in the features (paper: 6, L0..L20 step 4); >= 1.
    num_layers: int = 6
    # K: tokens per layer in the features (paper: 64); >= 1. Checked against the input.
    tokens: int = 64
    # D: backbone hidden size (Qwen2-7B: 3584; the tiny test backbone is smaller); >= 1.
    in_dim: int = 64
    # d: width of the expert outputs and of the item embedding; >= 1 (paper preset: 256).
    d_model: int = 64
    # Q: learned query tokens per expert for attention pooling over the K tokens; 1..K. Q > 1 adds a
    # per-expert Linear(Q*d, d) mixing the Q compressed tokens.
    expert_queries: int = 1
    # Hidden width of an optional per-expert residual MLP after pooling; 0 = none; >= 0.
    expert_hidden: int = 0
    # Gate: per-layer summary width (a shared Linear(summary, gate_hidden) per layer, then
    # Linear(L*gate_hidden, L) over all layers); >= 1.
    gate_hidden: int = 64
    # Gate softmax temperature tau (pi = softmax(logits / tau)); > 0. Lower = sharper gates.
    gate_temperature: float = 1.0
    # What the gate reads: "expert" = the experts' pooled outputs h^(l) (d each, cheap);
    # "backbone" = the layer-normalised token mean of each layer's raw features (D each).
    gate_input: GateInput = "expert"
    # Weight of the load-balance regulariser KL(mean_batch(pi) || uniform) (keeps the gate from
    # collapsing onto one layer for every video); >= 0. Used in mode "moe" only.
    balance_weight: float = 0.01
    # Weight of the mean per-video gate entropy (> 0 makes each video's gate decisive); >= 0.
    # Used in mode "moe" only.
    entropy_weight: float = 0.0
    # Weight of the knowledge-preservation regulariser: a linear decoder Linear(d, D) reconstructs
    # each used layer's (stop-grad, layer-normalised) token-mean backbone feature from h^(l), MSE.
    # 0 = off (no decoder is built); >= 0.
    kp_weight: float = 0.0
    # Ablations: "moe" (learned soft gate), "uniform" (pi = 1/L, fixed), "single" (one layer only).
    mode: FusionMode = "moe"
    # Layer used in mode "single": 0..L-1, or -1 = the last kept layer ("last layer only" ablation).
    single_layer: int = -1

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_int(n, "num_layers", self.num_layers, lo=1)
        _check_int(n, "tokens", self.tokens, lo=1)
        _check_int(n, "in_dim", self.in_dim, lo=1)
        _check_int(n, "d_model", self.d_model, lo=1)
        _check_int(n, "expert_queries", self.expert_queries, lo=1, hi=self.tokens)
        _check_int(n, "expert_hidden", self.expert_hidden, lo=0)
        _check_int(n, "gate_hidden", self.gate_hidden, lo=1)
        _check_float(n, "gate_temperature", self.gate_temperature, lo=0.0, lo_open=True)
        _check_choice(n, "gate_input", self.gate_input, GATE_INPUTS)
        _check_float(n, "balance_weight", self.balance_weight, lo=0.0)
        _check_float(n, "entropy_weight", self.entropy_weight, lo=0.0)
        _check_float(n, "kp_weight", self.kp_weight, lo=0.0)
        _check_choice(n, "mode", self.mode, FUSION_MODES)
        _check_int(n, "single_layer", self.single_layer, lo=-1, hi=self.num_layers - 1)

    @property
    def resolved_single_layer(self) -> int:
        """The layer index used in mode ``single`` (``-1`` resolved to ``L - 1``)."""
        return self.num_layers - 1 if self.single_layer < 0 else self.single_layer

    @property
    def num_experts(self) -> int:
        """Experts actually built: one per layer, or one in mode ``single``."""
        return 1 if self.mode == "single" else self.num_layers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        return _from_dict(cls, data)


@dataclass
class SequenceConfig:
    """Causal pre-LN transformer over the user's history (left-padded, most recent item last)."""

    # Longest history the model accepts (paper: 10 of <= 13 interactions); >= 1. Sets the number of
    # learned (right-aligned, recency) positional embeddings.
    max_history: int = 10
    # Transformer blocks; >= 1.
    num_layers: int = 2
    # Attention heads; >= 1, and ModelConfig.d_model must be divisible by it.
    num_heads: int = 2
    # Hidden width of each block's feed-forward network; >= 1 (paper preset: 4 * d = 1024).
    ffn_dim: int = 256
    # Dropout on the input embeddings, attention weights and residual branches; in [0, 1).
    dropout: float = 0.1

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_int(n, "max_history", self.max_history, lo=1)
        _check_int(n, "num_layers", self.num_layers, lo=1)
        _check_int(n, "num_heads", self.num_heads, lo=1)
        _check_int(n, "ffn_dim", self.ffn_dim, lo=1)
        _check_float(n, "dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequenceConfig:
        return _from_dict(cls, data)


@dataclass
class TextConfig:
    """Optional title encoder: a hashed word-piece embedding bag over title token ids."""

    # Whether the item tower adds the title encoder's output to the item embedding.
    enabled: bool = False
    # Hash buckets for token ids (id 0 = padding; ids > 0 map to 1..num_buckets-1); >= 2.
    num_buckets: int = 8192
    # Width of the bag-of-pieces embedding before its projection to d; >= 1.
    dim: int = 64
    # Lt: token ids kept per title (the width of the ``title_tokens`` buffer); >= 1.
    max_tokens: int = 32

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_bool(n, "enabled", self.enabled)
        _check_int(n, "num_buckets", self.num_buckets, lo=2)
        _check_int(n, "dim", self.dim, lo=1)
        _check_int(n, "max_tokens", self.max_tokens, lo=1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConfig:
        return _from_dict(cls, data)


@dataclass
class ImageConfig:
    """Optional cover encoder: a small strided CNN over ``size x size`` RGB covers."""

    # Whether the item tower adds the cover encoder's output to the item embedding.
    enabled: bool = False
    # Cover side in pixels (covers are stored as uint8 [N+1, 3, size, size]); >= 8.
    size: int = 64
    # Output channels of the stride-2 3x3 conv stages (each halves the side); 1..log2(size) stages,
    # each >= 1.
    channels: tuple[int, ...] = (16, 32, 64, 128)

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_bool(n, "enabled", self.enabled)
        _check_int(n, "size", self.size, lo=8)
        if not isinstance(self.channels, tuple) or not self.channels:
            raise ValueError(f"{n}.channels must be a non-empty tuple of ints, got {self.channels!r}")
        if 2 ** len(self.channels) > self.size:
            raise ValueError(f"{n}.channels has {len(self.channels)} stride-2 stages, too many for "
                             f"size {self.size}")
        for i, c in enumerate(self.channels):
            _check_int(n, f"channels[{i}]", c, lo=1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageConfig:
        return _from_dict(cls, data)


@dataclass
class IDConfig:
    """The item-ID part of the ``warmcold`` item tower: an ID row where the video was seen in training.

    The item embedding is ``content + w_i * E[i]``: ``content`` (fused layers, optional title and
    cover) always, the ID row ``E[i]`` only for an item with at least ``min_count`` training
    interactions (read from the model's ``id_counts`` buffer; every other item, the padding index 0
    and a video added after training read no row at all, ``w_i = 0``). Training drops whole ID rows
    so that the content alone stays a good embedding.
    """

    # Share of a training batch's distinct items whose ID row is dropped (replaced by nothing) in
    # that step: the same items lose their ID in every history slot and as targets; in [0, 1).
    dropout: float = 0.5
    # Share of training steps in which every item loses its ID row (the step trains the content
    # tower alone, as ID-free LinkedOut); in [0, 1). Combines with ``dropout``.
    batch_dropout: float = 0.0
    # An item's ID row is read only when it has at least this many training interactions; >= 1.
    # Items below it (and never-seen items) are encoded from their content alone.
    min_count: int = 1
    # Weight of a read ID row: "none" = 1; "frequency" = sigmoid(a * log(1 + count) + b) with
    # learned scalars a, b (the ID part fades in with the item's training frequency).
    gate: IdGate = "none"
    # Weight of the content -> ID mapping loss; 0 = no mapping. > 0 builds a residual MLP that
    # predicts an item's ID row from its content (MSE to the stop-grad rows of warm items in the
    # batch) and uses the prediction in place of the ID row for items without one; >= 0.
    map_weight: float = 10.0
    # A learned row shared by every item without an ID row (dropped in training, never seen, index
    # 0): what the ID part of a typical training target adds, learned from the dropped items, so
    # that a video scored from its content alone is not ranked below every ID-carrying one.
    unknown_row: bool = False
    # Outside training, the embedding of every item without an ID row (never seen, index 0) is
    # multiplied by this factor: a calibration of how far a content-only video is trusted against
    # ID-carrying ones (> 1 ranks videos close to a user's taste higher, far ones lower). Not used
    # in training (items dropped there keep factor 1); 1 = off; > 0. 1.2: chosen on the `small`
    # preset's pseudo-cold validation split with 5 % of the warm videos held out (the catalogue's
    # share of never-seen ones), as the largest factor whose overall HR@10 and NDCG@10 stay within
    # one std of the best factor's (``bench/warm_cold.py calibrate``; README, "The served model").
    cold_scale: float = 1.2

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_bool(n, "unknown_row", self.unknown_row)
        _check_float(n, "cold_scale", self.cold_scale, lo=0.0, lo_open=True)
        _check_float(n, "dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        _check_float(n, "batch_dropout", self.batch_dropout, lo=0.0, hi=1.0, hi_open=True)
        _check_int(n, "min_count", self.min_count, lo=1)
        _check_choice(n, "gate", self.gate, ID_GATES)
        _check_float(n, "map_weight", self.map_weight, lo=0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IDConfig:
        return _from_dict(cls, data)


@dataclass
class ModelConfig:
    """The whole recommender: which kind, its width, and the configs of its parts.

    kinds: ``linkedout`` (fusion MoE item tower, ID-free), ``hybrid`` (``linkedout`` + an item-ID
    embedding for every item), ``warmcold`` (``linkedout`` + an ID embedding only for the items seen
    in training, trained with ID dropout; see ``IDConfig``), ``sasrec_id`` (classic SASRec on item
    IDs), ``popularity`` (no trainable parameters).
    """

    # Which recommender build_model builds; one of MODEL_KINDS.
    kind: ModelKind = "linkedout"
    # d: width of item embeddings, user states and the sequence model; >= 1. Must equal
    # fusion.d_model for the feature kinds (linkedout, hybrid).
    d_model: int = 64
    # The item tower's fusion MoE (feature kinds only).
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # The user tower's sequence model (all trainable kinds).
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    # Optional title encoder (feature kinds only).
    text: TextConfig = field(default_factory=TextConfig)
    # Optional cover encoder (feature kinds only).
    image: ImageConfig = field(default_factory=ImageConfig)
    # The ID part of kind "warmcold" (ignored by the other kinds).
    ids: IDConfig = field(default_factory=IDConfig)
    # Hidden width of the ranking head (a residual MLP on the user state, feature kinds); 0 = no head
    # (the sequence output is the user state); >= 0.
    head_hidden: int = 256
    # Std of the normal initialisation of linear and embedding weights; > 0.
    init_std: float = 0.02

    def __post_init__(self) -> None:
        n = type(self).__name__
        _check_choice(n, "kind", self.kind, MODEL_KINDS)
        _check_int(n, "d_model", self.d_model, lo=1)
        for name, typ in (("fusion", FusionConfig), ("sequence", SequenceConfig), ("text", TextConfig),
                          ("image", ImageConfig), ("ids", IDConfig)):
            if not isinstance(getattr(self, name), typ):
                raise ValueError(f"{n}.{name} must be a {typ.__name__}, got {type(getattr(self, name)).__name__}")
        _check_int(n, "head_hidden", self.head_hidden, lo=0)
        _check_float(n, "init_std", self.init_std, lo=0.0, lo_open=True)
        if self.d_model % self.sequence.num_heads != 0:
            raise ValueError(f"{n}.sequence.num_heads ({self.sequence.num_heads}) must divide "
                             f"{n}.d_model ({self.d_model})")
        if self.kind in FEATURE_KINDS:
            if self.fusion.d_model != self.d_model:
                raise ValueError(f"{n}.fusion.d_model must equal {n}.d_model ({self.d_model}), "
                                 f"got {self.fusion.d_model}")
        else:
            for name in ("text", "image"):
                if getattr(self, name).enabled:
                    raise ValueError(f"{n}.{name}.enabled needs kind in {list(FEATURE_KINDS)}, "
                                     f"got kind {self.kind!r}")

    @property
    def needs_features(self) -> bool:
        """Whether the item tower reads backbone features."""
        return self.kind in FEATURE_KINDS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists in JSON; ``from_dict`` restores them)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict`` (also accepts the dict after a JSON round trip)."""
        return _from_dict(cls, data)

    @classmethod
    def paper(cls, in_dim: int = PAPER_HIDDEN, kind: ModelKind = "linkedout") -> ModelConfig:
        """The paper's setting: 6 layers x 64 tokens x D, d = 256, 2-block sequence model.

        ``in_dim`` is the backbone hidden size: 3584 for Qwen2-7B (LLaVA-OneVision-7B), or 4096 as in
        the paper's table. At D = 4096 the fusion MoE has ~6.36 M parameters and the sequence model
        + ranking head ~2.11 M (paper: 6.3 M + 2.1 M = 8.4 M); see ``linkedout.model.summary``.
        """
        d = 256
        return cls(
            kind=kind,
            d_model=d,
            fusion=FusionConfig(num_layers=6, tokens=64, in_dim=in_dim, d_model=d, expert_queries=1,
                                expert_hidden=0, gate_hidden=64),
            sequence=SequenceConfig(max_history=10, num_layers=2, num_heads=4, ffn_dim=4 * d, dropout=0.1),
            head_hidden=4 * d,
        )
