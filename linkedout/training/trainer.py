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
from torch import Tensor, nn

from linkedout.model.base import Recommender, gather_history
from linkedout.training.batches import Batch, BatchBuilder, ShardedOrder, iterate_batches, steps_per_epoch
from linkedout.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from linkedout.training.config import TrainConfig
from linkedout.training.distributed import DistContext, all_reduce_mean, barrier, broadcast_flag, wrap_model
from linkedout.training.losses import bpr_loss, full_softmax_loss, inbatch_logq_loss, log_popularity
from linkedout.utils import atomic_write_text, format_duration, get_logger, progress, set_seed

log = get_logger(__name__)

FeatureFn = Callable[[Tensor], Tensor]
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
class _State:
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


class LossModule(nn.Module):
    """The loss of one batch as a module, so that ``DistributedDataParallel`` can wrap it.

    ``forward(batch) -> (total, main)``: ``main`` is the ranking loss, ``total`` adds the model's
    auxiliary loss (both scalars).
    """

    def __init__(self, model: Recommender, loss: str, log_q: Tensor, temperature: float):
        super().__init__()
        self.model = model
        self.loss = loss
        self.temperature = temperature
        self.log_q = log_q  # (N+1,) not a buffer: it is data, not model state

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        model = self.model
        features = batch.features if model.needs_features else None
        enc = model.encode_items(batch.items, features)
        emb = enc.emb  # (U, d)
        table = torch.cat([emb.new_zeros(1, emb.shape[1]), emb]) if batch.has_pad else emb  # (U[+1], d)
        hist, mask = gather_history(table, batch.inputs_inv, batch.inputs)  # (B, T, d), (B, T)
        states = model.user_states(hist, mask)  # (B, T, d)
        valid = batch.targets > 0  # (B, T)
        user = states[valid]  # (P, d)
        targets = batch.targets[valid]  # (P,)
        if self.loss == "inbatch_logq":
            main = inbatch_logq_loss(user, targets, batch.items, emb, self.log_q,
                                     temperature=self.temperature, score=model.score)
        elif self.loss == "bpr":
            assert batch.negatives is not None
            main = bpr_loss(user, targets, batch.negatives[valid], batch.items, emb, score=model.score)
        else:
            main = full_softmax_loss(user, targets, batch.items, emb, temperature=self.temperature,
                                     score=model.score)
        total = main if enc.aux_loss is None else main + enc.aux_loss.float()
        return total, main.detach()


def default_evaluate(model: Recommender, eval_set: Any, item_features: FeatureFn | None, cfg: TrainConfig,
                     split: Any) -> dict[str, float]:
    """Validation: full-catalogue metrics (HR/NDCG@{5,10,20}, MRR) with the user's earlier items masked."""
    from linkedout.evaluation import evaluate

    exclude = getattr(split, "train_sequences", None)
    result = evaluate(model, eval_set, item_features if model.needs_features else None,
                      batch_size=cfg.eval_batch_size, exclude=exclude, sampled_negatives=0, seed=cfg.seed)
    return result.summary()


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
        self.device = self._resolve_device(cfg.device)
        self.amp_dtype = self._resolve_amp(cfg.mixed_precision)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pt"
        self.best_path = self.ckpt_dir / "best.pt"

        if examples is None:
            from linkedout.data.split import training_examples

            examples = training_examples(split, cfg.max_history)
        inputs = torch.as_tensor(np.asarray(examples[0]), dtype=torch.long)
        targets = torch.as_tensor(np.asarray(examples[1]), dtype=torch.long)
        self.item_counts = torch.as_tensor(np.asarray(split.item_counts), dtype=torch.long)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.state = _State()
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
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, StepWithWarmup(cfg.warmup_steps, self.steps_per_epoch, cfg.scheduler_step_epochs,
                                           cfg.scheduler_gamma))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # ------------------------------------------------------------------------------------- setup

    def _resolve_device(self, name: str) -> torch.device:
        if name == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", self.dist.local_rank if self.dist.is_distributed else 0)
            return torch.device("cpu")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device is {name!r} but CUDA is not available")
        dev = torch.device(name)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.dist.local_rank if self.dist.is_distributed else 0)
        return dev

    def _resolve_amp(self, mode: str) -> torch.dtype | None:
        if self.device.type != "cuda":
            if mode in ("fp16", "bf16"):
                log.warning("mixed precision %s requested on %s: training in float32", mode, self.device)
            return None
        return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[mode]

    def _build_optimizer(self) -> torch.optim.AdamW:
        """AdamW with one (decay, no-decay) pair of parameter groups per ``model.param_groups()`` group."""
        cfg = self.cfg
        groups: list[dict[str, Any]] = []
        seen: dict[int, str] = {}
        for name, params in self.model.param_groups().items():
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
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise ValueError(f"{type(self.model).__name__}.param_groups() leaves trainable parameters out: "
                             f"{missing[:5]}")
        return torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps)

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
        if main:
            self._truncate_metrics()  # rows a killed run logged after its last checkpoint are logged again
        writer = self._tensorboard() if main else None
        total_steps = self.steps_per_epoch * cfg.epochs
        stop = self.state.stopped_early
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_seqs, window_t0 = 0, 0, time.perf_counter()
        try:
            while self.state.epoch < cfg.epochs and not stop:
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
                    window_loss += loss
                    epoch_loss += loss
                    window_steps += 1
                    window_seqs += seqs
                    self.state.epoch_seqs += seqs
                    if self.state.step % cfg.log_every == 0:
                        elapsed = max(time.perf_counter() - window_t0, 1e-9)
                        mean_loss = float(all_reduce_mean(window_loss / window_steps, self.dist))
                        if not math.isfinite(mean_loss):
                            raise FloatingPointError(f"training loss is {mean_loss} at step {self.state.step}")
                        if main:
                            self._log_step(writer, mean_loss, window_seqs / elapsed,
                                           (total_steps - self.state.step) * elapsed / window_steps)
                        window_loss.zero_()
                        window_steps, window_seqs, window_t0 = 0, 0, time.perf_counter()
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
        finally:
            if writer is not None:
                writer.close()
        return self._result(trained=True)

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
            self._append_metrics(record)
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
        self._append_metrics(record)
        if writer is not None:
            writer.add_scalar("train/loss", loss, self.state.step)
            writer.add_scalar("train/seq_per_s", seq_per_s, self.state.step)
            for name, lr in lrs.items():
                writer.add_scalar(f"lr/{name}", lr, self.state.step)

    def _truncate_metrics(self) -> None:
        """Keep the ``metrics.jsonl`` rows up to the resumed state; drop those logged after it.

        A run killed after logging an epoch (or a step) but before its checkpoint logs it again when
        it resumes; without this the file would hold that row twice. A fresh run starts an empty file.
        """
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        s = self.state
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1  # a torn last line of a killed run
                continue
            keep = isinstance(rec, dict) and int(rec.get("step", 0)) <= s.step and (
                rec.get("kind") != "epoch" or int(rec.get("epoch", 0)) <= s.epoch)
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            atomic_write_text(path, "".join(line + "\n" for line in kept))
            log.info("%s: dropped %d rows logged after the checkpoint that is resumed (step %d)", path, dropped, s.step)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(record), allow_nan=False, default=_json_default) + "\n")

    def _tensorboard(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.state.step or None)

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
        self._check_same_model(ckpt)
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
        self.state = _State(**ckpt["state"])
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

    def _check_same_model(self, ckpt: dict[str, Any]) -> None:
        """:class:`CheckpointError` naming what differs when ``last.pt`` holds another model than this one."""
        from linkedout.fingerprint import diff_inputs

        module = unwrap(self.model)
        config = getattr(module, "config", None)
        mine = config.to_dict() if config is not None and hasattr(config, "to_dict") else None
        saved = ckpt.get("model_config")
        problems = []
        if ckpt.get("model_class") != type(module).__name__:
            problems.append(f"model {ckpt.get('model_class')} -> {type(module).__name__}")
        if int(ckpt.get("num_items") or 0) not in (0, self.num_items):
            problems.append(f"num_items {ckpt.get('num_items')} -> {self.num_items}")
        if mine is not None and isinstance(saved, dict) and saved != mine:
            problems += diff_inputs(saved, mine)
        if problems:
            raise CheckpointError(
                f"{self.last_path} holds a checkpoint of another model than the one asked for "
                f"({'; '.join(problems[:6])}): it cannot be resumed. Use another run directory, or delete "
                f"{self.run_dir} to train from scratch")

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
                              json.dumps(_finite(result.to_dict()), indent=2, default=_json_default))
        return result


def _lookup(metrics: Mapping[str, float], name: str) -> float:
    """``metrics[name]``, case-insensitively (the evaluator says ``NDCG@10``, configs ``ndcg@10``)."""
    for k, v in metrics.items():
        if k.lower() == name.lower():
            return float(v)
    raise KeyError(f"validation returned no {name!r} (TrainConfig.best_metric); got {sorted(metrics)}")


def _finite(o: Any) -> Any:
    """``o`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
