"""Stages reused only when their inputs match: a work directory made with another dataset, seed or
epochs is refused (or, with force, redone), never silently reported.

The tests that run the main job (``run_all``: the ``linkedout`` pipeline through kfp.local, a dozen
task processes a run, eight runs here) are ``slow``; ``tests/test_pipeline_local.py`` checks the
same refusals through the ``extract`` and ``train_and_deploy`` pipelines in the default run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from linkedout.data.synth import SynthConfig, generate
from linkedout.extraction.extractor import ExtractionConfig
from linkedout.fingerprint import StageMismatch, read_fingerprint
from linkedout.job.dataset import dataset_digest, ensure_dataset
from linkedout.job.extraction import extract
from linkedout.job.split import build_split
from linkedout.job.step import StepFailed
from linkedout.job.training import train_variant
from linkedout.shards import FeatureReader
from pipelines.local import run_main_job as run_all

FAST = ExtractionConfig(layers=(0, 4), num_frames=2, tokens=8, text_tokens=2, batch_size=8, shard_size=8,
                        decode_workers=0)
VARIANTS = ("sasrec_id", "popularity")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _synth(root: Path, seed: int = 0) -> Path:
    return generate(root, SynthConfig.preset("toy", seed=seed, num_videos=16, num_users=40, num_topics=3,
                                             video_size=32, num_frames=4, max_interactions_per_user=10, workers=0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth(tmp_path_factory.mktemp("d1"))


@pytest.fixture(scope="module")
def first_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("first") / "w"
    run_all(work, data=dataset, epochs=1, variants=VARIANTS, extraction=FAST, stop_after="report")
    return work


@pytest.fixture
def workdir(first_run: Path, tmp_path: Path) -> Path:
    """A work directory made by one run of the main job (a copy per test, mtimes kept)."""
    shutil.copytree(first_run, tmp_path / "w")
    return tmp_path / "w"


def _eval(work: Path, variant: str = "sasrec_id") -> dict:
    return json.loads((work / "runs" / variant / "eval.json").read_text())


@pytest.mark.slow
def test_the_same_inputs_reuse_every_stage(dataset: Path, workdir: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in [*workdir.rglob("*.pt"), *workdir.rglob("eval.json"),
                                                 workdir / "report.html", *workdir.glob("features/shards/*")]}
    run_all(workdir, data=dataset, epochs=1, variants=VARIANTS, extraction=FAST, stop_after="report")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    for variant in VARIANTS:
        fp = read_fingerprint(workdir / "runs" / variant)
        assert fp is not None and fp.stage == "training" and fp.inputs["train"]["seed"] == 42


@pytest.mark.slow
@pytest.mark.parametrize(("change", "difference"), [({"seed": 43}, "train.seed: 42 -> 43"),
                                                    ({"epochs": 2}, "train.epochs: 1 -> 2")])
def test_another_seed_or_epochs_is_refused_not_reported_stale(dataset: Path, workdir: Path, change: dict,
                                                              difference: str) -> None:
    before = _eval(workdir)
    kwargs = {"data": dataset, "epochs": 1, "variants": VARIANTS, "extraction": FAST, **change}
    with pytest.raises(StepFailed, match="--force") as info:  # the plan-training step's own StageMismatch
        run_all(workdir, **kwargs)
    assert info.value.step == "plan-training" and info.value.error_type == "StageMismatch"
    assert difference in str(info.value) and "sasrec_id" in str(info.value)
    assert _eval(workdir) == before  # the old results stay, unreported as new ones
    run_all(workdir, force=True, **kwargs)
    after = _eval(workdir)
    assert after["seed"] == change.get("seed", 42)
    assert read_fingerprint(workdir / "runs" / "sasrec_id").inputs["train"]["epochs"] == change.get("epochs", 1)


@pytest.mark.slow
def test_another_dataset_is_refused_and_its_videos_are_not_appended(dataset: Path, workdir: Path,
                                                                    tmp_path: Path) -> None:
    ids = sorted(FeatureReader(workdir / "features").ids)
    other = _synth(tmp_path / "d2", seed=9)  # the same layout, prefix and ids; other videos and users
    with pytest.raises(StepFailed, match="another dataset") as info:  # the plan-shards step's StoreMismatch
        run_all(workdir, data=other, epochs=1, variants=VARIANTS, extraction=FAST, stop_after="report")
    assert info.value.step == "plan-shards" and info.value.error_type == "StoreMismatch"
    assert "--force" in str(info.value)
    assert sorted(FeatureReader(workdir / "features").ids) == ids
    run_all(workdir, data=other, epochs=1, variants=VARIANTS, extraction=FAST, force=True, stop_after="report")  # every stage redone
    assert read_fingerprint(workdir / "split").inputs["dataset"] == dataset_digest(other)


def test_training_on_a_feature_store_of_another_dataset_is_refused(dataset: Path, tmp_path: Path) -> None:
    """`train` / `evaluate` read features through the split: another dataset's store is refused there too."""
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.shards.storage import StoreMismatch

    features = str(tmp_path / "features")
    extract(dataset, features, (FAST, BackboneConfig()))
    other = _synth(tmp_path / "d2", seed=9)  # the same layout, prefix and ids; other videos and users
    with pytest.raises(StoreMismatch, match="another dataset"):
        build_split(other, features)
    with pytest.raises(StoreMismatch, match="another dataset"):
        train_variant(other, features, tmp_path / "run", "linkedout", epochs=1)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert build_split(dataset, features).num_items > 0  # its own dataset still trains on it


def test_the_generated_dataset_of_another_preset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from linkedout.data import synth

    tiny = dict(num_videos=6, num_users=3, num_interactions=15, num_topics=2, video_size=16, num_frames=2,
                max_interactions_per_user=5, workers=0)
    monkeypatch.setitem(synth.PRESETS, "tiny", tiny)
    monkeypatch.setitem(synth.PRESETS, "tiny2", {**tiny, "num_videos": 7})
    root = tmp_path / "data"
    ensure_dataset(root, "tiny")
    with pytest.raises(StageMismatch, match=r"num_videos: 6 -> 7.*--force"):
        ensure_dataset(root, "tiny2")
    assert ensure_dataset(root, "tiny2", force=True) == root
    assert json.loads((root / "MicroLens-synth_synth_config.json").read_text())["num_videos"] == 7
    assert len(list((root / "MicroLens-synth_videos").glob("*.mp4"))) == 7  # the old files went
    assert ensure_dataset(root, "tiny2", seed=0) == root  # the same config: reused


def test_the_split_is_rebuilt_when_the_tables_change(dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    first = build_split(data, None, cache_dir=tmp_path / "split")
    pairs = data / "MicroLens-synth_pairs.csv"
    lines = pairs.read_text().splitlines()
    pairs.write_text("\n".join(lines[:-3]) + "\n")  # a user loses their last interactions
    second = build_split(data, None, cache_dir=tmp_path / "split")
    assert second.digest() != first.digest()
    assert build_split(data, None, cache_dir=tmp_path / "split").digest() == second.digest()
