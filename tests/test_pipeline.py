"""Stage functions of the main job: reproducible seeds, refusing half-built inputs, and bad videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from linkedout import pipeline
from linkedout.data.microlens import load_microlens
from linkedout.data.synth import SynthConfig, generate
from linkedout.extraction.extractor import ExtractionConfig, extract_dataset

FAST = ExtractionConfig(layers=(0, 4, 8), num_frames=2, tokens=8, text_tokens=2, batch_size=8, shard_size=8,
                        decode_workers=0)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root, SynthConfig.preset("toy", num_videos=20, num_users=40, num_topics=3, video_size=32, max_interactions_per_user=12,
                                      num_frames=4, workers=0))
    return root


def test_same_seed_same_model(data: Path, tmp_path: Path) -> None:
    results = [pipeline.train_variant(data, None, tmp_path / f"r{i}", "sasrec_id", seed=7, epochs=2)
               for i in range(2)]
    assert results[0]["best_metric"] == results[1]["best_metric"]
    a = torch.load(tmp_path / "r0" / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "r1" / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_incomplete_feature_store_is_refused(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "features"
    extract_dataset(load_microlens(data), store, FAST, max_shards=1)  # 20 videos, 3 shards: 1 written
    with pytest.raises(ValueError, match="incomplete"):
        pipeline.build_split(data, str(store))


def test_missing_and_corrupt_videos_are_recorded_and_dropped(data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    ds = load_microlens(broken)
    missing, corrupt = ds.item_ids[3], ds.item_ids[5]
    ds.video_path(missing).unlink()
    ds.video_path(corrupt).write_bytes(b"garbage" * 100)

    store = tmp_path / "features"
    summary = pipeline.extract(broken, store, (FAST, None))
    assert set(summary.failed) == {missing, corrupt}
    split = pipeline.build_split(broken, str(store), cache_dir=tmp_path / "split")
    assert missing not in split.item_ids and corrupt not in split.item_ids
    assert split.num_items == len(ds.item_ids) - 2
    assert json.loads((tmp_path / "split" / "fingerprint.json").read_text())["stage"] == "split"


def test_evaluate_without_a_checkpoint_names_the_run(data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pipeline.evaluate_run(data, None, tmp_path / "never-trained")


def test_variants_parse() -> None:
    assert pipeline.parse_variant("layer:2").single_layer == 2
    assert pipeline.parse_variant("last_layer").mode == "single"
    with pytest.raises(ValueError, match="layer:N"):
        pipeline.parse_variant("layer:-1")


def test_multimodal_variant_trains_on_titles_and_covers(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "features"
    pipeline.extract(data, store, (FAST, None))
    run = tmp_path / "mm"
    pipeline.train_variant(data, str(store), run, "multimodal", epochs=1)
    ev = pipeline.evaluate_run(data, str(store), run)
    assert ev["model"] == "LinkedOut + title + cover"
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert state["title_tokens"][1:].gt(0).any()  # every real title hashed into the checkpoint
    assert state["title_tokens"][0].eq(0).all()  # padding row empty
    assert state["covers"][1:].float().std() > 0  # real cover pixels, not a black placeholder
