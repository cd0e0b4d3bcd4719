"""The synthetic generator: a valid MicroLens layout, real videos, reproducible, content-driven."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from linkedout.data import DatasetError, leave_one_out, load_microlens, preprocess, validate_microlens
from linkedout.data.synth import SynthConfig, generate, generate_tables, read_synth_topics

PREFIX = "MicroLens-synth"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SynthConfig.preset("toy", seed=3, workers=0)
    return generate(tmp_path_factory.mktemp("toy"), cfg)


def test_toy_dataset_is_a_valid_microlens_layout(toy: Path) -> None:
    report = validate_microlens(toy)  # probes every video with PyAV
    assert report.ok and not report.warnings, report.format()
    d = load_microlens(toy)
    cfg = SynthConfig.preset("toy")
    assert d.prefix == PREFIX
    assert len(d.interactions) == cfg.num_interactions
    assert d.interactions["user"].nunique() == cfg.num_users
    assert len(d.item_ids) == cfg.num_videos
    assert all(i.isdigit() and int(i) > 0 for i in d.item_ids)
    assert d.interactions.groupby("user").size().min() >= cfg.min_interactions_per_user
    assert not d.interactions.duplicated(["user", "item"]).any()  # nobody watches an item twice
    assert (d.interactions.groupby("user")["timestamp"].diff().dropna() > 0).all()
    assert d.titles["title"].str.contains(r"#\w+ #\w+$").all()
    assert len(d.likes_views) == cfg.num_videos and (d.likes_views["likes"] <= d.likes_views["views"]).all()
    assert set(read_synth_topics(toy)) == set(d.item_ids)


def test_videos_decode_to_the_configured_frames(toy: Path) -> None:
    d = load_microlens(toy)
    cfg = SynthConfig.preset("toy")
    for item in d.item_ids[:3]:
        with av.open(str(d.video_path(item))) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == cfg.num_frames
        assert frames[0].shape == (cfg.video_size, cfg.video_size, 3)
        assert np.std(np.stack(frames).astype(np.float32)) > 5  # not a blank video
        assert d.cover_path(item).stat().st_size > 0


def test_same_seed_same_tables_other_seed_different(toy: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", SynthConfig.preset("toy", seed=3), write_videos=False)
    for suffix in ("_pairs.csv", "_titles.csv", "_likes_and_views.txt", "_synth_topics.csv"):
        assert (again / f"{PREFIX}{suffix}").read_bytes() == (toy / f"{PREFIX}{suffix}").read_bytes(), suffix
    other = generate_tables(SynthConfig.preset("toy", seed=4))
    assert not other.pairs.equals(pd.read_csv(toy / f"{PREFIX}_pairs.csv", dtype=str))


def test_videos_are_byte_identical_from_run_to_run(toy: Path, tmp_path: Path) -> None:
    """The same config writes the same mp4 bytes, in one process or across a pool of encoders: before
    x264's assembly was turned off, 1 to 10 of 60 videos came out different from a rerun with 2 workers
    (the same frames, another bitstream), so every rerun trained a slightly different model."""
    cfg = SynthConfig.preset("toy", seed=3, workers=2)
    runs = [generate(tmp_path / name, cfg) for name in ("one", "two")]
    videos = sorted(p.name for p in (toy / f"{PREFIX}_videos").glob("*.mp4"))
    assert len(videos) == cfg.num_videos
    differ = [name for name in videos
              if not all((run / f"{PREFIX}_videos" / name).read_bytes() == (toy / f"{PREFIX}_videos" / name).read_bytes()
                         for run in runs)]
    assert not differ, f"{len(differ)} of {len(videos)} videos differ between runs: {differ[:5]}"


def test_cold_start_items_are_only_last_interactions() -> None:
    cfg = SynthConfig.preset("toy", seed=5, cold_start_fraction=0.2)
    result = generate_tables(cfg)
    cold_ids = {result.item_ids[j] for j in np.flatnonzero(result.cold)}
    assert len(cold_ids) == round(0.2 * cfg.num_videos)
    pairs = result.pairs
    is_last = pairs.groupby("user").cumcount(ascending=False) == 0
    in_cold = pairs["item"].isin(cold_ids)
    assert in_cold.any()  # some test targets are cold
    assert not (in_cold & ~is_last).any()
    split = leave_one_out(preprocess(pairs))
    idx = split.item_index()
    cold_idx = {idx[i] for i in cold_ids if i in idx}
    assert not cold_idx & set(np.concatenate(split.train_sequences).tolist())
    test_cold_items = {int(t) for t in split.test.targets if int(t) in cold_idx}
    assert test_cold_items and all(split.test.cold[split.test.targets == t].all() for t in test_cold_items)


def test_behaviour_is_driven_by_content_topics() -> None:
    cfg = SynthConfig.preset("small", seed=1, num_users=300, num_interactions=2400)
    result = generate_tables(cfg)
    topic = dict(zip(result.item_ids, result.video_topic.tolist()))
    pairs = result.pairs.assign(topic=result.pairs["item"].map(topic))

    def top2_share(df: pd.DataFrame) -> float:
        shares = df.groupby("user")["topic"].apply(lambda t: t.value_counts().iloc[:2].sum() / len(t))
        return float(shares.mean())

    rng = np.random.default_rng(0)
    shuffled = pairs.assign(topic=rng.permutation(pairs["topic"].to_numpy()))  # same popularity, no users
    assert top2_share(pairs) > top2_share(shuffled) + 0.25
    # order matters: consecutive items share a topic more often than items of the same user at random
    same_next = (pairs.groupby("user")["topic"].shift() == pairs["topic"])[pairs.groupby("user").cumcount() > 0]
    same_random = pairs.groupby("user")["topic"].apply(
        lambda t: (t.to_numpy()[:, None] == t.to_numpy()[None, :])[~np.eye(len(t), dtype=bool)].mean())
    assert same_next.mean() > same_random.mean() + 0.05
    # popularity is long-tailed
    counts = pairs["item"].value_counts().to_numpy()
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()


def test_encoding_in_a_process_pool(tmp_path: Path) -> None:
    cfg = SynthConfig.preset("toy", num_videos=6, num_users=4, num_interactions=20, num_topics=2,
                             max_interactions_per_user=5, workers=2)
    root = generate(tmp_path / "pool", cfg)
    assert validate_microlens(root).ok


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"SynthConfig\.video_size"):
        SynthConfig(video_size=63)
    with pytest.raises(ValueError, match=r"SynthConfig\.num_interactions"):
        SynthConfig(num_users=10, num_interactions=10)
    with pytest.raises(ValueError, match=r"SynthConfig\.cold_start_fraction"):
        SynthConfig(cold_start_fraction=0.9)
    with pytest.raises(ValueError, match="unknown synth preset"):
        SynthConfig.preset("huge")
    big = SynthConfig.preset("microlens-100k")
    assert (big.num_videos, big.num_users, big.num_interactions) == (19_738, 100_000, 719_405)
    assert SynthConfig.preset("small", num_users=3000).num_interactions == 24_000


def test_synth_into_a_directory_with_another_dataset_is_refused_up_front(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from linkedout.cli import main

    out = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(out), "--preset", "toy", "--no-videos", "--videos", "30",
                 "--users", "4"]) == 0
    before = sorted(p.name for p in out.iterdir())
    # another prefix would make the directory hold two datasets (unusable): refused, nothing written
    cfg = SynthConfig.preset("toy", num_videos=30, num_users=4, prefix="MicroLens-other")
    with pytest.raises(DatasetError, match="already holds the dataset MicroLens-synth"):
        generate(out, cfg, write_videos=False)
    # the same prefix again: refused too unless --force, which replaces it
    assert main(["data", "synth", "--out", str(out), "--preset", "toy", "--no-videos", "--videos", "25",
                 "--users", "4"]) == 2
    assert "already holds the dataset MicroLens-synth" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(["data", "synth", "--out", str(out), "--preset", "toy", "--no-videos", "--videos", "25",
                 "--users", "4", "--force"]) == 0
    assert len(load_microlens(out, check_videos=False).item_ids) == 25
