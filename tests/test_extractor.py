"""LinkedOut extraction: early exit, token compression, config validation, sharded resumable runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from linkedout.data.microlens import MicroLensDataset, load_microlens
from linkedout.data.synth import SynthConfig, generate
from linkedout.extraction import (
    BackboneConfig,
    ExtractionConfig,
    LinkedOutExtractor,
    decode_frames,
    extract_dataset,
    find_spans,
    load_backbone,
    pooling_weights,
    segment_pool,
)
from linkedout.extraction.backbone import Backbone
from linkedout.extraction.compress import compress
from linkedout.extraction.extractor import feature_spec
from linkedout.shards import FeatureReader, ShardStoreError

SMALL: dict[str, Any] = dict(num_frames=2, frame_size=56, tokens=8, text_tokens=2)


def frames(seed: int = 0, batch: int = 2, num_frames: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, num_frames, 56, 56, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone(BackboneConfig(tiny_image_size=56, device="cpu"))


# ---------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"layers": ()}, "layers"),
        ({"layers": (4, 0)}, "layers"),
        ({"layers": (-1, 4)}, "layers"),
        ({"prompts": ()}, "prompts"),
        ({"prompts": ("ok", " ")}, "prompts"),
        ({"tokens": 0}, "tokens"),
        ({"tokens": 8, "text_tokens": 8}, "text_tokens"),
        ({"num_frames": 0}, "num_frames"),
        ({"batch_size": 0}, "batch_size"),
        ({"shard_size": 0}, "shard_size"),
        ({"dtype": "bfloat16"}, "dtype"),
        ({"decode_workers": -1}, "decode_workers"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"ExtractionConfig.{field}"):
        ExtractionConfig(**kwargs)


def test_config_defaults_and_json_round_trip() -> None:
    cfg = ExtractionConfig()
    assert cfg.layers == (0, 4, 8, 12, 16, 20) and cfg.tokens == 64 and cfg.num_frames == 8
    assert len(cfg.prompts) == 3 and cfg.dtype == "float16" and cfg.early_exit
    back = ExtractionConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg


def test_layers_must_exist_in_the_backbone(tiny: Backbone) -> None:
    with pytest.raises(ValueError, match=r"ExtractionConfig.layers \[25\]"):
        LinkedOutExtractor(tiny, ExtractionConfig(layers=(0, 25), **SMALL))
    LinkedOutExtractor(tiny, ExtractionConfig(layers=(0, 24), **SMALL))


# ------------------------------------------------------------------------------------ early exit


def full_forward_hidden_states(
    tiny: Backbone, extractor: LinkedOutExtractor, video: np.ndarray
) -> tuple[torch.Tensor, ...]:
    ids = tiny.prompt_ids(extractor.cfg.prompts, video.shape[1])
    with torch.inference_mode():
        out = tiny.model(  # the full model, LM head included, as HF runs it
            input_ids=ids[None].expand(len(video), -1),
            pixel_values_videos=tiny.pixel_values(video),
            output_hidden_states=True,
        )
    return tuple(out.hidden_states)


@pytest.mark.parametrize("layers", [(0, 4, 8, 12, 16, 20), (3, 24), (0,)])
def test_early_exit_states_equal_the_full_forward(tiny: Backbone, layers: tuple[int, ...]) -> None:
    video = frames()
    extractor = LinkedOutExtractor(tiny, ExtractionConfig(layers=layers, **SMALL))
    kept = extractor.kept_hidden_states(video)  # (B, L, T, D)
    reference = full_forward_hidden_states(tiny, extractor, video)
    assert len(reference) == tiny.num_layers + 1
    for i, layer in enumerate(layers):
        torch.testing.assert_close(kept[:, i], reference[layer], rtol=0, atol=1e-6)


def test_early_exit_skips_the_deeper_layers(tiny: Backbone) -> None:
    calls: list[int] = []
    handles = [layer.register_forward_hook(lambda *_a, i=i: calls.append(i))
               for i, layer in enumerate(tiny.model.model.language_model.layers)]
    norm_calls: list[int] = []
    handles.append(tiny.model.model.language_model.norm.register_forward_hook(lambda *_a: norm_calls.append(1)))
    try:
        video = frames()
        cfg = ExtractionConfig(layers=(0, 4, 8), **SMALL)
        early = LinkedOutExtractor(tiny, cfg).encode(video)
        assert calls == list(range(8)) and not norm_calls  # decoder layers 1..8 only, no final norm
        calls.clear()
        full = LinkedOutExtractor(tiny, dataclasses.replace(cfg, early_exit=False)).encode(video)
        assert calls == list(range(tiny.num_layers)) and norm_calls
    finally:
        for handle in handles:
            handle.remove()
    np.testing.assert_array_equal(early, full)


# ---------------------------------------------------------------------------------------- encode


def test_encode_shape_and_batch_independence(tiny: Backbone) -> None:
    cfg = ExtractionConfig(**SMALL)
    extractor = LinkedOutExtractor(tiny, cfg)
    video = frames(batch=3)
    feats = extractor.encode(video)
    assert feats.shape == (3, 6, 8, 64) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    alone = extractor.encode(video[1:2])
    np.testing.assert_allclose(feats[1:2], alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats[0], feats[1]), "different videos give different features"


def test_encode_any_number_of_frames(tiny: Backbone) -> None:
    extractor = LinkedOutExtractor(tiny, ExtractionConfig(**SMALL))
    for num_frames in (1, 3):
        assert extractor.encode(frames(num_frames=num_frames, batch=1)).shape == (1, 6, 8, 64)


def test_prompts_change_the_deep_features_not_the_video_embeddings(tiny: Backbone) -> None:
    video = frames(batch=1)
    a = LinkedOutExtractor(tiny, ExtractionConfig(layers=(0, 8), **SMALL)).encode(video)
    cfg_b = ExtractionConfig(layers=(0, 8), prompts=("Who is in it?",), **SMALL)
    b = LinkedOutExtractor(tiny, cfg_b).encode(video)
    video_bins = SMALL["tokens"] - SMALL["text_tokens"]
    # L0 video tokens are the projected frames, whatever the prompt; the prompt bins and deeper layers differ.
    np.testing.assert_allclose(a[0, 0, :video_bins], b[0, 0, :video_bins], atol=1e-6)
    assert not np.allclose(a[0, 0, video_bins:], b[0, 0, video_bins:])


# ----------------------------------------------------------------------------------- compression


def test_segment_pool_is_an_ordered_mean() -> None:
    pool = segment_pool(10, 4)  # (4, 10)
    torch.testing.assert_close(pool.sum(dim=1), torch.ones(4))
    assert (pool > 0).sum().item() == 10, "each token lands in exactly one bin"
    ramp = torch.arange(10.0)
    means = pool @ ramp
    assert torch.all(means[1:] > means[:-1])
    torch.testing.assert_close(means, torch.tensor([0.5, 3.0, 5.5, 8.0]))
    short = segment_pool(3, 7) @ torch.arange(3.0)  # fewer tokens than bins: repeats, in order
    assert short.tolist() == sorted(short.tolist()) and set(short.tolist()) == {0.0, 1.0, 2.0}


def test_spans_and_pooling_skip_template_tokens() -> None:
    video, end = 9, 7
    ids = torch.tensor([5, 1, video, video, video, video, 2, 3, 4, end, 6, 1])
    spans = find_spans(ids, video, end)
    assert (spans.video_start, spans.video_end, spans.text_start, spans.text_end) == (2, 6, 6, 9)
    weights = pooling_weights(spans, len(ids), video_bins=2, text_bins=1)  # (3, 12)
    hidden = torch.arange(12.0)[None, :, None].repeat(2, 1, 3)  # (B=2, T=12, D=3), value = position
    out = compress(hidden, weights)  # (2, 3, 3)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([2.5, 4.5, 7.0]))
    assert weights[:, [0, 1, 9, 10, 11]].abs().sum() == 0
    with pytest.raises(ValueError, match="not contiguous"):
        find_spans(torch.tensor([video, 1, video, 3, end]), video, end)
    with pytest.raises(ValueError, match="no video token"):
        find_spans(torch.tensor([1, 2, end]), video, end)


# ------------------------------------------------------------------------------------ dataset run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[MicroLensDataset, str]:
    root = tmp_path_factory.mktemp("synth")
    synth = SynthConfig.preset("toy", num_videos=7, num_users=3, num_interactions=15, num_topics=2,
                               min_interactions_per_user=5, max_interactions_per_user=5, video_size=32,
                               num_frames=4, workers=0)
    generate(root, synth)
    data = load_microlens(root)
    corrupt = data.item_ids[2]
    data.video_path(corrupt).write_bytes(b"\x00not an mp4" * 64)
    return data, corrupt


def test_extract_dataset_resumes_and_reports_corrupt_videos(tiny: Backbone, dataset: tuple[MicroLensDataset, str], tmp_path: Path) -> None:
    data, corrupt = dataset
    cfg = ExtractionConfig(layers=(0, 4, 8), shard_size=3, batch_size=2, decode_workers=1, **SMALL)
    store = tmp_path / "features"
    ids = sorted(data.item_ids, key=int)
    assert len(ids) == 7  # shards: 3 + 3 + 1

    # 1) stop after one shard (a batch job with a shard budget)
    first = extract_dataset(data, store, cfg, tiny, max_shards=1)
    assert (first.shards, first.shards_written, first.complete) == (3, 1, False)

    # 2) a run killed right after writing its first shard
    class Killed(Exception):
        pass

    def kill(shard: int, _manifest: object) -> None:
        raise Killed(shard)

    with pytest.raises(Killed):
        extract_dataset(data, store, cfg, tiny, on_shard_written=kill)
    done_before = {p.name: p.stat().st_mtime_ns for p in (store / "shards").glob("shard-0000[01].*")}

    # 3) the resumed run computes only the last shard
    written: list[int] = []
    summary = extract_dataset(data, store, cfg, tiny, on_shard_written=lambda s, _m: written.append(s))
    assert written == [2] and summary.complete
    assert (summary.shards_skipped, summary.shards_written, summary.encoded) == (2, 1, 1)
    assert {p.name: p.stat().st_mtime_ns for p in (store / "shards").glob("shard-0000[01].*")} == done_before

    # Every good video has exactly one row; the corrupt one none, with its reason.
    reader = FeatureReader(store)
    assert sorted(reader.ids, key=int) == [i for i in ids if i != corrupt]
    assert len(reader.ids) == len(set(reader.ids)) == 6
    assert corrupt not in reader and set(reader.failed) == {corrupt} and set(summary.failed) == {corrupt}
    assert "InvalidDataError" in reader.failed[corrupt]
    assert reader.spec.layers == (0, 4, 8) and reader.spec.tokens == 8 and reader.spec.hidden == 64
    assert reader.spec.prompts == cfg.prompts and reader.spec.backbone == tiny.name
    assert reader.spec.compression == cfg.compression == "segment_mean(video=6,text=2)"

    # The stored rows are the extractor's features of the decoded videos (float16 storage).
    probe = [ids[0], ids[6]]
    video = np.stack([decode_frames(data.video_path(i), cfg.num_frames, cfg.frame_size) for i in probe])
    expected = LinkedOutExtractor(tiny, cfg).encode(video)
    np.testing.assert_allclose(reader.get_many(probe), expected, rtol=2e-3, atol=2e-3)

    # A different extraction config never mixes into this store.
    with pytest.raises(ShardStoreError, match="another extraction config"):
        extract_dataset(data, store, dataclasses.replace(cfg, tokens=4, text_tokens=1), tiny)


def test_extract_dataset_int8(tiny: Backbone, dataset: tuple[MicroLensDataset, str], tmp_path: Path) -> None:
    data, corrupt = dataset
    cfg = ExtractionConfig(layers=(0, 4), shard_size=4, batch_size=4, decode_workers=0, dtype="int8", **SMALL)
    summary = extract_dataset(data, tmp_path / "int8", cfg, tiny)
    assert summary.complete and summary.encoded == 6 and summary.failed.keys() == {corrupt}
    reader = FeatureReader(tmp_path / "int8")
    keep = [i for i in data.item_ids if i != corrupt][:2]
    video = np.stack([decode_frames(data.video_path(i), cfg.num_frames, cfg.frame_size) for i in keep])
    expected = LinkedOutExtractor(tiny, cfg).encode(video)
    got = reader.get_many(keep)
    bound = np.abs(expected).max(axis=-1, keepdims=True) / 254 + 1e-6  # int8 per-row error bound
    assert np.all(np.abs(got - expected) <= bound)


def test_catalogue_changes_extract_only_new_videos(tiny: Backbone, dataset: tuple[MicroLensDataset, str], tmp_path: Path) -> None:
    data, corrupt = dataset
    cfg = ExtractionConfig(layers=(0, 4), shard_size=2, batch_size=2, decode_workers=0, **SMALL)
    store = tmp_path / "features"
    ids = sorted(data.item_ids, key=int)

    class Catalogue:
        def __init__(self, item_ids: list[str]) -> None:
            self.item_ids = item_ids

        def video_path(self, item: str) -> Path:
            return data.video_path(item)

    first = extract_dataset(Catalogue(ids[1:4]), store, cfg, tiny)  # 3 videos: shards 0, 1
    assert (first.shards, first.shards_written) == (2, 2)
    written = {p.name: p.stat().st_mtime_ns for p in (store / "shards").glob("*")}

    # new videos (one older by id than all extracted ones) go to a new shard; nothing is redone
    grown = extract_dataset(Catalogue(ids), store, cfg, tiny)
    assert corrupt in ids[1:4]  # failed in the first run, and not retried
    assert grown.complete and grown.shards_skipped == 2 and grown.encoded == len(ids) - 3
    assert {p.name: p.stat().st_mtime_ns for p in (store / "shards").glob("*") if p.name in written} == written
    reader = FeatureReader(store)
    assert sorted(reader.ids, key=int) == [i for i in ids if i != corrupt]
    assert corrupt in reader.failed

    # a smaller catalogue recomputes nothing; every video it still holds stays readable
    shrunk = extract_dataset(Catalogue(ids[:2]), store, cfg, tiny)
    assert shrunk.complete and shrunk.encoded == 0
    assert set(ids[:2]) - {corrupt} <= set(FeatureReader(store).ids)


def test_spec_records_the_backbone_precision(tiny: Backbone) -> None:
    spec = feature_spec(tiny, ExtractionConfig(layers=(0, 4), **SMALL))
    assert spec.backbone_dtype == "float32"  # the tiny backbone runs in float32 on the CPU
    bf16 = dataclasses.replace(spec, backbone_dtype="bfloat16")
    assert bf16 != spec  # so a bf16 GPU run cannot append rows to a float32 store
