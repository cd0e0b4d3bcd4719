"""A shard store kept in step with its dataset: retries of changed files, one dataset per store,
decode workers, bit flips caught, the failure summary."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from linkedout.data.microlens import load_microlens
from linkedout.data.synth import SynthConfig, generate
from linkedout.extraction import BackboneConfig, ExtractionConfig, extract_dataset, load_backbone
from linkedout.extraction.backbone import Backbone
from linkedout.extraction.prefetch import DecodeJob, decode_stream
from linkedout.shards import FeatureReader, ShardStoreError, StoreMismatch
from linkedout.shards.manifest import list_shards, read_manifest
from linkedout.shards.verify import verify_store

CFG = ExtractionConfig(layers=(0, 4), num_frames=2, frame_size=56, tokens=8, text_tokens=2, batch_size=4,
                       shard_size=4, decode_workers=0)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone(BackboneConfig(tiny_image_size=56, device="cpu"))


def _synth(root: Path, seed: int = 0) -> Path:
    return generate(root, SynthConfig.preset("toy", seed=seed, num_videos=12, num_users=30, num_topics=3, video_size=32,
                                             num_frames=4, max_interactions_per_user=8, workers=0))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "data")
    return tmp_path / "data"


def _shard_files(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "shards").glob("*.npy")}


def test_a_failed_video_is_retried_once_its_file_changes(tiny: Backbone, data: Path, pristine: Path,
                                                         tmp_path: Path) -> None:
    ds = load_microlens(data)
    broken = ds.item_ids[5]
    good = ds.video_path(broken).read_bytes()
    ds.video_path(broken).write_bytes(b"not a video" * 50)
    store = tmp_path / "features"
    first = extract_dataset(ds, store, CFG, tiny)
    assert set(first.failed) == {broken}
    doc = json.loads((store / "failures.json").read_text())  # the failure summary beside the features
    assert doc["failed"] == 1 and doc["videos"] == 12 and broken in doc["reasons"]
    assert doc["by_reason"] == {"InvalidDataError": 1}

    # unchanged: a re-run tries nothing again
    files = _shard_files(store)
    again = extract_dataset(ds, store, CFG, tiny)
    assert again.encoded == 0 and set(again.failed) == {broken} and _shard_files(store) == files

    # fixed: the re-run extracts it (and nothing else), and the store has every video
    ds.video_path(broken).write_bytes(good)
    fixed = extract_dataset(ds, store, CFG, tiny)
    assert fixed.retried == [broken] and fixed.encoded == 1 and fixed.failed == {}
    reader = FeatureReader(store)
    assert broken in reader and reader.failed == {}
    assert json.loads((store / "failures.json").read_text())["failed"] == 0
    clean = extract_dataset(load_microlens(pristine), tmp_path / "clean", CFG, tiny)
    assert clean.failed == {}
    np.testing.assert_array_equal(reader.get(broken), FeatureReader(tmp_path / "clean").get(broken))


def test_retry_failed_retries_every_failed_video(tiny: Backbone, data: Path, tmp_path: Path) -> None:
    ds = load_microlens(data)
    missing = ds.item_ids[2]
    moved = tmp_path / "moved.mp4"
    shutil.move(ds.video_path(missing), moved)
    store = tmp_path / "features"
    assert set(extract_dataset(ds, store, CFG, tiny).failed) == {missing}
    again = extract_dataset(ds, store, CFG, tiny, retry_failed=True)  # still missing: tried, fails again
    assert again.retried == [missing] and set(again.failed) == {missing}
    shutil.move(moved, ds.video_path(missing))  # the file appears: a change, retried without the flag
    assert extract_dataset(ds, store, CFG, tiny).failed == {}


def test_a_changed_video_is_extracted_again_and_its_shard_keeps_the_other_rows(tiny: Backbone, data: Path,
                                                                              tmp_path: Path) -> None:
    ds = load_microlens(data)
    store = tmp_path / "features"
    extract_dataset(ds, store, CFG, tiny)
    before = FeatureReader(store)
    target = ds.item_ids[1]
    shard = before._index.locations[target][0]
    neighbours = [v for v in read_manifest(before.storage, shard).ids if v != target]
    kept = {v: before.get(v) for v in neighbours}
    ds.video_path(target).write_bytes(ds.video_path(ds.item_ids[9]).read_bytes())  # other content
    redo = extract_dataset(ds, store, CFG, tiny)
    assert redo.changed == [target] and redo.encoded == 1
    after = FeatureReader(store)
    for v, f in kept.items():
        np.testing.assert_array_equal(after.get(v), f)  # rows copied as stored, not re-extracted
    np.testing.assert_array_equal(after.get(target), after.get(ds.item_ids[9]))
    assert verify_store(store, catalog=ds.item_ids).ok


def test_a_store_of_another_dataset_is_refused_and_force_replaces_it(tiny: Backbone, data: Path,
                                                                      tmp_path: Path) -> None:
    store = tmp_path / "features"
    extract_dataset(load_microlens(data), store, CFG, tiny)
    ids_before = sorted(FeatureReader(store).ids)
    other = _synth(tmp_path / "other", seed=5)  # same prefix, same ids, other videos
    with pytest.raises(StoreMismatch, match=r"another dataset.*hold other content.*--force"):
        extract_dataset(load_microlens(other), store, CFG, tiny)
    assert sorted(FeatureReader(store).ids) == ids_before  # nothing appended, nothing redone
    renamed = tmp_path / "renamed"
    shutil.copytree(data, renamed)
    for p in renamed.glob("MicroLens-synth_*"):
        p.rename(p.with_name(p.name.replace("MicroLens-synth", "MicroLens-2")))
    with pytest.raises(StoreMismatch, match=r"holds features of dataset 'MicroLens-synth'.*not of 'MicroLens-2'"):
        extract_dataset(load_microlens(renamed), store, CFG, tiny)
    replaced = extract_dataset(load_microlens(other), store, CFG, tiny, replace=True)
    assert replaced.encoded == 12
    fresh = tmp_path / "fresh"
    extract_dataset(load_microlens(other), fresh, CFG, tiny)
    a, b = FeatureReader(store), FeatureReader(fresh)
    np.testing.assert_array_equal(a.get_many(b.ids), b.get_many(b.ids))


def test_another_extraction_config_is_refused_with_the_way_out(tiny: Backbone, data: Path, tmp_path: Path) -> None:
    store = tmp_path / "features"
    extract_dataset(load_microlens(data), store, CFG, tiny)
    with pytest.raises(StoreMismatch, match=r"tokens: 8 != 6.*--force"):
        extract_dataset(load_microlens(data), store, dataclasses.replace(CFG, tokens=6), tiny)


def test_decode_workers_give_the_features_of_in_process_decoding(tiny: Backbone, data: Path, tmp_path: Path) -> None:
    ds = load_microlens(data)
    extract_dataset(ds, tmp_path / "inline", CFG, tiny)
    extract_dataset(ds, tmp_path / "workers", dataclasses.replace(CFG, decode_workers=2), tiny)
    a, b = FeatureReader(tmp_path / "inline"), FeatureReader(tmp_path / "workers")
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.get_many(a.ids), b.get_many(a.ids))


def test_a_crashing_decoder_process_fails_its_video_only() -> None:
    from decode_helpers import crash_on_7

    jobs = [DecodeJob(str(i), f"/none/{i}.mp4", 1, 2) for i in range(1, 11)]
    out = list(decode_stream(jobs, workers=2, window=4, decode_fn=crash_on_7))
    assert [d.video_id for d in out] == [j.video_id for j in jobs]  # in order, none lost
    assert [d.video_id for d in out if d.frames is None] == ["7"]
    assert "crashed" in str(out[6].error)


def test_a_decoder_crash_while_the_consumer_is_busy_fails_its_video_only() -> None:
    """The pool breaks between two pulls (while the backbone runs): the next refill must recover too."""
    import time

    from decode_helpers import crash_on_7

    jobs = [DecodeJob(str(i), f"/none/{i}.mp4", 1, 2) for i in range(6, 12)]
    stream = decode_stream(jobs, workers=2, window=3, decode_fn=crash_on_7)
    out = [next(stream)]  # video 6; video 7 kills its worker meanwhile
    time.sleep(3)  # the backbone encoding video 6
    out += list(stream)
    assert [d.video_id for d in out] == [j.video_id for j in jobs]
    assert [d.video_id for d in out if d.frames is None] == ["7"] and "crashed" in str(out[1].error)


def test_workers_decode_the_next_videos_while_the_current_one_is_encoded(tmp_path: Path) -> None:
    import time

    from decode_helpers import mark_done

    jobs = [DecodeJob(str(i), str(tmp_path), 1, 2) for i in range(8)]
    stream = decode_stream(jobs, workers=2, window=4, decode_fn=mark_done)
    first = next(stream)  # the consumer (the backbone) now holds video 0 and decodes nothing itself
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.done"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    ahead = sorted(int(p.stem) for p in tmp_path.glob("*.done"))
    assert ahead[:4] == [0, 1, 2, 3] and len(ahead) <= 5  # decoded ahead, up to the window (+ the one taken)
    assert str(os.getpid()) not in {p.read_text() for p in tmp_path.glob("*.done")}  # in worker processes
    rest = list(stream)
    assert [first.video_id, *(d.video_id for d in rest)] == [j.video_id for j in jobs]


def test_a_bit_flip_is_caught_by_verify_and_by_the_first_read(tiny: Backbone, data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from linkedout.cli import main

    ds = load_microlens(data)
    store = tmp_path / "features"
    extract_dataset(ds, store, CFG, tiny)
    assert main(["features", "verify", str(store), "--data", str(data)]) == 0
    victim = read_manifest(FeatureReader(store).storage, 1)
    path = store / victim.files["data"].key
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x10  # one bit, inside the values (the .npy header is intact, the size unchanged)
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["features", "verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert "shard-00001.data.npy" in out and "sha256" in out
    with pytest.raises(ShardStoreError, match=r"checksum mismatch.*shard-00001"):
        FeatureReader(store).get(victim.ids[0])  # the first read from local disk checks it too
    # --repair marks the shard for re-extraction; the next extraction redoes it and the store is sound
    assert main(["features", "verify", str(store), "--repair"]) == 1
    assert 1 not in list_shards(FeatureReader(store).storage)
    redo = extract_dataset(ds, store, CFG, tiny)
    assert redo.encoded == len(victim.ids)
    assert main(["features", "verify", str(store), "--data", str(data)]) == 0


def test_an_interrupted_extraction_with_workers_resumes_to_the_same_features(tiny: Backbone, data: Path,
                                                                             tmp_path: Path) -> None:
    ds = load_microlens(data)
    cfg = dataclasses.replace(CFG, decode_workers=2)

    def interrupt(shard: int, _manifest: object) -> None:
        if shard == 0:
            raise KeyboardInterrupt  # Ctrl-C while the workers decode the next shard's videos

    with pytest.raises(KeyboardInterrupt):
        extract_dataset(ds, tmp_path / "f", cfg, tiny, on_shard_written=interrupt)
    assert list_shards(FeatureReader(tmp_path / "f").storage) == [0]
    resumed = extract_dataset(ds, tmp_path / "f", cfg, tiny)
    assert resumed.complete and resumed.shards_skipped == 1
    extract_dataset(ds, tmp_path / "whole", CFG, tiny)
    a, b = FeatureReader(tmp_path / "f"), FeatureReader(tmp_path / "whole")
    np.testing.assert_array_equal(a.get_many(b.ids), b.get_many(b.ids))


@pytest.mark.integration
def test_decode_workers_exit_when_their_parent_is_killed_outright(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    tests = Path(__file__).parent
    script = (f"import sys; sys.path[:0] = [{str(tests)!r}, {str(tests.parent)!r}]\n"
              "from decode_helpers import sleepy\n"
              "from linkedout.extraction.prefetch import DecodeJob, decode_stream\n"
              f"jobs = [DecodeJob(str(i), {str(tmp_path)!r}, 1, 2) for i in range(4)]\n"
              "next(decode_stream(jobs, 2, 4, sleepy))\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited
        except (ProcessLookupError, FileNotFoundError):
            return False

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "decode workers outlived their killed parent"
