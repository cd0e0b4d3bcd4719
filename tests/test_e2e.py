"""The main job end to end on a toy dataset: the ``linkedout`` pipeline through kfp.local (synth ->
extract -> Feast -> split -> train -> evaluate -> report -> export -> local Triton + KServe -> a
gRPC query).

This is what the README's first command runs (at the ``small`` preset); here the toy preset with
2 frames per video and 2 epochs. It starts the real servers (``integration``).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from linkedout.extraction.extractor import ExtractionConfig
from pipelines.local import run_main_job as run_all

pytestmark = pytest.mark.integration


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img" and any(k == "src" and (v or "").startswith("data:image/png;base64,") for k, v in attrs):
            self.images += 1


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    run_all(work, preset="toy", epochs=2, variants=("linkedout", "sasrec_id", "popularity", "uniform"),
            extraction=ExtractionConfig(num_frames=2, batch_size=8, shard_size=16))
    return work


def test_main_job_serves_its_model_and_answers_a_grpc_query(workdir: Path) -> None:
    from linkedout.export import Catalog

    catalog = Catalog.load(workdir / "model_repository" / "linkedout_ranker" / "1")
    assert catalog.meta["source"]["variant"] == "linkedout"  # the first variant is the one served
    assert (workdir / "feast" / "feature_store.yaml").is_file()
    assert (workdir / "serving" / "transformer.log").is_file()
    assert not (workdir / "serving" / "stack.json").exists()  # the stack was stopped after the query
    log = (workdir / "serving" / "requests.jsonl").read_text().splitlines()
    answer = json.loads(log[-1])
    assert answer["model_version"] == "linkedout_ranker:1" and len(answer["items"]) == 10


def test_main_job_writes_every_stage(workdir: Path) -> None:
    assert any((workdir / "data").glob("*_pairs.csv"))
    assert (workdir / "features" / "index.json").is_file()
    index = json.loads((workdir / "features" / "index.json").read_text())
    assert index  # every video has a row
    for variant in ("linkedout", "sasrec_id", "popularity", "uniform"):
        run = workdir / "runs" / variant
        ev = json.loads((run / "eval.json").read_text())
        assert 0.0 <= ev["full"]["overall"]["HR@10"] <= 1.0
        assert ev["full"]["n_users"]["overall"] == ev["full"]["n_users"]["warm"] + ev["full"]["n_users"]["cold"]
    assert (workdir / "runs" / "linkedout" / "checkpoints" / "best.pt").is_file()


def test_report_holds_metrics_and_heatmaps(workdir: Path) -> None:
    html = (workdir / "report.html").read_text()
    summary = json.loads((workdir / "summary.json").read_text())
    assert {row["model"] for row in summary} == {"LinkedOut (MoE)", "SASRec (IDs)", "Popularity",
                                                 "uniform layer average"}
    for row in summary:
        assert row["model"] in html
    parser = _Imgs()
    parser.feed(html)
    assert parser.images >= 3  # training curves, the three-panel heatmap, per-layer shares
    assert "L8" in html and "L20" in html  # heatmap columns are the kept layers
    # the configuration as tables: the extraction, every run's model and training settings
    assert "<h3>Feature extraction</h3>" in html and "tokens per layer K" in html and "<h3>Training</h3>" in html
    # the toy catalogue (50 videos) is smaller than the sampled protocol's 1 + 100: said, not a copied table
    assert "the catalogue has 50 videos" in html


def test_rerun_skips_finished_stages(workdir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (workdir / "features").rglob("*.npy")}
    ckpt = workdir / "runs" / "linkedout" / "checkpoints" / "best.pt"
    ckpt_mtime = ckpt.stat().st_mtime_ns
    versions_before = sorted(p.name for p in (workdir / "model_repository" / "linkedout_ranker").iterdir())
    run_all(workdir, preset="toy", epochs=2, variants=("linkedout", "sasrec_id", "popularity", "uniform"),
            extraction=ExtractionConfig(num_frames=2, batch_size=8, shard_size=16))
    assert {p: p.stat().st_mtime_ns for p in (workdir / "features").rglob("*.npy")} == before
    assert ckpt.stat().st_mtime_ns == ckpt_mtime
    # the same checkpoint is not exported again
    assert sorted(p.name for p in (workdir / "model_repository" / "linkedout_ranker").iterdir()) == versions_before
