"""The training loop: ``Trainer(model, split, item_features, cfg, run_dir).fit() -> TrainResult``.

One optimiser step:

1. a batch of training windows ``(B, T)`` (``batches.BatchBuilder``): the batch's distinct items go
   through ``model.encode_items`` once, with their backbone features when ``model.needs_features``;
2. their embeddings are gathered back onto the histories (``base.gather_history``) and the causal
   ``model.user_states`` give a state at every position ``(B, T, d)``;
3. the loss (``TrainConfig.loss``) scores the states at the P valid positions against candidate
   items, plus the model's weighted auxiliary losses (``ItemEncoding.aux_loss``: gate balance,
   knowledge preservation);
4. backward (under AMP on CUDA, with a ``GradScaler`` for fp16), global grad-norm clipping, AdamW
   with one rate per ``model.param_groups()`` group, a LambdaLR step (warm-up, then ``gamma``
   every ``scheduler_step_epochs`` epochs).

Every ``eval_every`` epochs rank 0 validates with ``linkedout.evaluation.evaluate`` (full catalogue,
history masked) and keeps ``checkpoints/best.pt`` by ``TrainConfig.best_metric``; the run stops
early after ``early_stopping_patience`` validations without improvement. ``checkpoints/last.pt``
is written at every epoch end (and every ``checkpoint_every`` steps), and ``fit()`` resumes from it
exactly: model, optimiser, scheduler, scaler, RNG states and the position within the epoch (batch
order is a function of the seed and epoch, see ``batches``).

Outputs in ``run_dir``: ``metrics.jsonl`` (one JSON object a line: ``{"kind": "step" | "epoch",
"epoch", "step", "loss", "lr": {group: lr}, "seq_per_s", "eta_s", "valid": {metric: value},
"time"}``), TensorBoard scalars in ``tb/``, ``checkpoints/{last,best}.pt``, ``train_config.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linkedout.data.split import training_examples
from linkedout.evaluation import evaluate
from linkedout.model.base import Recommender
from linkedout.training.batches import (
    Batch,
    BatchBuilder,
    FeatureFn,
    ShardedOrder,
    iterate_batches,
    steps_per_epoch,
)
from linkedout.training.checkpoint import (
    check_same_model,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from linkedout.training.config import TrainConfig
from linkedout.training.ddp import (
    DistContext,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    training_device,
    wrap_model,
)
from linkedout.training.losses import log_popularity
from linkedout.training.objective import LossModule
from linkedout.training.optim import amp_dtype, build_optimizer, build_scheduler
from linkedout.training.runlog import append_metrics, finite, json_default, open_tensorboard, truncate_metrics
from linkedout.utils import atomic_write_text, format_duration, get_logger, progress, set_seed

log = get_logger(__name__)

#: ``(model, eval_set, item_features, cfg, split) -> {metric: value}`` (the validation hook).
EvaluateFn = Callable[[Recommender, Any, FeatureFn | None, TrainConfig, Any], Mapping[str, float]]


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns (also written to ``run_dir/result.json``)."""

    best_metric_name: str
    best_metric: float | None  # best validation value of ``best_metric`` (None if never validated)
    best_epoch: int  # 1-based epoch of the best validation (0: before training / untrained model)
    best_valid: dict[str, float]  # every validation metric at the best epoch
    epochs_completed: int
    steps: int  # optimiser steps in all
    stopped_early: bool
    trained: bool  # False for models without trainable parameters (e.g. popularity)
    best_checkpoint: str | None
    last_checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per validation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainState:
    """Trainer progress, saved in every checkpoint."""

    epoch: int = 0  # epochs fully done (= 0-based index of the epoch in progress)
    batch_in_epoch: int = 0  # batches of the current epoch already done
    step: int = 0  # optimiser steps done
    best_metric: float | None = None
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_validations: int = 0
    stopped_early: bool = False
    epoch_loss_sum: float = 0.0  # this process's summed step losses of the current epoch
    epoch_seqs: int = 0  # sequences (all processes) trained in the current epoch
    epoch_seconds: float = 0.0  # training wall time of the current epoch so far
    history: list[dict[str, Any]] = field(default_factory=list)


def default_evaluate(model: Recommender, eval_set: Any, item_features: FeatureFn | None, cfg: TrainConfig,
                     split: Any) -> dict[str, float]:
    """Validation: full-catalogue metrics (HR/NDCG@{5,10,20}, MRR) with the user's earlier items masked."""
    exclude = getattr(split, "train_sequences", None)
    result = evaluate(model, eval_set, item_features if model.needs_features else None,
                      batch_size=cfg.eval_batch_size, exclude=exclude, sampled_negatives=0, seed=cfg.seed)
    return result.summary()


@dataclass
class _LogWindow:
    """The optimiser steps since the last logged one: their summed loss, count, sequences and start time."""

    loss: Tensor  # () on the training device
    steps: int = 0
    seqs: int = 0
    t0: float = field(default_factory=time.perf_counter)


class Trainer:
    """Trains a ``Recommender`` on a ``SplitData`` (see the module docstring).

    Args:
        model: the recommender (moved to the training device).
        split: ``SplitData``: ``train_sequences``, ``valid``, ``item_counts``, ``num_items``.
        item_features: ``ItemFeatures`` (item index -> (M, L, K, D)); None for models that do not
            read features.
        cfg: ``TrainConfig``.
        run_dir: output directory (created); an existing ``checkpoints/last.pt`` is resumed.
        dist: this process's place in a DDP job (default: single process).
        evaluate_fn: validation hook (default ``default_evaluate``).
        examples: precomputed ``(inputs, targets)`` (S, T); default ``training_examples(split, cfg.max_history)``.
        on_step: called after every optimiser step (after logging and checkpointing) with
            ``(trainer, step)``; raising there stops the run (tests use it to simulate a kill).
    """

    def __init__(
        self,
        model: Recommender,
        split: Any,
        item_features: FeatureFn | None,
        cfg: TrainConfig,
        run_dir: str | os.PathLike[str],
        *,
        dist: DistContext | None = None,
        evaluate_fn: EvaluateFn | None = None,
        examples: tuple[Any, Any] | None = None,
        on_step: Callable[[Trainer, int], None] | None = None,
    ):
        if model.needs_features and item_features is None:
            raise ValueError(f"{type(model).__name__} reads backbone features: pass item_features")
        self.model = model
        self.split = split
        self.item_features = item_features
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist or DistContext()
        self.evaluate_fn: EvaluateFn = evaluate_fn or default_evaluate
        self.on_step = on_step
        self.num_items = int(split.num_items)
        if int(model.num_items) != self.num_items:
            raise ValueError(f"model has num_items={model.num_items} but the split has {self.num_items} items")
        seq_cfg = getattr(getattr(model, "config", None), "sequence", None)
        model_history = getattr(seq_cfg, "max_history", None)
        if isinstance(model_history, int) and cfg.max_history > model_history:
            raise ValueError(f"TrainConfig.max_history ({cfg.max_history}) exceeds the model's "
                             f"sequence.max_history ({model_history})")
        self.device = training_device(cfg.device, self.dist)
        self.amp_dtype = amp_dtype(cfg.mixed_precision, self.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pt"
        self.best_path = self.ckpt_dir / "best.pt"

        if examples is None:
            examples = training_examples(split, cfg.max_history)
        inputs = torch.as_tensor(np.asarray(examples[0]), dtype=torch.long)
        targets = torch.as_tensor(np.asarray(examples[1]), dtype=torch.long)
        self.item_counts = torch.as_tensor(np.asarray(split.item_counts), dtype=torch.long)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.state = TrainState()
        self._run_eta: float | None = None  # seconds left for the whole run, after the latest epoch
        self.model.to(self.device)
        if not self.trainable:
            return
        self.order = ShardedOrder(int(inputs.shape[0]), cfg.batch_size, cfg.seed, self.dist.rank,
                                  self.dist.world_size)
        self.steps_per_epoch = steps_per_epoch(self.order, cfg.max_steps_per_epoch)
        self.builder = BatchBuilder(inputs, targets, self.num_items, loss=cfg.loss,
                                    features_fn=item_features if model.needs_features else None,
                                    num_negatives=cfg.num_negatives, seed=cfg.seed, rank=self.dist.rank)
        log_q = log_popularity(self.item_counts).to(self.device)
        self.loss_module = wrap_model(LossModule(model, cfg.loss, log_q, cfg.temperature), self.dist,
                                      self.device)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # ------------------------------------------------------------------------------------- setup

    # ---------------------------------------------------------------------------------- the loop

    def fit(self) -> TrainResult:
        """Train (resuming from ``checkpoints/last.pt`` when present) and return the result."""
        cfg = self.cfg
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        if not self.trainable:
            return self._fit_untrained()

        resumed = self._maybe_resume()
        if not resumed:
            set_seed(cfg.seed + self.dist.rank)
        if main:  # rows a killed run logged after its last checkpoint are logged again
            truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step, self.state.epoch)
        writer = open_tensorboard(self.run_dir / "tb", self.state.step or None) if main else None
        stop = self.state.stopped_early
        window = _LogWindow(torch.zeros((), device=self.device))
        try:
            while self.state.epoch < cfg.epochs and not stop:
                stop = self._run_epoch(writer, window)
        finally:
            if writer is not None:
                writer.close()
        return self._result(trained=True)

    def _run_epoch(self, writer: Any, window: _LogWindow) -> bool:
        """Train the epoch in progress from the batch it stopped at, end it (validation when due) and save
        ``last.pt``; returns whether to stop, on every rank."""
        cfg = self.cfg
        main = self.dist.is_main
        epoch = self.state.epoch
        self.loss_module.train()
        start = self.state.batch_in_epoch
        batches = iterate_batches(self.builder, self.order, epoch, start=start, stop=self.steps_per_epoch,
                                  step_offset=epoch * self.steps_per_epoch, num_workers=cfg.num_workers)
        if main:
            eta = f", run ETA {format_duration(self._run_eta)}" if self._run_eta is not None else ""
            batches = progress(batches, total=self.steps_per_epoch - start,
                               desc=f"epoch {epoch + 1}/{cfg.epochs}{eta}", unit="batch")
        epoch_t0 = time.perf_counter() - self.state.epoch_seconds
        epoch_loss = torch.tensor(self.state.epoch_loss_sum, device=self.device)
        for batch in batches:
            loss = self.train_step(batch)
            self.state.step += 1
            self.state.batch_in_epoch += 1
            seqs = batch.num_sequences * self.dist.world_size
            window.loss += loss
            epoch_loss += loss
            window.steps += 1
            window.seqs += seqs
            self.state.epoch_seqs += seqs
            if self.state.step % cfg.log_every == 0:
                self._log_window(writer, window)
            if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                rank_rng = self._gather_rng()  # collective: every rank takes part
                if main:
                    self.state.epoch_loss_sum = float(epoch_loss)
                    self.state.epoch_seconds = time.perf_counter() - epoch_t0
                    self._save(self.last_path, rank_rng)
            if self.on_step is not None:
                self.on_step(self, self.state.step)
        epoch_s = max(time.perf_counter() - epoch_t0, 1e-9)
        train_stats = {
            "loss": float(all_reduce_mean(epoch_loss / max(1, self.state.batch_in_epoch), self.dist)),
            "seq_per_s": self.state.epoch_seqs / epoch_s,
            "epoch_s": epoch_s,
        }
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        self.state.epoch_loss_sum, self.state.epoch_seqs, self.state.epoch_seconds = 0.0, 0, 0.0
        validate = self.state.epoch % cfg.eval_every == 0 or self.state.epoch == cfg.epochs
        stop = self._end_epoch(writer, train_stats, validate)
        rank_rng = self._gather_rng()
        if main:
            self._save(self.last_path, rank_rng)
        barrier(self.dist)
        return stop

    def _log_window(self, writer: Any, window: _LogWindow) -> None:
        """Log the mean loss (over the ranks) and the pace of the steps since the last logged one; start a new window.

        ``FloatingPointError`` when the loss is not finite.
        """
        elapsed = max(time.perf_counter() - window.t0, 1e-9)
        mean_loss = float(all_reduce_mean(window.loss / window.steps, self.dist))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"training loss is {mean_loss} at step {self.state.step}")
        if self.dist.is_main:
            total_steps = self.steps_per_epoch * self.cfg.epochs
            self._log_step(writer, mean_loss, window.seqs / elapsed,
                           (total_steps - self.state.step) * elapsed / window.steps)
        window.loss.zero_()
        window.steps, window.seqs, window.t0 = 0, 0, time.perf_counter()

    def train_step(self, batch: Batch) -> Tensor:
        """One optimiser step on ``batch`` (this process's shard); returns the detached loss ().

        Does not advance ``fit``'s progress counters (used directly by benchmarks).
        """
        cfg = self.cfg
        batch = batch.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        with autocast:
            total, _ = self.loss_module(batch)
        self.scaler.scale(total).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return total.detach().float()

    # ------------------------------------------------------------------------ validation and logs

    def _end_epoch(self, writer: Any, train: dict[str, float], validate: bool) -> bool:
        """Write the epoch record; validate on rank 0 when due (best checkpoint, early stopping).

        Returns whether to stop, on every rank (rank 0 decides).
        """
        cfg = self.cfg
        stop = False
        if self.dist.is_main:
            metrics: dict[str, float] | None = None
            eval_s = 0.0
            if validate:
                t0 = time.perf_counter()
                metrics = {k: float(v) for k, v in self.evaluate_fn(self.model, self.split.valid, self.item_features,
                                                                     cfg, self.split).items()}
                eval_s = time.perf_counter() - t0
                value = _lookup(metrics, cfg.best_metric)
                improved = math.isfinite(value) and (self.state.best_metric is None
                                                     or value > self.state.best_metric)
                if improved:
                    self.state.best_metric, self.state.best_epoch = value, self.state.epoch
                    self.state.best_valid = dict(metrics)
                    self.state.bad_validations = 0
                else:
                    self.state.bad_validations += 1
                patience = cfg.early_stopping_patience
                stop = patience > 0 and self.state.bad_validations >= patience and self.state.epoch < cfg.epochs
                self.state.stopped_early = stop
            # The whole run's ETA: the epochs left at this epoch's pace, validation included (early
            # stopping may end the run sooner; the validations without improvement left say when at most).
            remaining = 0 if stop else cfg.epochs - self.state.epoch
            epoch_cost = float(train.get("epoch_s", 0.0)) + (eval_s / max(1, cfg.eval_every) if validate else 0.0)
            self._run_eta = remaining * epoch_cost
            if validate:
                patience_left = (f", early stop after {cfg.early_stopping_patience - self.state.bad_validations} more "
                                 "validations without improvement" if cfg.early_stopping_patience and remaining else "")
                log.info("epoch %d/%d: %s = %.4f (best %.4f at epoch %d)%s; %s/epoch, run ETA %s (%d epochs left%s)",
                         self.state.epoch, cfg.epochs, cfg.best_metric, value,
                         self.state.best_metric if self.state.best_metric is not None else float("nan"),
                         self.state.best_epoch, "; stopping early" if stop else "",
                         format_duration(epoch_cost), format_duration(self._run_eta), remaining, patience_left)
                if improved:
                    self._save(self.best_path)
            record: dict[str, Any] = {"kind": "epoch", "epoch": self.state.epoch, "step": self.state.step, **train,
                                      "eta_s": self._run_eta, "lr": self._lrs(), "valid": metrics,
                                      "best": self.state.best_metric, "eval_s": eval_s, "time": time.time()}
            if metrics is not None:
                self.state.history.append(record)
            append_metrics(self.run_dir / "metrics.jsonl", record)
            if writer is not None:
                for k, v in {**{f"train/epoch_{k}": v for k, v in train.items()},
                             **{f"valid/{k}": v for k, v in (metrics or {}).items()}}.items():
                    if math.isfinite(v):
                        writer.add_scalar(k, v, self.state.step)
        return broadcast_flag(stop, self.dist, self.device)

    def _lrs(self) -> dict[str, float]:
        if not self.trainable:
            return {}
        return {g["name"]: float(g["lr"]) for g in self.optimizer.param_groups if "/" not in g["name"]}

    def _log_step(self, writer: Any, loss: float, seq_per_s: float, eta_s: float) -> None:
        lrs = self._lrs()
        record = {"kind": "step", "epoch": self.state.epoch, "step": self.state.step, "loss": loss, "lr": lrs,
                  "seq_per_s": seq_per_s, "eta_s": eta_s, "time": time.time()}
        append_metrics(self.run_dir / "metrics.jsonl", record)
        if writer is not None:
            writer.add_scalar("train/loss", loss, self.state.step)
            writer.add_scalar("train/seq_per_s", seq_per_s, self.state.step)
            for name, lr in lrs.items():
                writer.add_scalar(f"lr/{name}", lr, self.state.step)

    # ------------------------------------------------------------------------- checkpoint/resume

    def _gather_rng(self) -> list[dict[str, Any]] | None:
        """Every rank's RNG states (collective under DDP), so that each rank resumes its own streams."""
        if not self.dist.is_distributed:
            return None
        states: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(states, rng_state())
        return states

    def _save(self, path: Path, rank_rng: list[dict[str, Any]] | None = None) -> None:
        trainable = bool(self.trainable)
        save_checkpoint(path, self.model, self.optimizer if trainable else None,
                        self.scheduler if trainable else None, self.scaler if trainable else None,
                        asdict(self.state), train_config=self.cfg.to_dict(), item_counts=self.item_counts,
                        rank_rng=rank_rng)

    def _maybe_resume(self) -> bool:
        if not self.last_path.is_file():
            return False
        ckpt = load_checkpoint(self.last_path, map_location=self.device)
        check_same_model(ckpt, self.model, self.num_items, self.last_path, self.run_dir)
        saved_cfg = ckpt.get("train_config") or {}
        changed = sorted(k for k, v in self.cfg.to_dict().items()
                         if k not in ("epochs", "early_stopping_patience", "log_every") and saved_cfg.get(k, v) != v)
        if changed:
            log.warning("resuming %s with a changed TrainConfig (%s): the run is no longer exactly reproducible",
                        self.last_path, ", ".join(changed))
        unwrap(self.model).load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        if self.state.stopped_early:
            log.info("checkpoint %s had stopped early at epoch %d; not training further",
                     self.last_path, self.state.epoch)
        rank_rng = ckpt.get("rank_rng")
        if self.dist.is_distributed and rank_rng is not None and len(rank_rng) == self.dist.world_size:
            set_rng_state(rank_rng[self.dist.rank])  # this rank's own streams (dropout, negatives)
        else:
            if self.dist.is_distributed:
                log.warning("%s holds no RNG states for %d ranks: ranks restore rank 0's, so the resumed "
                            "run is not bit-identical", self.last_path, self.dist.world_size)
            set_rng_state(ckpt["rng"])
        log.info("resumed from %s: epoch %d, batch %d, step %d", self.last_path, self.state.epoch,
                 self.state.batch_in_epoch, self.state.step)
        return True

    # ------------------------------------------------------------------------------------ results

    def _fit_untrained(self) -> TrainResult:
        """A model without trainable parameters (popularity) is only validated and saved."""
        log.info("%s has no trainable parameters: validating only", type(self.model).__name__)
        if self.dist.is_main:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a validation-only run: its one row, afresh
            self._end_epoch(None, {}, validate=True)
            self._save(self.best_path)
            self._save(self.last_path)
        return self._result(trained=False)

    def _result(self, trained: bool) -> TrainResult:
        s = self.state
        result = TrainResult(
            best_metric_name=self.cfg.best_metric, best_metric=s.best_metric, best_epoch=s.best_epoch,
            best_valid=dict(s.best_valid), epochs_completed=s.epoch, steps=s.step, stopped_early=s.stopped_early,
            trained=trained,
            best_checkpoint=str(self.best_path) if self.best_path.is_file() else None,
            last_checkpoint=str(self.last_path) if self.last_path.is_file() else None,
            history=list(s.history),
        )
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "result.json",
                              json.dumps(finite(result.to_dict()), indent=2, default=json_default))
        return result


def _lookup(metrics: Mapping[str, float], name: str) -> float:
    """``metrics[name]``, case-insensitively (the evaluator says ``NDCG@10``, configs ``ndcg@10``)."""
    for k, v in metrics.items():
        if k.lower() == name.lower():
            return float(v)
    raise KeyError(f"validation returned no {name!r} (TrainConfig.best_metric); got {sorted(metrics)}")
