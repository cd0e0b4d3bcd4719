"""The training loop: config validation, batching, gradients, learning, checkpoints, exact resume."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from linkedout.data.split import SplitData, leave_one_out, training_examples
from linkedout.model import FusionConfig, ModelConfig, SequenceConfig, build_model
from linkedout.model.base import Recommender
from linkedout.model.config import FusionMode
from linkedout.shards.items import ItemFeatures
from linkedout.training import (
    BatchBuilder,
    ShardedOrder,
    TrainConfig,
    Trainer,
    load_checkpoint,
    load_model_from_checkpoint,
)
from linkedout.training.objective import LossModule
from linkedout.training.optim import StepWithWarmup

L, K, D = 3, 4, 8  # tiny backbone features


def make_split(num_users: int = 48, num_items: int = 24, length: int = 9, seed: int = 0) -> SplitData:
    """Users walk through one of 4 item topics in a fixed cyclic order (a learnable next item)."""
    rng = np.random.default_rng(seed)
    topics = np.array_split(np.arange(1, num_items + 1), 4)
    rows = []
    for u in range(num_users):
        items = topics[u % 4]
        start = int(rng.integers(len(items)))
        for t in range(length):
            rows.append((f"u{u}", str(items[(start + t) % len(items)]), 1000 * t))
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return leave_one_out(df, max_history=5, catalog=[str(i) for i in range(1, num_items + 1)])


class DictReader:
    """A feature reader stand-in over a dict of arrays (the ``FeatureReader`` protocol)."""

    def __init__(self, feats: dict[str, np.ndarray]):
        self.feats = feats

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.feats

    def get_many(self, ids: Any) -> np.ndarray:
        return np.stack([self.feats[i] for i in ids])


def make_features(split: SplitData, seed: int = 0) -> ItemFeatures:
    rng = np.random.default_rng(seed)
    feats = {i: rng.standard_normal((L, K, D)).astype(np.float32) for i in split.item_ids[1:]}
    return ItemFeatures(DictReader(feats), split.item_ids)


def sasrec(split: SplitData, dropout: float = 0.0) -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="sasrec_id", d_model=16,
                      sequence=SequenceConfig(max_history=5, num_layers=1, num_heads=2, ffn_dim=32, dropout=dropout))
    return build_model(cfg, split.num_items, split.item_counts)


def linkedout(split: SplitData, mode: FusionMode = "moe") -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="linkedout", d_model=16,
                      fusion=FusionConfig(num_layers=L, tokens=K, in_dim=D, d_model=16, gate_hidden=8, mode=mode,
                                          kp_weight=0.1),
                      sequence=SequenceConfig(max_history=5, num_layers=1, num_heads=2, ffn_dim=32, dropout=0.0),
                      head_hidden=16)
    return build_model(cfg, split.num_items, split.item_counts)


def quick_cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(epochs=2, batch_size=16, max_history=5, device="cpu", log_every=1, seed=3,
                                lr_head=1e-3, eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models: intra-op threads only add contention on a shared CPU (50x slower when loaded)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split() -> SplitData:
    return make_split()


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("field", "value"), [
    ("epochs", 0), ("batch_size", -1), ("lr_head", 0.0), ("lr_video", -1e-4), ("weight_decay", -0.1),
    ("grad_clip", -1.0), ("loss", "softmax"), ("temperature", 0), ("num_negatives", 0),
    ("mixed_precision", "fp8"), ("scheduler_gamma", 1.5), ("warmup_steps", -1), ("device", "tpu"),
    ("betas", (0.9, 1.0)), ("log_every", 0), ("best_metric", "loss"), ("early_stopping_patience", -1),
])
def test_bad_train_config_raises_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}"):
        TrainConfig(**{field: value})


def test_train_config_roundtrips_through_json() -> None:
    cfg = TrainConfig(epochs=3, loss="bpr", betas=(0.8, 0.99), extra={"note": "x"})
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="no field"):
        TrainConfig.from_dict({"epoch": 3})


def test_paper_defaults() -> None:
    cfg = TrainConfig()
    assert (cfg.lr_video, cfg.lr_text, cfg.lr_image, cfg.lr_head) == (1e-4, 1e-4, 1e-4, 1e-5)
    assert (cfg.weight_decay, cfg.grad_clip, cfg.batch_size, cfg.seed) == (0.1, 5.0, 256, 42)
    assert (cfg.warmup_steps, cfg.scheduler_gamma) == (0, 1.0)
    with pytest.raises(ValueError, match="unknown parameter group"):
        cfg.lr_for("gate")


def test_schedule_warms_up_then_steps_per_epoch() -> None:
    f = StepWithWarmup(warmup=4, steps_per_epoch=10, step_epochs=2, gamma=0.5)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(19) == 1.0 and f(20) == 0.5 and f(39) == 0.5 and f(40) == 0.25


# ---------------------------------------------------------------------------------------- batching


def test_sharded_order_is_seeded_and_ranks_concatenate_to_the_global_batch() -> None:
    single = ShardedOrder(23, batch_size=8, seed=5)
    assert single.num_batches == 3  # the last partial batch (7 rows) is kept
    ranks = [ShardedOrder(23, batch_size=8, seed=5, rank=r, world_size=2) for r in range(2)]
    for epoch in range(2):
        seen = []
        for b in range(single.num_batches):
            rows = single.rows(epoch, b)
            assert np.array_equal(np.concatenate([o.rows(epoch, b) for o in ranks]), rows)
            seen.append(rows)
        assert sorted(np.concatenate(seen).tolist()) == list(range(23))
    assert not np.array_equal(single.rows(0, 0), single.rows(1, 0))  # reshuffled every epoch
    assert np.array_equal(ShardedOrder(23, 8, seed=5).rows(1, 2), single.rows(1, 2))
    assert ShardedOrder(17, batch_size=8, seed=0, world_size=2).num_batches == 2  # 1 leftover row dropped


def test_batch_holds_each_distinct_item_once_and_inverse_restores_histories(split: SplitData) -> None:
    inputs, targets = (torch.from_numpy(a) for a in training_examples(split, 5))
    builder = BatchBuilder(inputs, targets, split.num_items, loss="bpr", features_fn=make_features(split),
                           num_negatives=2, seed=0)
    batch = builder.build(np.arange(10))
    assert batch.negatives is not None
    expected = torch.unique(torch.cat([inputs[:10].flatten(), targets[:10].flatten(), batch.negatives.flatten()]))
    assert torch.equal(batch.items, expected[expected > 0])
    assert batch.features is not None and batch.features.shape == (len(batch.items), L, K, D)
    table = torch.cat([torch.zeros(1), batch.items.float()]) if batch.has_pad else batch.items.float()
    assert torch.equal(table[batch.inputs_inv].view(10, -1).long(), inputs[:10])
    assert batch.negatives is not None and not (batch.negatives == batch.targets.unsqueeze(-1))[batch.targets > 0].any()


def test_item_tower_sees_each_distinct_item_once_per_step(split: SplitData, tmp_path: Path) -> None:
    model = linkedout(split)
    calls: list[torch.Tensor] = []
    original = model.encode_items

    def counting(item_idx: torch.Tensor, features: torch.Tensor | None = None) -> Any:
        calls.append(item_idx.clone())
        return original(item_idx, features)

    model.encode_items = counting  # type: ignore[method-assign]
    cfg = quick_cfg(epochs=1, max_steps_per_epoch=3)
    Trainer(model, split, make_features(split), cfg, tmp_path, evaluate_fn=lambda *a: {"NDCG@10": 0.0}).fit()
    assert len(calls) == 3  # one item-tower call per step (validation is stubbed out here)
    inputs, targets = training_examples(split, 5)
    order = ShardedOrder(len(inputs), cfg.batch_size, cfg.seed)
    for b, items in enumerate(calls):
        rows = order.rows(0, b)
        want = np.unique(np.concatenate([inputs[rows].ravel(), targets[rows].ravel()]))
        assert items.tolist() == want[want > 0].tolist()


# --------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("mode", ["moe", "uniform"])
def test_only_model_parameters_get_gradients_and_features_stay_frozen(split: SplitData, mode: FusionMode) -> None:
    model = linkedout(split, mode)
    feats = make_features(split)
    every_item = torch.arange(split.num_items + 1)
    table_before = feats(every_item).clone()  # (N+1, L, K, D)
    inputs, targets = (torch.from_numpy(a) for a in training_examples(split, 5))
    batch = BatchBuilder(inputs, targets, split.num_items, loss="inbatch_logq", features_fn=feats).build(np.arange(16))
    assert batch.features is not None and not batch.features.requires_grad
    module = LossModule(model, "inbatch_logq", torch.zeros(split.num_items + 1), 1.0).train()
    total, _ = module(batch)
    total.backward()
    grouped = [p for ps in model.param_groups().values() for p in ps]
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all()
    assert batch.features.grad is None
    assert torch.equal(feats(every_item), table_before)
    gate_params = [n for n, p in model.named_parameters() if "gate" in n and p.requires_grad]
    if mode == "uniform":
        assert gate_params == []  # a fixed uniform gate has nothing to learn
    else:
        assert gate_params


def test_optimizer_groups_carry_the_configured_rates(split: SplitData, tmp_path: Path) -> None:
    cfg = quick_cfg(lr_video=2e-4, lr_head=3e-5)
    trainer = Trainer(linkedout(split), split, make_features(split), cfg, tmp_path)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["video"]["lr"] == 2e-4 and groups["head"]["lr"] == 3e-5
    assert groups["video"]["weight_decay"] == 0.1
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("/no_decay"))
    assert all(p.ndim < 2 for n, g in groups.items() if n.endswith("/no_decay") for p in g["params"])


# ---------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss", ["inbatch_logq", "bpr", "full_softmax"])
def test_training_reduces_the_loss(split: SplitData, tmp_path: Path, loss: str) -> None:
    cfg = quick_cfg(epochs=12, loss=loss, lr_id=1e-2, lr_head=1e-2, weight_decay=0.0, log_every=1,
                    eval_every=12, early_stopping_patience=0)
    result = Trainer(sasrec(split), split, None, cfg, tmp_path).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "step"]
    per_epoch = len(losses) // 12
    first, last = np.mean(losses[:per_epoch]), np.mean(losses[-per_epoch:])
    assert last < 0.7 * first, (first, last)
    assert result.best_metric is not None and result.best_metric > 0.3  # the walk is learnable
    assert result.steps == len(losses) and result.epochs_completed == 12


def test_linkedout_model_trains_end_to_end_with_real_evaluator(split: SplitData, tmp_path: Path) -> None:
    cfg = quick_cfg(epochs=2, lr_video=1e-3)
    result = Trainer(linkedout(split), split, make_features(split), cfg, tmp_path).fit()
    records = read_metrics(tmp_path)
    step = next(r for r in records if r["kind"] == "step")
    assert set(step) >= {"kind", "epoch", "step", "loss", "lr", "seq_per_s", "eta_s", "time"}
    assert set(step["lr"]) == {"video", "head"}
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert "NDCG@10" in epochs[0]["valid"] and "HR@10" in epochs[0]["valid"]
    assert all(r["loss"] > 0 and r["seq_per_s"] > 0 and r["eta_s"] >= 0 for r in epochs)
    assert epochs[-1]["eta_s"] == 0
    assert result.best_checkpoint is not None and Path(result.best_checkpoint).is_file()
    assert any((tmp_path / "tb").iterdir())
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == result.steps


def test_checkpoint_alone_rebuilds_the_model(split: SplitData, tmp_path: Path) -> None:
    model = sasrec(split)
    Trainer(model, split, None, quick_cfg(epochs=1), tmp_path).fit()
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["model_config"]["kind"] == "sasrec_id" and ckpt["train_config"]["epochs"] == 1
    rebuilt = load_model_from_checkpoint(tmp_path / "checkpoints" / "last.pt")
    model.eval()
    rebuilt.eval()
    hist = torch.tensor([[0, 1, 2, 3, 4]])
    items = torch.arange(1, split.num_items + 1)
    with torch.no_grad():
        a = model.score(model.last_state(model.encode_items(hist[0]).emb[None], hist > 0), model.encode_items(items).emb)
        b = rebuilt.score(rebuilt.last_state(rebuilt.encode_items(hist[0]).emb[None], hist > 0),
                          rebuilt.encode_items(items).emb)
    assert torch.equal(a, b)


def test_popularity_is_evaluated_not_trained(split: SplitData, tmp_path: Path) -> None:
    model = build_model(ModelConfig(kind="popularity", d_model=8), split.num_items, split.item_counts)
    result = Trainer(model, split, None, quick_cfg(), tmp_path).fit()
    assert not result.trained and result.steps == 0
    assert result.best_metric is not None and (tmp_path / "checkpoints" / "best.pt").is_file()
    assert [r["kind"] for r in read_metrics(tmp_path)] == ["epoch"]


def test_early_stopping_after_patience(split: SplitData, tmp_path: Path) -> None:
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    cfg = quick_cfg(epochs=6, early_stopping_patience=2, max_steps_per_epoch=1)
    result = Trainer(sasrec(split), split, None, cfg, tmp_path, evaluate_fn=lambda *a: {"NDCG@10": next(scores)}).fit()
    assert result.stopped_early and result.epochs_completed == 3
    assert result.best_epoch == 1 and result.best_metric == 0.5
    # a finished run is not trained again
    again = Trainer(sasrec(split), split, None, cfg, tmp_path, evaluate_fn=lambda *a: {"NDCG@10": 1.0}).fit()
    assert again.steps == result.steps and again.stopped_early


def test_trainer_rejects_mismatched_model_and_missing_features(split: SplitData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="item_features"):
        Trainer(linkedout(split), split, None, quick_cfg(), tmp_path)
    other = build_model(ModelConfig(kind="sasrec_id", d_model=16), split.num_items + 1)
    with pytest.raises(ValueError, match="num_items"):
        Trainer(other, split, None, quick_cfg(), tmp_path)
    with pytest.raises(ValueError, match=r"TrainConfig\.max_history"):
        Trainer(sasrec(split), split, None, quick_cfg(max_history=6), tmp_path)


# ------------------------------------------------------------------------------------------- resume


class Killed(Exception):
    pass


@pytest.mark.parametrize("loss", ["inbatch_logq", "bpr"])
def test_resume_after_kill_is_exact(split: SplitData, tmp_path: Path, loss: str) -> None:
    # dropout > 0 and BPR negatives: the RNG states and the seeded sampling must both be restored
    cfg = quick_cfg(epochs=2, loss=loss, checkpoint_every=1, lr_id=1e-2, lr_head=1e-2)
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    stub = {"evaluate_fn": lambda *a: {"NDCG@10": 0.0}}
    full = Trainer(sasrec(split, dropout=0.3), split, None, cfg, full_dir, **stub)  # type: ignore[arg-type]
    full.fit()
    steps_per_epoch = full.steps_per_epoch
    kill_at = steps_per_epoch + 1  # mid-way through epoch 2

    def kill(trainer: Trainer, step: int) -> None:
        if step == kill_at:
            raise Killed

    with pytest.raises(Killed):
        Trainer(sasrec(split, dropout=0.3), split, None, cfg, killed_dir, on_step=kill, **stub).fit()  # type: ignore[arg-type]
    result = Trainer(sasrec(split, dropout=0.3), split, None, cfg, killed_dir, **stub).fit()  # type: ignore[arg-type]

    def step_losses(d: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_metrics(d) if r["kind"] == "step"}

    a, b = step_losses(full_dir), step_losses(killed_dir)
    assert sorted(b) == sorted(a) == list(range(1, 2 * steps_per_epoch + 1))
    for s in range(kill_at + 1, 2 * steps_per_epoch + 1):
        assert math.isclose(a[s], b[s], rel_tol=0, abs_tol=1e-7), (s, a[s], b[s])
    assert result.steps == 2 * steps_per_epoch
    sa = load_checkpoint(full_dir / "checkpoints" / "last.pt")["model_state"]
    sb = load_checkpoint(killed_dir / "checkpoints" / "last.pt")["model_state"]
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=0, atol=1e-7), k


def test_dataclass_state_is_plain_data() -> None:
    from linkedout.training.trainer import TrainState

    assert json.loads(json.dumps(dataclasses.asdict(TrainState())))["step"] == 0


def _rows(run_dir: Path) -> list[tuple[str, int, int]]:
    return [(r["kind"], r["epoch"], r["step"]) for r in read_metrics(run_dir)]


@pytest.mark.parametrize("where", ["mid-epoch", "after-the-epoch-row"])
def test_a_resumed_run_logs_every_row_once(split: SplitData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           where: str) -> None:
    cfg = quick_cfg(epochs=3)  # checkpoints at epoch ends only
    stub = {"evaluate_fn": lambda *a: {"NDCG@10": 0.0}}
    full = Trainer(sasrec(split), split, None, cfg, tmp_path / "full", **stub)  # type: ignore[arg-type]
    full.fit()
    spe = full.steps_per_epoch
    run = tmp_path / "killed"
    if where == "mid-epoch":  # killed after logging steps of epoch 2, before its checkpoint
        def kill(_trainer: Trainer, step: int) -> None:
            if step == spe + 2:
                raise Killed

        with pytest.raises(Killed):
            Trainer(sasrec(split), split, None, cfg, run, on_step=kill, **stub).fit()  # type: ignore[arg-type]
    else:  # killed after the epoch-2 row was written, before last.pt was saved
        real_save = Trainer._save

        def save(self: Trainer, path: Path, rank_rng: Any = None) -> None:
            if path == self.last_path and self.state.epoch == 2:
                raise Killed
            real_save(self, path, rank_rng)

        monkeypatch.setattr(Trainer, "_save", save)
        with pytest.raises(Killed):
            Trainer(sasrec(split), split, None, cfg, run, **stub).fit()  # type: ignore[arg-type]
        monkeypatch.setattr(Trainer, "_save", real_save)
        assert ("epoch", 2, 2 * spe) in _rows(run)
    Trainer(sasrec(split), split, None, cfg, run, **stub).fit()  # type: ignore[arg-type]
    assert _rows(run) == _rows(tmp_path / "full")  # each step and epoch once, in order


def test_a_finished_untrained_model_is_not_logged_twice(split: SplitData, tmp_path: Path) -> None:
    cfg = ModelConfig(kind="popularity")
    for _ in range(2):
        Trainer(build_model(cfg, split.num_items, split.item_counts), split, None, quick_cfg(), tmp_path).fit()
    assert [r["kind"] for r in read_metrics(tmp_path)] == ["epoch"]


def test_the_training_log_gives_the_whole_run_eta(split: SplitData, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cfg = quick_cfg(epochs=4, early_stopping_patience=0)
    with caplog.at_level("INFO", logger="linkedout.training.trainer"):
        Trainer(sasrec(split), split, None, cfg, tmp_path).fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 4
    assert "epoch 1/4" in lines[0] and "run ETA" in lines[0] and "(3 epochs left" in lines[0]
    assert "(0 epochs left" in lines[-1] and "run ETA 0 s" in lines[-1]
    epochs = [r for r in read_metrics(tmp_path) if r["kind"] == "epoch"]
    assert epochs[0]["eta_s"] > 0 and epochs[-1]["eta_s"] == 0


def test_resuming_another_model_is_refused_naming_the_difference(split: SplitData, tmp_path: Path) -> None:
    from linkedout.training.checkpoint import CheckpointError

    Trainer(sasrec(split), split, None, quick_cfg(epochs=1), tmp_path).fit()
    torch.manual_seed(0)
    other = build_model(ModelConfig(kind="sasrec_id", d_model=32, sequence=SequenceConfig(
        max_history=5, num_layers=1, num_heads=2, ffn_dim=32)), split.num_items, split.item_counts)
    with pytest.raises(CheckpointError, match=r"another model.*d_model: 16 -> 32.*another run directory"):
        Trainer(other, split, None, quick_cfg(epochs=2), tmp_path).fit()
