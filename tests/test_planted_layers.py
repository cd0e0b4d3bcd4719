"""The layer gate finds the informative layer where layers differ (bench/planted_layers.py at tiny size).

Each planted video carries its topic in one layer only (which one depends on the video's kind, seen
at L0) and random decoy topics, drawn afresh at every read, in the others. The MoE must beat the uniform layer average and every single
layer, and its per-video gate must put its mass on each video's informative layer.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("planted_layers", ROOT / "bench" / "planted_layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["planted_layers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


pl = _bench()
TINY = pl.PlantedConfig(videos=96, users=400, topics=12, layers=3, tokens=4, hidden=16, seed=0)


def test_planted_features_carry_the_topic_in_the_informative_layer_only() -> None:
    p = pl.make_planted(TINY)
    f = p.features[1:].mean(dim=2).numpy()  # (N, L, D) token means: prototype (+ marker at L0)
    topics, inf = p.topics[1:], p.informative[1:]
    assert p.features.shape == (TINY.videos + 1, TINY.layers, TINY.tokens, TINY.hidden)
    assert np.bincount(inf).min() == TINY.videos // TINY.layers  # every layer informative for some videos
    # remove what every video of a kind shares at a layer (the kind marker at L0)
    x = f - np.stack([f[inf == g].mean(axis=0) for g in range(TINY.layers)])[inf]  # (N, L, D)
    rows = np.arange(len(inf))
    informative = x[rows, inf]  # (N, D) each video's informative layer
    cent = np.stack([informative[topics == t].mean(axis=0) for t in range(TINY.topics)])  # (T, D)
    # a nearest-centroid probe of the topic works on the informative layer and fails on the others
    for layer in range(TINY.layers):
        on = inf == layer
        pred = (x[:, layer] @ cent.T).argmax(axis=1)
        assert (pred[on] == topics[on]).mean() > 0.9
        assert (pred[~on] == topics[~on]).mean() < 0.2
    assert p.split.num_items == TINY.videos and len(p.split.test.targets) == TINY.users


def test_moe_beats_uniform_and_every_single_layer_and_its_gate_finds_the_layer(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    result = pl.run_experiment(TINY, [0], tmp_path, epochs=40, d_model=16, batch_size=64)
    s = {v: {k: d["mean"] for k, d in row.items()} for v, row in result["summary"].items()}
    moe = s["linkedout"]
    others = [v for v in s if v != "linkedout"]
    assert set(others) == {"uniform", "layer:0", "layer:1", "layer:2"}
    for v in others:  # a clear margin over every alternative
        assert moe["HR@10"] >= s[v]["HR@10"] + 0.15, (v, s)
        assert moe["NDCG@10"] >= s[v]["NDCG@10"] + 0.15, (v, s)
    # most of each video's gate mass is on its informative layer (chance: 1/3)
    assert moe["gate_share_informative"] > 0.7, moe
    assert moe["gate_argmax_informative"] > 0.8, moe
    assert moe["contrib_argmax_informative"] > 0.8, moe


@pytest.mark.parametrize("field,value", [("decoys", "none"), ("marker_layers", "last"), ("videos", 10)])
def test_bad_planted_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match="PlantedConfig"):
        pl.PlantedConfig(**{**vars(TINY), field: value})
