"""The synthetic dataset's videos: how a topic looks, and rendering and encoding one video.

A topic's look (:class:`TopicStyle`) combines a shape, a colour palette, a background texture and
a motion pattern; a :class:`VideoJob` adds one video's variation (colours, size, speed, phase,
texture scale, noise). :func:`render_frames` draws its frames, :func:`encode_videos` writes them as
H.264 mp4 files with a jpg cover (in a process pool). :mod:`.synth` builds the jobs.
"""

from __future__ import annotations

import io
import itertools
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from linkedout.utils import atomic_write_bytes, progress

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
# (background, foreground, accent) RGB
PALETTES: tuple[tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((20, 24, 60), (255, 140, 0), (250, 220, 60)),  # night / orange
    ((200, 235, 200), (20, 110, 40), (120, 70, 20)),  # meadow / green
    ((240, 240, 245), (200, 20, 40), (60, 60, 70)),  # paper / red
    ((10, 10, 10), (0, 230, 230), (230, 0, 200)),  # neon
    ((250, 225, 190), (90, 40, 140), (240, 120, 160)),  # sand / purple
    ((30, 70, 120), (250, 250, 250), (120, 190, 240)),  # ocean / white
    ((90, 90, 90), (255, 230, 0), (20, 20, 20)),  # asphalt / yellow
    ((255, 200, 210), (30, 90, 200), (250, 250, 250)),  # pink / blue
)
TEXTURES = ("flat", "hstripes", "vstripes", "checker", "dots", "gradient")
MOTIONS = ("horizontal", "vertical", "circular", "zoom", "diagonal", "spin")


@dataclass(frozen=True)
class TopicStyle:
    """How a topic looks: indices into SHAPES, PALETTES, TEXTURES, MOTIONS."""

    shape: int
    palette: int
    texture: int
    motion: int


@dataclass(frozen=True)
class VideoJob:
    """Everything a worker needs to render and encode one video and its cover (picklable)."""

    item: str
    video_path: str
    cover_path: str
    style: TopicStyle
    colors: tuple[tuple[int, int, int], ...]  # (bg, fg, accent) after per-video jitter
    radius: float  # object radius as a fraction of the frame size
    speed: float  # cycles per clip
    phase: float  # radians
    texture_scale: float  # texture period in pixels
    noise_seed: int
    size: int
    num_frames: int
    fps: int
    crf: int


def topic_styles(k: int, rng: np.random.Generator) -> list[TopicStyle]:
    """K styles that differ from each other in as many of the 4 attributes as possible (greedy)."""
    options = np.array(list(itertools.product(range(len(SHAPES)), range(len(PALETTES)), range(len(TEXTURES)),
                                              range(len(MOTIONS)))))
    options = options[rng.permutation(len(options))]
    chosen: list[np.ndarray] = [options[0]]
    for _ in range(1, k):
        dist = np.min(np.stack([(options != c).sum(axis=1) for c in chosen]), axis=0)  # min Hamming distance
        chosen.append(options[int(np.argmax(dist))])
    return [TopicStyle(*map(int, c)) for c in chosen]


def encode_videos(jobs: list[VideoJob], workers: int = 0) -> None:
    """Render and encode ``jobs`` (mp4 + cover jpg each), in a process pool when ``workers > 0``."""
    if workers <= 0 or len(jobs) < 2:
        for job in progress(jobs, total=len(jobs), desc="encoding videos", unit="video"):
            _encode_job(job)
        return
    ctx = mp.get_context("spawn")  # safe whatever the parent imported (torch, threads)
    chunk = max(1, min(32, len(jobs) // (workers * 8)))
    with ctx.Pool(processes=min(workers, len(jobs))) as pool:
        for _ in progress(pool.imap_unordered(_encode_job, jobs, chunksize=chunk), total=len(jobs),
                          desc="encoding videos", unit="video"):
            pass


def render_frames(job: VideoJob) -> np.ndarray:
    """The frames of one video, uint8 ``[F, S, S, 3]`` (before encoding)."""
    s, f = job.size, job.num_frames
    rng = np.random.default_rng(job.noise_seed)
    bg, fg, accent = (np.array(c, dtype=np.float32) for c in job.colors)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)  # (S, S)
    frames = np.empty((f, s, s, 3), dtype=np.uint8)
    texture = TEXTURES[job.style.texture]
    motion = MOTIONS[job.style.motion]
    for t in range(f):
        theta = 2.0 * np.pi * job.speed * t / max(f, 1) + job.phase
        drift = t * job.texture_scale / max(f, 1)  # the background slides one period per clip
        w = _texture_weight(texture, xx + drift, yy, job.texture_scale, s)  # (S, S) in [0, 1]
        img = bg[None, None, :] * (1.0 - w[..., None]) + (0.55 * accent + 0.45 * bg)[None, None, :] * w[..., None]
        cx, cy, r, angle = _motion(motion, theta, s, job.radius)
        dx, dy = (xx - cx) / r, (yy - cy) / r
        if angle:
            dx, dy = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        mask = _shape_mask(SHAPES[job.style.shape], dx, dy)  # (S, S) bool
        img[mask] = fg
        img += 6.0 * rng.standard_normal(img.shape, dtype=np.float32)  # pixel noise, sigma 6
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def _texture_weight(texture: str, x: np.ndarray, y: np.ndarray, period: float, s: int) -> np.ndarray:
    if texture == "flat":
        return np.zeros_like(x)
    if texture == "hstripes":
        return ((y // (period / 2)) % 2).astype(np.float32)
    if texture == "vstripes":
        return ((x // (period / 2)) % 2).astype(np.float32)
    if texture == "checker":
        return (((x // period) + (y // period)) % 2).astype(np.float32)
    if texture == "dots":
        fx, fy = (x % period) - period / 2, (y % period) - period / 2
        return (fx * fx + fy * fy < (period / 4) ** 2).astype(np.float32)
    if texture == "gradient":
        return ((x + y) % (2 * s)) / (2 * s)
    raise ValueError(f"unknown texture {texture!r}")


def _motion(motion: str, theta: float, s: int, radius: float) -> tuple[float, float, float, float]:
    """Object centre x, y, radius (pixels) and rotation angle for one frame."""
    c, amp, r = s / 2, s * (0.5 - radius) * 0.8, radius * s
    if motion == "horizontal":
        return c + amp * np.sin(theta), c, r, 0.0
    if motion == "vertical":
        return c, c + amp * np.sin(theta), r, 0.0
    if motion == "circular":
        return c + amp * np.cos(theta), c + amp * np.sin(theta), r, 0.0
    if motion == "zoom":
        return c, c, r * (1.0 + 0.45 * np.sin(theta)), 0.0
    if motion == "diagonal":
        return c + amp * np.sin(theta), c + amp * np.sin(theta), r, 0.0
    if motion == "spin":
        return c + 0.25 * amp * np.cos(theta), c + 0.25 * amp * np.sin(theta), r, theta
    raise ValueError(f"unknown motion {motion!r}")


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy < 1.0
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) < 0.85
    if shape == "triangle":
        return (dy < 0.7) & (dy > -1.0) & (np.abs(dx) < (dy + 1.0) * 0.6)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) < 1.1
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < 1.0) & (d2 > 0.35)
    if shape == "cross":
        return ((np.abs(dx) < 0.3) & (np.abs(dy) < 1.0)) | ((np.abs(dy) < 0.3) & (np.abs(dx) < 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def _encode_job(job: VideoJob) -> str:
    """Render, encode (H.264, yuv420p, mp4) and write one video and its cover; returns the item id."""
    import av
    from PIL import Image

    frames = render_frames(job)
    video_path = Path(job.video_path)
    tmp = video_path.with_name(f".{video_path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            # asm=0: x264's C code only. Its assembly gave the same frames another bitstream now and then
            # (1 to 10 of 60 toy videos from one run to the next with 2 workers; none with asm=0 over 540
            # re-encodes, or with its lookahead off): the same seed must give the same videos (and no path
            # depends on the CPU's instruction sets). Costs ~20 % of the synth's time at 64 px (rendering
            # is most of it).
            stream = container.add_stream("libx264", rate=job.fps, options={
                "crf": str(job.crf), "preset": "veryfast", "threads": "1", "x264-params": "asm=0"})
            stream.width = job.size
            stream.height = job.size
            stream.pix_fmt = "yuv420p"
            for arr in frames:
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        os.replace(tmp, video_path)
    finally:
        tmp.unlink(missing_ok=True)
    buf = io.BytesIO()
    Image.fromarray(frames[len(frames) // 2]).save(buf, format="JPEG", quality=90)
    atomic_write_bytes(job.cover_path, buf.getvalue())
    return job.item
