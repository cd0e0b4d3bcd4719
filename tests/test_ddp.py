"""DDP under torchrun (gloo on CPU): two processes take the same optimiser steps as one process.

Equivalence holds when the DDP gradient (mean over ranks of each rank's mean loss) equals the
single-process gradient of the whole global batch: every rank must average over the same number of
terms, none of which depends on the other rank's rows. The test therefore uses ``full_softmax``
(candidates = the whole catalogue, not the local shard as in ``inbatch_logq``), dropout 0, and
users whose training windows are all full (13 interactions, T = 10: one full window each), so both
shards hold the same number of valid positions. Adam's ``eps`` is raised to 1e-3 so that gradients
that are zero in exact arithmetic (attention key biases) but float noise in practice are not
blown up to a full ``lr`` step by Adam's normalisation; the first moments are compared as well.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from linkedout.data.split import SplitData, leave_one_out
from linkedout.model import ModelConfig, SequenceConfig, build_model
from linkedout.training import TrainConfig, Trainer, load_checkpoint
from linkedout.training.ddp import DistContext, init_distributed

REPO = Path(__file__).resolve().parents[1]


def make_split(num_users: int = 16, num_items: int = 30, length: int = 13) -> SplitData:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", str(int(rng.integers(1, num_items + 1))), 1000 * t)
            for u in range(num_users) for t in range(length)]
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    return leave_one_out(df, max_history=10, catalog=[str(i) for i in range(1, num_items + 1)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_single_process_context_without_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext() and ctx.is_main and not ctx.is_distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed("cpu")


@pytest.mark.integration
def test_two_process_ddp_step_equals_single_process_step(tmp_path: Path) -> None:
    split = make_split()
    split_dir = tmp_path / "split"
    split.save(split_dir)
    model_cfg = ModelConfig(kind="sasrec_id", d_model=16,
                            sequence=SequenceConfig(max_history=10, num_layers=1, num_heads=2, ffn_dim=32,
                                                    dropout=0.0))
    train_fields: dict[str, Any] = dict(epochs=1, batch_size=8, max_history=10, loss="full_softmax", device="cpu",
                                        log_every=1, max_steps_per_epoch=2, lr_id=1e-2, lr_head=1e-2,
                                        eval_batch_size=64, eps=1e-3)
    (tmp_path / "model.json").write_text(json.dumps(model_cfg.to_dict()))
    (tmp_path / "train.json").write_text(json.dumps(train_fields))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LINKEDOUT_PROGRESS": "0",
           "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "linkedout.training.distributed", "--split", str(split_dir), "--run-dir", str(tmp_path / "ddp"),
           "--model-config", str(tmp_path / "model.json"), "--train-config", str(tmp_path / "train.json")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["steps"] == 2

    # the same two steps in one process, on the concatenated shards (= the global batches)
    torch.set_num_threads(1)
    cfg = TrainConfig(**train_fields)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, split.num_items, split.item_counts)
    Trainer(model, SplitData.load(split_dir), None, cfg, tmp_path / "single").fit()

    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    assert ddp["state"]["step"] == single["state"]["step"] == 2
    for name, value in single["model_state"].items():
        assert torch.allclose(ddp["model_state"][name], value, rtol=0, atol=1e-6), name
    # Adam's first moment is a running mean of the gradients: equal moments = equal (averaged) gradients
    for key, st in single["optimizer"]["state"].items():
        other = ddp["optimizer"]["state"][key]
        assert torch.allclose(other["exp_avg"], st["exp_avg"], rtol=1e-4, atol=1e-8), key
        assert torch.allclose(other["exp_avg_sq"], st["exp_avg_sq"], rtol=1e-4, atol=1e-10), key
    # each rank's own RNG streams are saved, so every rank resumes where it stopped (not at rank 0's)
    assert len(ddp["rank_rng"]) == 2
    assert not torch.equal(ddp["rank_rng"][0]["torch"], ddp["rank_rng"][1]["torch"])
    assert torch.equal(ddp["rank_rng"][0]["torch"], ddp["rng"]["torch"])
    ddp_losses = [r["loss"] for r in map(json.loads, (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines())
                  if r["kind"] == "step"]
    single_losses = [r["loss"] for r in map(json.loads, (tmp_path / "single" / "metrics.jsonl").read_text()
                                            .splitlines()) if r["kind"] == "step"]
    assert np.allclose(ddp_losses, single_losses, atol=1e-6)
