"""decode_frames: uniform sampling, resize, repeats for short videos, typed errors for bad files."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------ seeking, per-video method, rotation


def write_video(path: Path, num: int = 60, width: int = 96, height: int = 64, *, codec: str = "libx264",
                options: dict[str, str] | None = None, fps: int = 25, vfr: bool = False,
                rotation: float | None = None) -> Path:
    """A video whose frames all differ (a moving block on a gray ramp), so a wrong frame shows."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        rng = np.random.default_rng(0)
        t = 0
        for i in range(num):
            img = np.full((height, width, 3), (i * 4) % 256, np.uint8)
            x = (i * 3) % (width - 16)
            img[8:24, x:x + 16] = (255, 40, 40)
            img[:8, :8] = 255  # a marker in the top-left corner (rotation tests)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                t += int(rng.choice([20, 40, 60]))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


ENCODINGS = {
    "h264-bframes-gop12": dict(options={"g": "12", "bf": "3"}),
    "h264-no-bframes-gop10": dict(options={"g": "10", "bf": "0"}),
    "h264-open-gop": dict(options={"g": "15", "x264-params": "open-gop=1"}),
    "h264-vfr": dict(options={"g": "12"}, vfr=True),
    "hevc-gop16": dict(codec="libx265", options={"x265-params": "keyint=16:min-keyint=16:log-level=error"}),
    "vp9-gop12": dict(codec="libvpx-vp9", options={"g": "12", "deadline": "realtime", "cpu-used": "8"}),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
@pytest.mark.parametrize("num_frames", [8, 5])
def test_every_method_gives_the_frames_of_sequential_decoding(tmp_path: Path, name: str, num_frames: int) -> None:
    if ENCODINGS[name].get("codec", "libx264") not in av.codecs_available:
        pytest.skip(f"{ENCODINGS[name]['codec']} not in this FFmpeg build")
    video = write_video(tmp_path / f"{name}.mp4", **ENCODINGS[name])  # type: ignore[arg-type]
    reference = decode_frames(video, num_frames, 32, method="reference")
    for method in ("auto", "seek", "sequential"):
        np.testing.assert_array_equal(decode_frames(video, num_frames, 32, method=method), reference,
                                      err_msg=f"{name}: method {method}")


def test_seeking_decodes_fewer_frames_and_short_clips_decode_sequentially(tmp_path: Path) -> None:
    from linkedout.extraction.video import video_plan

    long = write_video(tmp_path / "long.mp4", num=400, options={"g": "25", "sc_threshold": "0"})
    plan = video_plan(long, 8)
    assert plan.method == "seek" and plan.keyframes == 16
    assert plan.decoded_frames < 0.5 * plan.sequential_frames  # at most ~25 frames per sample
    short = write_video(tmp_path / "short.mp4", num=60, options={"g": "250", "sc_threshold": "0"})  # one key frame
    assert video_plan(short, 8).method == "sequential"


def test_keyframe_sampling_moves_samples_to_nearby_key_frames_only(tmp_path: Path) -> None:
    from linkedout.extraction.video import video_plan

    video = write_video(tmp_path / "v.mp4", num=400, options={"g": "25", "sc_threshold": "0"})
    exact = video_plan(video, 8)
    fast = video_plan(video, 8, sampling="keyframe")
    spacing = (400 - 1) / 7
    assert all(abs(a - b) <= spacing / 2 for a, b in zip(exact.wanted, fast.wanted))
    assert all(w % 25 == 0 for w in fast.wanted[:-1]) and fast.decoded_frames < exact.decoded_frames
    assert len(set(fast.wanted)) == 8  # still 8 distinct frames, in time order
    frames = decode_frames(video, 8, 32, sampling="keyframe")
    reference = decode_frames(video, 400, 32, method="reference")  # every frame
    for j, i in enumerate(fast.wanted):
        np.testing.assert_array_equal(frames[j], reference[i])
    # one key frame only: nothing is near enough, every sample stays exact
    sparse = write_video(tmp_path / "sparse.mp4", num=60, options={"g": "250", "sc_threshold": "0"})
    np.testing.assert_array_equal(decode_frames(sparse, 8, 32, sampling="keyframe"),
                                  decode_frames(sparse, 8, 32, method="reference"))


@pytest.mark.parametrize(("degrees", "turns"), [(90, 1), (-90, 3), (180, 2)])
def test_rotation_metadata_is_honoured(tmp_path: Path, degrees: int, turns: int) -> None:
    upright = write_video(tmp_path / "plain.mp4", num=12, width=64, height=32, options={"g": "4"})
    rotated = write_video(tmp_path / "rotated.mp4", num=12, width=64, height=32, options={"g": "4"},
                          rotation=degrees)
    plain = decode_frames(upright, 4, 32)
    turned = decode_frames(rotated, 4, 32)
    # the display matrix rotates the picture counter-clockwise by `degrees` (FFmpeg's convention,
    # what players and `ffmpeg -autorotate` show): the same pixels, turned
    np.testing.assert_array_equal(turned, np.rot90(plain, turns, axes=(1, 2)))
    corner = {1: (slice(-2, None), slice(0, 2)), 3: (slice(0, 2), slice(-2, None)),
              2: (slice(-2, None), slice(-2, None))}[turns]
    assert turned[0][corner].mean() > 200  # the top-left marker moved where the rotation puts it
    assert turned[0][:2, :2].mean() < 200


def test_decoder_threads_reach_ffmpeg_and_give_the_same_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from linkedout.extraction import video as video_module
    from linkedout.extraction.driver import decode_jobs
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.extraction.prefetch import os as prefetch_os

    path = write_video(tmp_path / "v.mp4", num=60, options={"g": "10"})
    seen: list[tuple[str, int]] = []
    real_open = av.open

    class Spy:  # the container, recording the decoder's threading when decoding starts
        def __init__(self, container: Any) -> None:
            self._container = container

        def __getattr__(self, name: str) -> Any:
            return getattr(self._container, name)

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> Any:
            return self._container.__exit__(*exc)

        def decode(self, *a: object, **k: object) -> Any:
            stream = self._container.streams.video[0]
            seen.append((str(stream.thread_type), stream.codec_context.thread_count))
            return self._container.decode(*a, **k)

    def spying_open(*args: Any, **kwargs: Any) -> Spy:
        return Spy(real_open(*args, **kwargs))

    one = decode_frames(path, 8, 32, method="reference", threads=1)
    monkeypatch.setattr(video_module.av, "open", spying_open)
    three = decode_frames(path, 8, 32, method="reference", threads=3)
    assert seen and all(count == 3 and "AUTO" in kind for kind, count in seen)  # frame and slice threads
    np.testing.assert_array_equal(three, one)
    # the extractor's jobs: --decode-threads when given, else the cores shared among the workers
    monkeypatch.setattr(prefetch_os, "cpu_count", lambda: 8)

    class Dataset:
        def video_path(self, vid: str) -> Path:
            return path

    for workers, threads, expected in ((2, 0, 4), (3, 0, 2), (0, 0, 8), (2, 5, 5)):
        cfg = ExtractionConfig(decode_workers=workers, decode_threads=threads)
        jobs = decode_jobs(Dataset(), ["a", "b"], cfg)  # type: ignore[arg-type]
        assert [job.threads for job in jobs] == [expected, expected], (workers, threads)
