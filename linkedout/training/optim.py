"""The optimiser, the learning-rate schedule and the mixed precision of a training run.

AdamW with one rate per ``Recommender.param_groups()`` group (``TrainConfig.lr_for``), each group
split in a decayed and a no-decay part (biases, norm gains: ``TrainConfig.no_decay_bias_norm``);
a ``LambdaLR`` with linear warm-up, then ``gamma`` every ``scheduler_step_epochs`` epochs; the
autocast dtype of ``TrainConfig.mixed_precision`` (CUDA only).
"""

from __future__ import annotations

from typing import Any

import torch

from linkedout.model.base import Recommender
from linkedout.training.config import TrainConfig
from linkedout.utils import get_logger

log = get_logger(__name__)

__all__ = ["StepWithWarmup", "amp_dtype", "build_optimizer", "build_scheduler"]


class StepWithWarmup:
    """LambdaLR factor: linear warm-up over ``warmup`` steps, then ``gamma ** (epoch // step_epochs)``.

    A callable object (not a lambda) so that ``LambdaLR.state_dict`` saves its settings.
    """

    def __init__(self, warmup: int, steps_per_epoch: int, step_epochs: int, gamma: float):
        self.warmup = warmup
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.step_epochs = step_epochs
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 and step < self.warmup else 1.0
        epoch = step // self.steps_per_epoch
        return warm * self.gamma ** (epoch // self.step_epochs)


def build_optimizer(model: Recommender, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one (decay, no-decay) pair of parameter groups per ``model.param_groups()`` group.

    ``ValueError`` when a parameter is in two groups or a trainable parameter in none.
    """
    groups: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for name, params in model.param_groups().items():
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        lr = cfg.lr_for(name)
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter is in both param_groups {seen[id(p)]!r} and {name!r}")
            seen[id(p)] = name
        decay = [p for p in params if p.ndim >= 2 or not cfg.no_decay_bias_norm]
        no_decay = [p for p in params if p.ndim < 2 and cfg.no_decay_bias_norm]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay, "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}/no_decay"})
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"{type(model).__name__}.param_groups() leaves trainable parameters out: "
                         f"{missing[:5]}")
    return torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's schedule: :class:`StepWithWarmup` of ``cfg``'s warm-up and step settings, one step per batch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, StepWithWarmup(cfg.warmup_steps, steps_per_epoch, cfg.scheduler_step_epochs, cfg.scheduler_gamma))


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``TrainConfig.mixed_precision`` on ``device`` (``auto``: float16 on CUDA);
    None (float32) off CUDA, with a warning when fp16 or bf16 was asked for."""
    if device.type != "cuda":
        if mode in ("fp16", "bf16"):
            log.warning("mixed precision %s requested on %s: training in float32", mode, device)
        return None
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[mode]
