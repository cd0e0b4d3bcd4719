"""Fingerprints: stable digests, readable differences, cheap and exact video identity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linkedout.fingerprint import (
    Fingerprint,
    StageMismatch,
    read_fingerprint,
    same_video,
    video_source,
    write_fingerprint,
)


def test_digest_is_canonical_and_diff_is_readable() -> None:
    a = Fingerprint("training", {"train": {"seed": 42, "epochs": 10}, "split": "ab" * 32})
    b = Fingerprint("training", {"split": "ab" * 32, "train": {"epochs": 10, "seed": 42}})
    assert a.digest == b.digest  # key order does not matter
    c = Fingerprint("training", {"train": {"seed": 43, "epochs": 10}, "split": "cd" * 32, "new": 1})
    assert a.diff(c) == ["new: (absent) -> 1", "split: abababababab -> cdcdcdcdcdcd", "train.seed: 42 -> 43"]
    with pytest.raises(StageMismatch, match=r"W/runs/x holds training made from other inputs .*train.seed: 42 -> 43.*"
                                            r"Use --force"):
        c.check(a, "W/runs/x", "Use --force.")
    assert c.check(None, "W", "") is False and a.check(b, "W", "") is True


def test_fingerprints_round_trip_and_a_damaged_one_counts_as_none(tmp_path: Path) -> None:
    fp = Fingerprint("split", {"dataset": {"prefix": "M"}})
    write_fingerprint(tmp_path, fp)
    assert read_fingerprint(tmp_path) == fp
    write_fingerprint(tmp_path / "eval.json", fp)
    assert (tmp_path / "eval.fingerprint.json").is_file()
    (tmp_path / "fingerprint.json").write_text("{not json")
    assert read_fingerprint(tmp_path) is None


def test_a_video_is_the_same_when_only_touched_or_copied_and_changed_when_its_content_is(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 1000 + b"tail")
    rec = video_source(video)
    assert same_video(rec, video)
    os.utime(video, ns=(1, 1))  # touched (or copied without its mtime): the sampled hash decides
    assert same_video(rec, video)
    video.write_bytes(b"y" * 1000 + b"tail")  # same size, other content
    assert not same_video(rec, video)
    video.unlink()
    gone = video_source(video)
    assert gone == {"missing": True} and not same_video(rec, video) and same_video(gone, video)
    video.write_bytes(b"z")
    assert not same_video(gone, video)  # a missing file that appears is a change
    assert same_video(None, video)  # nothing recorded (an older store): taken as the same
