"""How much of a synthetic video's latent topic each kept layer carries: a linear probe per layer.

For a store extracted from a ``linkedout data synth`` dataset (which records each video's topic in
``{prefix}_synth_topics.csv``), fits a multinomial logistic regression from each layer's mean video
tokens and mean prompt tokens to the topic on 75 % of the videos and reports accuracy on the rest.
It explains what the fusion gate can and cannot exploit: with a random-weight backbone every layer
carries about the same content, so no layer is worth more than another.

    python bench/probe_layers.py --data runs/demo/data --features runs/demo/features
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from linkedout.data.microlens import find_prefix
from linkedout.data.synth import read_synth_topics
from linkedout.shards import FeatureReader


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, steps: int = 300) -> float:
    """Test accuracy of an L2-regularised softmax regression ``x (N, D) -> y (N,)``."""
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    w = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt[train] @ w + b, yt[train]) + 1e-3 * (w**2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((xt[test] @ w + b).argmax(1) == yt[test]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data"))
    parser.add_argument("--features", default="runs/demo/features")
    parser.add_argument("--out", type=Path, default=Path("bench/results/probe_layers.json"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    reader = FeatureReader(args.features)
    topics = read_synth_topics(args.data, find_prefix(args.data)[0])
    ids = [i for i in reader.ids if i in topics]
    x = reader.get_many(ids)  # (N, L, K, D)
    y = np.array([topics[i] for i in ids])
    perm = np.random.default_rng(args.seed).permutation(len(ids))
    cut = int(0.75 * len(ids))
    train, test = perm[:cut], perm[cut:]
    k_text = int(reader.spec.compression.split("text=")[1].rstrip(")")) if "text=" in reader.spec.compression else 0
    k_video = reader.spec.tokens - k_text
    chance = float(np.bincount(y[test]).max() / len(test))
    rows = []
    print(f"{len(ids)} videos, {int(y.max()) + 1} topics, chance {chance:.3f}")
    print(f"{'layer':>6} {'video tokens':>13} {'prompt tokens':>14}")
    for pos, layer in enumerate(reader.spec.layers):
        video = probe(x[:, pos, :k_video].mean(1), y, train, test)
        text = probe(x[:, pos, k_video:].mean(1), y, train, test) if k_text else float("nan")
        rows.append({"layer": layer, "video_tokens": video, "prompt_tokens": text})
        print(f"{'L' + str(layer):>6} {video:>13.3f} {text:>14.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"videos": len(ids), "chance": chance, "layers": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
