"""Video decoding for feature extraction: ``F`` frames sampled uniformly over a video, as RGB uint8.

Sampling follows LLaVA-OneVision's own video loader: frame indices ``round(linspace(0, n - 1, F))``
over the ``n`` decoded frames, so the first and the last frame are always kept and a video with
fewer than ``F`` frames repeats frames (never pads with zeros). Frames are decoded sequentially
(no seeking: seeking in H.264 lands on key frames and is neither exact nor faster for short clips)
and only the selected ones are converted to RGB and resized, by FFmpeg's swscale, to
``size x size`` (aspect ratio not kept, as the LLaVA-OneVision processor resizes to a square too).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

__all__ = ["VideoDecodeError", "decode_frames", "sample_indices"]


class VideoDecodeError(ValueError):
    """A video could not be decoded into frames: missing, unreadable, no video stream or no frame."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path}: {reason}")

    def __reduce__(self) -> tuple[type[VideoDecodeError], tuple[str, str]]:
        # Picklable with its two arguments, so the error crosses process-pool boundaries intact.
        return (type(self), (self.path, self.reason))


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Indices (``num_frames``,) int64 of ``num_frames`` frames spread uniformly over ``num_available``.

    ``round(linspace(0, n - 1, F))``: first and last frames included; repeats when ``n < F``.
    """
    if num_available < 1:
        raise ValueError(f"num_available must be >= 1, got {num_available}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.rint(np.linspace(0, num_available - 1, num_frames)).astype(np.int64)


def _count_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Number of video frames, by demuxing (no decoding) when the header does not say."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode_selected(
    path: Path, wanted: np.ndarray, size: int
) -> tuple[dict[int, np.ndarray], int]:
    """Decode ``path`` sequentially; return the RGB frames at indices ``wanted`` and the frames decoded."""
    targets = {int(i) for i in wanted}
    last = int(wanted.max())
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if decoded in targets:
                rgb = frame.reformat(width=size, height=size, format="rgb24", interpolation="BILINEAR")
                kept[decoded] = rgb.to_ndarray()  # (size, size, 3) uint8
            decoded += 1
            if decoded > last:
                break
    return kept, decoded


def decode_frames(path: str | os.PathLike[str], num_frames: int = 8, size: int = 224) -> np.ndarray:
    """Decode ``num_frames`` frames sampled uniformly over the video at ``path``.

    Returns uint8 ``(num_frames, size, size, 3)`` RGB. Raises :class:`VideoDecodeError` naming the
    path for a missing file, a file FFmpeg cannot read (garbage, truncated), a file with no video
    stream, or a video with no decodable frame; it never returns blank frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            header_frames = _count_frames(container, container.streams.video[0])
        if header_frames < 1:
            raise VideoDecodeError(path, "video has no frames")
        wanted = sample_indices(header_frames, num_frames)
        kept, decoded = _decode_selected(path, wanted, size)
        if decoded == 0:
            raise VideoDecodeError(path, "no decodable frame")
        if len(kept) < len(set(wanted.tolist())):
            # The header over-counted (or the tail is undecodable): sample again over what decodes.
            wanted = sample_indices(decoded, num_frames)
            kept, decoded = _decode_selected(path, wanted, size)
            if decoded == 0 or len(kept) < len(set(wanted.tolist())):
                raise VideoDecodeError(path, "frames changed between two decoding passes")
    except av.FFmpegError as err:
        raise VideoDecodeError(path, f"{type(err).__name__}: {err}") from err
    return np.stack([kept[int(i)] for i in wanted])  # (F, size, size, 3)
