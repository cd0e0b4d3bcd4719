"""decode_frames: uniform sampling, resize, repeats for short videos, typed errors for bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import av
import numpy as np
import pytest

from linkedout.extraction.video import VideoDecodeError, decode_frames, sample_indices


def write_gray_video(path: Path, levels: list[int], width: int = 64, height: int = 48, fps: int = 10) -> Path:
    """An H.264 mp4 whose frame ``i`` is uniformly gray at ``levels[i]``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for level in levels:
            img = np.full((height, width, 3), level, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_levels(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1)


def test_sample_indices_uniform_with_ends_and_repeats() -> None:
    assert sample_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert sample_indices(1, 3).tolist() == [0, 0, 0]
    short = sample_indices(3, 8)
    assert short[0] == 0 and short[-1] == 2 and sorted(short.tolist()) == short.tolist()
    assert set(short.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="num_available"):
        sample_indices(0, 4)


def test_decode_samples_uniformly_and_resizes(tmp_path: Path) -> None:
    video = write_gray_video(tmp_path / "ramp.mp4", [20 * i for i in range(10)])
    frames = decode_frames(video, num_frames=4, size=32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    # Frames 0, 3, 6, 9 of the ramp (H.264 is lossy: a few levels of slack).
    np.testing.assert_allclose(frame_levels(frames), [0, 60, 120, 180], atol=6)


def test_decode_repeats_frames_of_a_short_video(tmp_path: Path) -> None:
    video = write_gray_video(tmp_path / "short.mp4", [60, 120, 180])
    frames = decode_frames(video, num_frames=8, size=16)
    assert frames.shape == (8, 16, 16, 3)
    levels = frame_levels(frames)
    assert np.all(np.diff(levels) > -3), "frames must stay in time order"
    np.testing.assert_allclose(levels[[0, -1]], [60, 180], atol=6)
    assert levels.min() > 40, "a short video is repeated, never padded with blank frames"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="file not found") as info:
        decode_frames(tmp_path / "nope.mp4")
    assert info.value.path.endswith("nope.mp4")


@pytest.mark.parametrize("content", [b"", b"this is not a video" * 50], ids=["empty", "garbage"])
def test_unreadable_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError) as info:
        decode_frames(path)
    assert "bad.mp4" in str(info.value)


def test_truncated_file(tmp_path: Path) -> None:
    video = write_gray_video(tmp_path / "full.mp4", [10 * i for i in range(20)])
    data = video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4"):
        decode_frames(cut)


def test_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        decode_frames(path)


def test_error_is_a_picklable_value_error() -> None:
    err = VideoDecodeError("/data/v.mp4", "no video stream")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason) == ("/data/v.mp4", "no video stream")
    assert str(back) == str(err)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_frames"):
        decode_frames(tmp_path / "x.mp4", num_frames=0)
    with pytest.raises(ValueError, match="size"):
        decode_frames(tmp_path / "x.mp4", size=0)
