"""``TrainConfig``: every knob of a training run, validated when built.

Defaults follow the paper's training setting (DESIGN.md §1): AdamW, lr 1e-4 for the video and the
text/image encoders and 1e-5 for the ranking head, weight decay 0.1, grad-norm clip 5.0, a step
schedule with warm-up (0 warm-up steps, a step every epoch, gamma 1.0, i.e. a constant rate),
batch 256, fp16 mixed precision on GPU, seed 42. The paper trains 100 epochs; the default here is
smaller so that the embedded run finishes on a laptop — set ``epochs=100`` to match the paper.

The config is plain data: ``dataclasses.asdict`` round-trips through JSON and is saved with every
checkpoint (``TrainConfig.from_dict`` rebuilds it, ignoring nothing silently).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LOSSES = ("inbatch_logq", "bpr", "full_softmax")
MIXED_PRECISION = ("auto", "fp16", "bf16", "off")
PARAM_GROUPS = ("video", "text", "image", "id", "head")


@dataclass
class TrainConfig:
    """Training hyper-parameters (one run).

    Batching: ``batch_size`` is the *global* batch (sequences per optimiser step, summed over all
    DDP processes); under ``torchrun`` each of the ``W`` processes takes ``batch_size / W`` of it.
    """

    epochs: int = 20  # >= 1; the paper trains 100
    batch_size: int = 256  # >= 1, global sequences per optimiser step
    max_history: int = 10  # >= 1, T: history positions per training sequence (paper: <= 10)
    # Learning rate per parameter group of ``Recommender.param_groups()`` (all > 0).
    lr_video: float = 1e-4  # video encoder (the cross-layer fusion MoE over backbone features)
    lr_text: float = 1e-4  # text encoder (titles), when a model has one
    lr_image: float = 1e-4  # image encoder (covers), when a model has one
    # ID embeddings are not in the paper's LinkedOut model; 1e-3 is the usual rate of the
    # ID-based baselines (SASRec / GRU4Rec in RecBole and the MicroLens benchmark).
    lr_id: float = 1e-3
    lr_head: float = 1e-5  # ranking head: sequence model and scorer
    weight_decay: float = 0.1  # >= 0, AdamW decoupled decay
    # No weight decay on 0-/1-d parameters (biases, norm gains, gate temperatures). Embedding
    # tables (2-d) keep the decay. Set False to decay everything, as a literal reading of the paper.
    no_decay_bias_norm: bool = True
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas, each in [0, 1)
    eps: float = 1e-8  # > 0, AdamW epsilon
    grad_clip: float = 5.0  # > 0 clips the global grad norm; 0 disables
    warmup_steps: int = 0  # >= 0, linear warm-up over optimiser steps
    scheduler_step_epochs: int = 1  # >= 1, multiply the rate by ``scheduler_gamma`` every this many epochs
    scheduler_gamma: float = 1.0  # in (0, 1]; 1.0 = constant (paper)
    loss: str = "inbatch_logq"  # one of LOSSES
    temperature: float = 1.0  # > 0, logits = score / temperature (softmax losses)
    num_negatives: int = 1  # >= 1, uniform negatives per position for ``bpr``
    mixed_precision: str = "auto"  # one of MIXED_PRECISION; auto = fp16 on CUDA, off on CPU
    seed: int = 42  # >= 0, seeds shuffling, negative sampling and the RNGs
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    eval_every: int = 1  # >= 1, validate every this many epochs (and after the last one)
    eval_batch_size: int = 1024  # >= 1, users per evaluation batch
    early_stopping_patience: int = 10  # >= 0 validations without improvement before stopping; 0 = never stop
    best_metric: str = "ndcg@10"  # validation metric that picks ``best.pt`` (higher is better)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    log_every: int = 50  # >= 1, write a step line to metrics.jsonl / TensorBoard every this many steps
    checkpoint_every: int = 0  # >= 0, also save last.pt every this many steps (0: at epoch ends only)
    num_workers: int = 0  # >= 0, feature-loading threads (0: load in the training loop)
    max_steps_per_epoch: int = 0  # >= 0, cap on steps per epoch (tests, smoke runs); 0 = no cap
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the run

    def __post_init__(self) -> None:
        positive_ints = ("epochs", "batch_size", "max_history", "scheduler_step_epochs", "num_negatives",
                         "eval_every", "eval_batch_size", "log_every")
        for name in positive_ints:
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "seed", "early_stopping_patience", "checkpoint_every", "num_workers",
                     "max_steps_per_epoch"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("lr_video", "lr_text", "lr_image", "lr_id", "lr_head", "eps", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"TrainConfig.{name} must be a number > 0, got {value!r}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.scheduler_gamma, (int, float)) or not 0 < self.scheduler_gamma <= 1:
            raise ValueError(f"TrainConfig.scheduler_gamma must be in (0, 1], got {self.scheduler_gamma!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"TrainConfig.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if not isinstance(self.best_metric, str) or ("@" not in self.best_metric and self.best_metric != "mrr"):
            raise ValueError(f"TrainConfig.best_metric must name a metric like 'ndcg@10', got {self.best_metric!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu") or self.device.startswith(("cuda", "mps"))
        ):
            raise ValueError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda[:n]', got {self.device!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"TrainConfig.extra must be a dict, got {type(self.extra).__name__}")

    def lr_for(self, group: str) -> float:
        """Learning rate of a ``param_groups()`` group; ``ValueError`` for a group name not in PARAM_GROUPS."""
        if group not in PARAM_GROUPS:
            raise ValueError(f"unknown parameter group {group!r}; TrainConfig has lr_{{{','.join(PARAM_GROUPS)}}}")
        return float(getattr(self, f"lr_{group}"))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {unknown}")
        kwargs = dict(d)
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"TrainConfig.{name} must be an int >= {minimum}, got {value!r}")
