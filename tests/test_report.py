"""Layer contributions and the self-contained HTML report."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from linkedout.data.split import EvalSet
from linkedout.evaluation.encode import item_table
from linkedout.evaluation.evaluate import evaluate
from linkedout.interpret.contributions import contributions_from_arrays, layer_contributions
from linkedout.interpret.report import write_report
from linkedout.interpret.runs import load_run, read_metrics_jsonl, write_eval_json
from linkedout.model.base import ItemEncoding, Recommender

L, K, D, DIM, N = 4, 3, 5, 6, 25


class GatedRecommender(Recommender):
    """A tiny MoE-like item tower: one linear expert per layer, a softmax gate over layers."""

    needs_features = True

    def __init__(self, num_items: int = N) -> None:
        super().__init__()
        self.num_items = num_items
        self.experts = nn.Parameter(torch.randn(L, D, DIM))  # (L, D, d)
        self.gate = nn.Linear(D, 1)

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        assert features is not None
        summary = features.mean(dim=2)  # (M, L, D)
        h = torch.einsum("mld,lde->mle", summary, self.experts)  # (M, L, d)
        pi = torch.softmax(self.gate(summary).squeeze(-1), dim=-1)  # (M, L)
        return ItemEncoding(emb=(pi.unsqueeze(-1) * h).sum(1), gate=pi, layer_outputs=h)

    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        return history_emb.cumsum(dim=1)  # causal


class IdOnly(Recommender):
    def __init__(self) -> None:
        super().__init__()
        self.num_items = N
        self.table = nn.Parameter(torch.randn(N + 1, DIM))

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        return ItemEncoding(emb=self.table[item_idx])

    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        return history_emb


FEATS = torch.randn(N + 1, L, K, D, generator=torch.Generator().manual_seed(0)) * torch.arange(1, L + 1).view(1, L, 1, 1)


def item_features(idx: Tensor) -> Tensor:
    return FEATS[idx]  # (M, L, K, D)


def test_contributions_by_hand() -> None:
    gate = np.array([[0.5, 0.5], [0.2, 0.8]])
    norms = np.array([[1.0, 3.0], [2.0, 0.1]])
    c = contributions_from_arrays(gate, norms, layer_names=["L0", "L8"])
    np.testing.assert_allclose(c.contrib[0], [0.25, 0.75])
    np.testing.assert_allclose(c.contrib[1], [0.4 / 0.48, 0.08 / 0.48])
    np.testing.assert_allclose(c.diff[0], [-0.25, 0.25])
    np.testing.assert_allclose(c.share_pct, [(0.25 + 0.4 / 0.48) * 50, (0.75 + 0.08 / 0.48) * 50])
    np.testing.assert_allclose(c.gate_pct, [35.0, 65.0])
    assert c.item_idx.tolist() == [1, 2]
    # all-zero norms: contribution falls back to the gate (difference 0)
    z = contributions_from_arrays(np.array([[0.3, 0.7]]), np.zeros((1, 2)))
    np.testing.assert_allclose(z.diff, 0.0)
    with pytest.raises(ValueError, match="item 1"):
        contributions_from_arrays(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="layer_names"):
        contributions_from_arrays(gate, norms, layer_names=["a"])


def test_layer_contributions_rows_sum_to_one_and_diff_to_zero() -> None:
    model = GatedRecommender()
    c = layer_contributions(model, item_features, layer_names=[f"L{4 * i}" for i in range(L)], batch_size=7)
    assert c.gate.shape == c.contrib.shape == c.diff.shape == (N, L)
    np.testing.assert_allclose(c.gate.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(c.contrib.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(c.diff.sum(1), 0.0, atol=1e-6)
    assert c.share_pct.sum() == pytest.approx(100.0)
    assert c.layer_names == ["L0", "L4", "L8", "L12"]
    # the same rows from a precomputed table and from a subset
    table = item_table(model, item_features, batch_size=4)
    sub = layer_contributions(model, item_features, [3, 7], table=table)
    np.testing.assert_allclose(sub.contrib, c.contrib[[2, 6]], atol=1e-6)
    direct = layer_contributions(model, item_features, [3, 7])
    np.testing.assert_allclose(direct.contrib, c.contrib[[2, 6]], atol=1e-6)
    with pytest.raises(ValueError, match=r"1\.\.25"):
        layer_contributions(model, item_features, [0])
    with pytest.raises(ValueError, match="no gate"):
        layer_contributions(IdOnly(), None)


def _has_external_links(page: str) -> list[str]:
    found: list[str] = []

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            for k, v in attrs:
                if k in ("src", "href") and v and not v.startswith("data:"):
                    found.append(f"{tag} {k}={v[:40]}")

    P().feed(page)
    return found


def _images(page: str) -> list[bytes]:
    imgs: list[bytes] = []

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            src = dict(attrs).get("src")
            if tag == "img" and src and src.startswith("data:image/png;base64,"):
                imgs.append(base64.b64decode(src.split(",", 1)[1]))

    P().feed(page)
    return imgs


def _write_run(root: Path, name: str, hr: float, group: str) -> Path:
    model = GatedRecommender()
    rng = np.random.default_rng(1)

    es = EvalSet(
        user_ids=[f"u{i}" for i in range(6)],
        histories=rng.integers(0, N + 1, size=(6, 3)).astype(np.int64),
        targets=rng.integers(1, N + 1, size=6).astype(np.int64),
        cold=np.array([True, False, False, True, False, False]),
    )
    result = evaluate(model, es, item_features, sampled_negatives=5, ks=(5, 10, 20))
    run = root / name
    write_eval_json(run / "eval.json", result, model=name, params=1234, seed=42, extra={"group": group})
    rec = json.loads((run / "eval.json").read_text())
    rec["full"]["overall"]["HR@10"] = hr  # distinct values so the best one is known
    (run / "eval.json").write_text(json.dumps(rec))
    lines = []
    for epoch in range(3):
        lines.append({"kind": "step", "epoch": epoch, "step": epoch * 2, "loss": 2.0 - epoch, "lr": {"head": 1e-3},
                      "seq_per_s": 100.0, "eta_s": 1.0, "time": 0.0})
        lines.append({"kind": "epoch", "epoch": epoch, "step": epoch * 2 + 1, "loss": 1.5 - epoch * 0.3,
                      "valid": {"HR@10": 0.1 * epoch, "NDCG@10": 0.05 * epoch}, "time": 0.0})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return run


def test_load_run_reads_eval_and_logs(tmp_path: Path) -> None:
    run = load_run(_write_run(tmp_path, "LinkedOut", 0.5, "model"))
    assert run.name == "LinkedOut" and run.eval is not None and run.eval["params"] == 1234
    assert run.eval["schema"] == 1 and run.eval["full"]["n_users"] == {"overall": 6, "warm": 4, "cold": 2}
    assert len(run.logs) == 6
    # a torn last line (run still writing) is dropped; a broken middle line is an error naming the line
    p = tmp_path / "LinkedOut" / "metrics.jsonl"
    p.write_text(p.read_text() + '{"kind": "st')
    assert len(read_metrics_jsonl(p)) == 6
    p.write_text('{"kind": "step"}\nnot json\n{"kind": "step"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics_jsonl(p)
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "missing")


def test_report_is_self_contained_with_values_and_figures(tmp_path: Path) -> None:
    runs = [
        load_run(_write_run(tmp_path, "SASRec (IDs)", 0.25, "baseline")),
        load_run(_write_run(tmp_path, "LinkedOut", 0.8125, "model")),
    ]
    model = GatedRecommender()
    contrib = layer_contributions(model, item_features, layer_names=["L0", "L4", "L8", "L12"])
    counts = np.arange(N + 1)
    out = write_report(
        tmp_path / "report" / "index.html",
        title="LinkedOut <test>",
        metrics_rows=runs,
        training_logs={r.name: r.logs for r in runs},
        contributions=contrib,
        dataset_summary={"users": 6, "items": N, "split": {"max_history": 10}},
        notes=["tiny run", "see <docs>"],
        config={"lr": 1e-4},
        item_labels=[""] + [f"vid{i}" for i in range(1, N + 1)],
        item_counts=counts,
        heatmap_videos=10,
    )
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert _has_external_links(page) == []
    assert "http://" not in page and "https://" not in page
    imgs = _images(page)
    assert len(imgs) == 3  # training curves, the three-panel heatmap, the per-layer share bars
    assert all(b.startswith(b"\x89PNG") for b in imgs)
    # the best HR@10 is bold, the other is not; escaped user text
    assert '<td class="best">0.8125</td>' in page
    assert "<td>0.2500</td>" in page
    assert "LinkedOut &lt;test&gt;" in page and "see &lt;docs&gt;" in page
    # model rows come before baselines; the sampled table and the layer table are there
    assert page.index(">LinkedOut</td>") < page.index(">SASRec (IDs)</td>")
    assert "Sampled protocol" in page and "N = 5" in page
    assert f"{contrib.share_pct[2]:.1f} %" in page
    assert "split.max_history" not in page and ">users<" in page  # readable rows, not dotted keys
    assert "vid25" not in page  # row labels live inside the PNG, not the HTML


def test_report_without_optional_sections(tmp_path: Path) -> None:
    out = write_report(tmp_path / "r.html", title="empty", metrics_rows=[])
    page = out.read_text()
    assert "No evaluated runs" in page and _images(page) == []
    with pytest.raises(ValueError, match="'model' name"):
        write_report(tmp_path / "r.html", title="x", metrics_rows=[{"full": {}}])


def test_eval_json_schema_is_checked_and_unevaluated_runs_are_left_out(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "LinkedOut", 0.5, "model")
    rec = json.loads((run / "eval.json").read_text())
    assert {"schema", "model", "params", "seed", "full", "sampled", "settings", "group"} <= set(rec)
    rec["schema"] = 99
    (run / "eval.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="schema 99"):
        load_run(run)
    (run / "eval.json").unlink()
    logs_only = load_run(run)
    assert logs_only.eval is None and logs_only.name == "LinkedOut"
    page = write_report(tmp_path / "r.html", title="t", metrics_rows=[logs_only],
                        training_logs={logs_only.name: logs_only.logs}).read_text()
    assert "No evaluated runs" in page and len(_images(page)) == 1
    with pytest.raises(ValueError, match="clash"):
        write_eval_json(tmp_path / "e.json", {"full": {}}, model="m", params=1, seed=0, extra={"seed": 1})


def test_the_dataset_and_configuration_section_is_readable_tables(tmp_path: Path) -> None:
    import pandas as pd

    from linkedout.data.stats import dataset_stats
    from linkedout.model import ModelConfig
    from linkedout.model.config import FusionConfig
    from linkedout.shards import FeatureSpec
    from linkedout.training import TrainConfig

    rows = [(f"u{u}", str(1 + (u + t) % N), 1000 * t) for u in range(12) for t in range(6)]
    stats = dataset_stats(pd.DataFrame(rows, columns=["user", "item", "timestamp"]))
    spec = FeatureSpec.paper(hidden=3584).to_dict()
    lo = {"variant": "linkedout", "num_items": N, "train": TrainConfig(seed=7, lr_video=2e-4).to_dict(),
          "model": ModelConfig(kind="linkedout", fusion=FusionConfig(num_layers=6, tokens=64, in_dim=3584)).to_dict()}
    ids = {"variant": "sasrec_id", "num_items": N, "train": TrainConfig(seed=7).to_dict(),
           "model": ModelConfig(kind="sasrec_id").to_dict()}
    runs = [load_run(_write_run(tmp_path, "LinkedOut", 0.5, "model"))]
    out = write_report(tmp_path / "r.html", title="t", metrics_rows=runs, dataset_summary=stats,
                       extraction={**spec, "videos": N, "failed": 1, "store": "/x/features"},
                       run_configs={"LinkedOut (MoE)": lo, "SASRec (IDs)": ids})
    page = out.read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", " ", page)
    for fact in ("Feature extraction", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "L0, L4, L8, L12, L16, L20 (6)",
                 "tokens per layer K", "3,584", "float16", "8 at 224 x 224 px", "Which objects appear?",
                 "Models", "Training", "seed", "0.0002 / 0.0001 / 0.0001", "inbatch_logq", "moe",
                 "users", "interactions per user (min / median / mean / max)", "cold-start test targets"):
        assert fact in text, fact
    assert "sequence_length.histogram" not in page and "split.cold_test_fraction" not in page  # no key dump
    # one column per run, "–" where a setting does not apply (no fusion for the ID model)
    fusion_row = re.search(r'<td class="name">layer fusion</td><td>(.*?)</td><td>(.*?)</td>', page)
    assert fusion_row is not None and fusion_row.groups() == ("moe", "–")


def test_the_sampled_table_is_replaced_by_a_note_when_the_catalogue_is_smaller_than_n(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "LinkedOut", 0.5, "model")  # sampled_negatives=5 over a catalogue of N = 25
    big = write_report(tmp_path / "a.html", title="t", metrics_rows=[load_run(run)]).read_text()
    assert "Sampled protocol — target vs. uniformly sampled negatives" in big
    rec = json.loads((run / "eval.json").read_text())
    rec["num_items"] = 5  # a catalogue of 5 videos: 1 + 5 candidates hold every video
    (run / "eval.json").write_text(json.dumps(rec))
    small = write_report(tmp_path / "b.html", title="t", metrics_rows=[load_run(run)]).read_text()
    assert "Sampled protocol — target" not in small
    assert "the catalogue has 5 videos" in small and "ranks exactly as the full-catalogue one" in small
