"""Token compression: one layer's hidden-state sequence ``(T, D)`` -> a fixed budget of ``K`` tokens.

Method: order-preserving segment mean pooling over two spans of the prefill sequence, nothing else.

- the **video span** (the ``<video>`` placeholder positions, now holding the projected visual tokens,
  ``F * ceil(P/2)**2 + 1`` of them) is cut into ``K - K_text`` contiguous, near-equal segments in
  sequence order and each segment is averaged. Visual tokens are laid out frame by frame, row by
  row, so the bins keep the video's temporal order (and, within a frame, its vertical order).
- the **prompt span** (the query text after the video, up to the ``<|im_end|>`` closing the user
  turn) is cut the same way into ``K_text`` segments. Under causal attention these tokens have read
  the whole video *and* the question, so in deeper layers they carry the prompt-conditioned summary
  that is the point of prompt-driven extraction.
- template boilerplate (``<|im_start|>user``, ``<|im_end|>``, ``<|im_start|>assistant``, any system
  turn) is left out: it is identical for every video at the input and carries little video content.

Why this and not e.g. top-k attention or clustering: it is deterministic, parameter-free, independent
of the backbone (no attention weights needed, so it works with SDPA / flash attention), keeps token
order (the fusion MoE's experts see positions that mean the same thing for every video), handles any
number of frames (a span shorter than its bin count repeats tokens, nearest-neighbour style, rather
than padding with zeros) and costs one small matrix product per layer. It is the
``adaptive_avg_pool1d`` of the span, computed as ``pool (K, T) @ hidden (T, D)`` so all layers and
all videos of a batch are compressed in one ``einsum``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["COMPRESSION_METHOD", "TokenSpans", "compress", "find_spans", "pooling_weights", "segment_pool"]

COMPRESSION_METHOD = "segment_mean"


@dataclass(frozen=True)
class TokenSpans:
    """Half-open ``[start, end)`` positions of the video and prompt tokens in one sequence."""

    video_start: int
    video_end: int
    text_start: int
    text_end: int

    @property
    def video_len(self) -> int:
        return self.video_end - self.video_start

    @property
    def text_len(self) -> int:
        return self.text_end - self.text_start


def find_spans(input_ids: Tensor, video_token_id: int, end_of_turn_id: int) -> TokenSpans:
    """Locate the video span and the prompt span in ``input_ids`` (T,).

    The video span is the run of ``video_token_id``; the prompt span runs from just after it to the
    first ``end_of_turn_id`` (``<|im_end|>``) that follows. Raises ``ValueError`` if the video tokens
    are missing or not contiguous, or if no prompt token follows the video.
    """
    if input_ids.ndim != 1:
        raise ValueError(f"input_ids must be (T,), got shape {tuple(input_ids.shape)}")
    positions = torch.nonzero(input_ids == video_token_id).flatten()
    if positions.numel() == 0:
        raise ValueError(f"no video token (id {video_token_id}) in the input sequence")
    v0, v1 = int(positions[0]), int(positions[-1]) + 1
    if v1 - v0 != positions.numel():
        raise ValueError("the video tokens are not contiguous in the input sequence")
    ends = torch.nonzero(input_ids[v1:] == end_of_turn_id).flatten()
    t1 = v1 + int(ends[0]) if ends.numel() else int(input_ids.numel())
    if t1 <= v1:
        raise ValueError("no prompt token between the video and the end of the user turn")
    return TokenSpans(v0, v1, v1, t1)


def segment_pool(length: int, bins: int) -> Tensor:
    """Weights (bins, length) float32 averaging ``length`` tokens into ``bins`` ordered segments.

    Bin ``j`` averages tokens ``[floor(j*n/k), max(floor(j*n/k) + 1, floor((j+1)*n/k)))``: contiguous,
    near-equal, covering every token once when ``n >= k``; when ``n < k`` each bin takes one token
    and tokens repeat in order. Each row sums to 1.
    """
    if length < 1 or bins < 1:
        raise ValueError(f"segment_pool needs length >= 1 and bins >= 1, got {length}, {bins}")
    j = torch.arange(bins)
    start = torch.div(j * length, bins, rounding_mode="floor")  # (k,)
    end = torch.maximum(start + 1, torch.div((j + 1) * length, bins, rounding_mode="floor"))  # (k,)
    t = torch.arange(length)
    member = (t[None, :] >= start[:, None]) & (t[None, :] < end[:, None])  # (k, n)
    weights = member.float()
    return weights / weights.sum(dim=1, keepdim=True)


def pooling_weights(spans: TokenSpans, seq_len: int, video_bins: int, text_bins: int) -> Tensor:
    """Weights (K, T) float32, ``K = video_bins + text_bins``, selecting and averaging the two spans.

    Rows ``0 .. video_bins-1`` pool the video span, the last ``text_bins`` rows the prompt span;
    every other position (template tokens) has weight 0.
    """
    if spans.video_end > seq_len or spans.text_end > seq_len:
        raise ValueError(f"spans {spans} exceed the sequence length {seq_len}")
    weights = torch.zeros(video_bins + text_bins, seq_len)
    if video_bins:
        weights[:video_bins, spans.video_start : spans.video_end] = segment_pool(spans.video_len, video_bins)
    if text_bins:
        weights[video_bins:, spans.text_start : spans.text_end] = segment_pool(spans.text_len, text_bins)
    return weights


def compress(hidden: Tensor, weights: Tensor) -> Tensor:
    """Compress hidden states (..., T, D) with pooling weights (K, T) -> float32 (..., K, D)."""
    if hidden.shape[-2] != weights.shape[-1]:
        raise ValueError(
            f"hidden has {hidden.shape[-2]} tokens but the pooling weights expect {weights.shape[-1]}"
        )
    return torch.einsum("kt,...td->...kd", weights.to(hidden.device, torch.float32), hidden.float())
