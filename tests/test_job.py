"""Stage functions of the main job: reproducible seeds, refusing half-built inputs, and bad videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from linkedout.data.microlens import load_microlens
from linkedout.data.synth import SynthConfig, generate
from linkedout.extraction.driver import extract_dataset
from linkedout.extraction.extractor import ExtractionConfig
from linkedout.job.evaluation import evaluate_run
from linkedout.job.extraction import extract
from linkedout.job.split import build_split
from linkedout.job.training import train_variant
from linkedout.job.variants import parse_variant

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
    results = [train_variant(data, None, tmp_path / f"r{i}", "sasrec_id", seed=7, epochs=2)
               for i in range(2)]
    assert results[0]["best_metric"] == results[1]["best_metric"]
    a = torch.load(tmp_path / "r0" / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "r1" / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_incomplete_feature_store_is_refused(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "features"
    extract_dataset(load_microlens(data), store, FAST, max_shards=1)  # 20 videos, 3 shards: 1 written
    with pytest.raises(ValueError, match="incomplete"):
        build_split(data, str(store))


def test_missing_and_corrupt_videos_are_recorded_and_dropped(data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    ds = load_microlens(broken)
    missing, corrupt = ds.item_ids[3], ds.item_ids[5]
    ds.video_path(missing).unlink()
    ds.video_path(corrupt).write_bytes(b"garbage" * 100)

    store = tmp_path / "features"
    summary = extract(broken, store, (FAST, None))
    assert set(summary.failed) == {missing, corrupt}
    split = build_split(broken, str(store), cache_dir=tmp_path / "split")
    assert missing not in split.item_ids and corrupt not in split.item_ids
    assert split.num_items == len(ds.item_ids) - 2
    assert json.loads((tmp_path / "split" / "fingerprint.json").read_text())["stage"] == "split"


def test_evaluate_without_a_checkpoint_names_the_run(data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate_run(data, None, tmp_path / "never-trained")


def test_variants_parse() -> None:
    assert parse_variant("layer:2").single_layer == 2
    assert parse_variant("last_layer").mode == "single"
    with pytest.raises(ValueError, match="layer:N"):
        parse_variant("layer:-1")


def test_multimodal_variant_trains_on_titles_and_covers(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "features"
    extract(data, store, (FAST, None))
    run = tmp_path / "mm"
    train_variant(data, str(store), run, "multimodal", epochs=1)
    ev = evaluate_run(data, str(store), run)
    assert ev["model"] == "LinkedOut + title + cover"
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert state["title_tokens"][1:].gt(0).any()  # every real title hashed into the checkpoint
    assert state["title_tokens"][0].eq(0).all()  # padding row empty
    assert state["covers"][1:].float().std() > 0  # real cover pixels, not a black placeholder


def test_the_report_uses_the_split_it_is_given(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report step passes the split the runs were trained and evaluated on; the report must not build
    another one from the dataset (it did: ``split`` was reset before it was read)."""
    from linkedout.job import report as job_report

    split = build_split(data, None)
    run = tmp_path / "pop"
    train_variant(data, None, run, "popularity", epochs=1, split=split)
    evaluate_run(data, None, run, split=split)

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the report rebuilt the split")

    monkeypatch.setattr(job_report, "build_split", no_rebuild)
    out = job_report.write_html_report([run], tmp_path / "report.html", data=data, split=split)
    assert out.is_file() and "Popularity" in out.read_text()
    with pytest.raises(AssertionError, match="rebuilt"):  # and without one it does build it
        job_report.write_html_report([run], tmp_path / "report2.html", data=data)
