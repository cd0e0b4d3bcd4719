"""Prompt-driven LinkedOut feature extraction: one prefill of the frozen video LLM per batch of videos.

For each video the backbone reads one user turn, the video followed by the query prompts
("Which objects appear in this video?", ...), with no generation: the hidden states of the prefill
at the kept layers (``L0`` = the embedding output with the visual tokens merged in, ``Li`` = the
output of decoder layer ``i``, i.e. HF's ``hidden_states[i]``) are compressed to ``K`` tokens each
(:mod:`linkedout.extraction.compress`) and stored as the video's ``(L, K, D)`` features.

Early exit: forward hooks on the decoder layers capture the kept states as they are produced and,
once the deepest kept layer has run, stop the forward pass by raising a private exception; the
deeper decoder layers, the final norm and the LM head are never computed (the LM head is not even
called: the extractor runs the inner ``LlavaOnevisionModel``). The captured tensors are the very
ones HF's ``output_hidden_states`` records, so features with and without early exit are equal
(tested). For the paper's layers on a 28-layer Qwen2-7B, 8 of 28 decoder layers are skipped.

Running this over a whole dataset into a shard store is :mod:`linkedout.extraction.driver`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from linkedout.extraction.backbone import Backbone
from linkedout.extraction.compress import COMPRESSION_METHOD, compress, find_spans, pooling_weights
from linkedout.extraction.video import FRAME_SAMPLINGS
from linkedout.shards.spec import FeatureSpec

__all__ = [
    "DEFAULT_PROMPTS",
    "ExtractionConfig",
    "LinkedOutExtractor",
    "feature_spec",
]


DEFAULT_PROMPTS: tuple[str, ...] = (
    "Which objects appear in this video?",
    "What is the mood of the scene?",
    "What type of action happens?",
)


@dataclass
class ExtractionConfig:
    """How videos become ``(L, K, D)`` features.

    layers: hidden states kept, strictly increasing, ``0`` = embedding output, ``i`` = output of
        decoder layer ``i`` (must exist in the backbone: checked by ``LinkedOutExtractor``).
    prompts: query prompts put after the video in the user turn (>= 1, non-empty).
    num_frames: frames sampled uniformly per video (>= 1).
    frame_size: side of the decoded square frames (the backbone resizes to its own input size).
    tokens: ``K``, tokens kept per layer (>= 1).
    text_tokens: ``K_text`` of the ``K`` bins given to the prompt span (``0 <= K_text < K``); the
        other ``K - K_text`` pool the video span.
    batch_size: videos per forward pass (>= 1).
    early_exit: stop the decoder after the deepest kept layer (the features are the same).
    dtype: storage dtype of the features, ``float16`` or ``int8`` (per-row scales).
    shard_size: videos per shard (>= 1); shards are the unit of resume.
    frame_sampling: ``exact`` (uniform frame indices, LLaVA-OneVision's sampling) or ``keyframe``
        (each sample moved to the nearest key frame within half the sampling interval: about 10x
        less decoding on long videos, 0.13 instead of 1.6 CPU s for 161 s at 720p in
        ``bench/extract.py``; other features; recorded in the spec).
    decode_workers: processes decoding the next videos while the model runs (0 = decode in this
        process, between batches).
    decode_threads: FFmpeg threads per decoding process (0 = the cores shared among the workers).
    """

    layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    num_frames: int = 8
    frame_size: int = 224
    tokens: int = 64
    text_tokens: int = 8
    batch_size: int = 4
    early_exit: bool = True
    dtype: str = "float16"
    shard_size: int = 256
    frame_sampling: str = "exact"
    decode_workers: int = 2
    decode_threads: int = 0

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        self.prompts = tuple(self.prompts)
        if not self.layers:
            raise ValueError("ExtractionConfig.layers must name at least one layer")
        if min(self.layers) < 0:
            raise ValueError(f"ExtractionConfig.layers must be >= 0, got {self.layers}")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"ExtractionConfig.layers must be strictly increasing, got {self.layers}")
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError(f"ExtractionConfig.prompts must be >= 1 non-empty strings, got {self.prompts}")
        for name in ("num_frames", "frame_size", "tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ExtractionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.text_tokens < self.tokens:
            raise ValueError(
                f"ExtractionConfig.text_tokens must be in [0, tokens={self.tokens}), got {self.text_tokens}"
            )
        if self.dtype not in ("float16", "int8"):
            raise ValueError(f"ExtractionConfig.dtype must be float16 or int8, got {self.dtype!r}")
        if self.frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(f"ExtractionConfig.frame_sampling must be one of {FRAME_SAMPLINGS}, "
                             f"got {self.frame_sampling!r}")
        for name in ("decode_workers", "decode_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExtractionConfig.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def video_tokens(self) -> int:
        """Bins pooling the video span (``K - K_text``)."""
        return self.tokens - self.text_tokens

    @property
    def compression(self) -> str:
        """Description of the token compression, for the feature spec."""
        return f"{COMPRESSION_METHOD}(video={self.video_tokens},text={self.text_tokens})"


class _EarlyExit(Exception):
    """Raised by the capture hook of the deepest kept layer to stop the decoder."""


class LinkedOutExtractor:
    """Turns uint8 video frames into LinkedOut features with a frozen :class:`Backbone`.

    ``encode(frames (B, F, H, W, 3) uint8) -> float32 (B, L, K, D)``. Raises ``ValueError`` naming
    ``ExtractionConfig.layers`` if a kept layer does not exist in the backbone.

    The capture hooks live on the backbone's modules for the duration of one forward pass, so one
    backbone serves one forward at a time (run extractors of a shared backbone from one thread;
    :func:`linkedout.extraction.driver.extract_dataset` parallelises decoding, not the model).
    """

    def __init__(self, backbone: Backbone, cfg: ExtractionConfig) -> None:
        bad = [layer for layer in cfg.layers if layer > backbone.num_layers]
        if bad:
            raise ValueError(
                f"ExtractionConfig.layers {bad} do not exist in backbone {backbone.name!r}, which has hidden "
                f"states 0..{backbone.num_layers} (0 = embeddings, i = output of decoder layer i)"
            )
        self.backbone = backbone
        self.cfg = cfg
        self._weights: dict[int, tuple[Tensor, Tensor]] = {}  # num_frames -> (input_ids (T,), pool (K, T))
        self._check_token_budget()

    def _check_token_budget(self) -> None:
        """``ValueError`` when ``K`` exceeds the tokens a video gives (bins would only repeat tokens)."""
        cfg, bb = self.cfg, self.backbone
        ids = bb.prompt_ids(cfg.prompts, cfg.num_frames)
        spans = find_spans(ids, bb.video_token_id, bb.end_of_turn_id)
        if cfg.video_tokens > spans.video_len or cfg.text_tokens > spans.text_len:
            per_frame = (spans.video_len - 1) // cfg.num_frames
            most = min(cfg.video_tokens, spans.video_len) + min(cfg.text_tokens, spans.text_len)
            size = len(cfg.layers) * cfg.tokens * bb.hidden_size * (1 if cfg.dtype == "int8" else 2)
            per_video = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
            raise ValueError(
                f"ExtractionConfig.tokens={cfg.tokens} (text_tokens={cfg.text_tokens}) exceeds what a video gives "
                f"backbone {bb.name!r}: {cfg.video_tokens} video bins for {spans.video_len} visual tokens "
                f"({cfg.num_frames} frames x {per_frame} + 1) and {cfg.text_tokens} text bins for {spans.text_len} "
                f"prompt tokens; at most K = {most} here (a larger K only repeats tokens, at {per_video} a video)")

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    def _inputs(self, num_frames: int) -> tuple[Tensor, Tensor]:
        """Token ids (T,) and pooling weights (K, T) for videos of ``num_frames`` frames (cached)."""
        if num_frames not in self._weights:
            ids = self.backbone.prompt_ids(self.cfg.prompts, num_frames)  # (T,)
            spans = find_spans(ids, self.backbone.video_token_id, self.backbone.end_of_turn_id)
            pool = pooling_weights(spans, ids.numel(), self.cfg.video_tokens, self.cfg.text_tokens)  # (K, T)
            device = self.backbone.device
            self._weights[num_frames] = (ids.to(device), pool.to(device))
        return self._weights[num_frames]

    def _prefill(self, frames: np.ndarray | Tensor, sink: Callable[[int, Tensor], None]) -> None:
        """One prefill over a batch; ``sink(layer, state (B, T, D))`` receives each kept state in order."""
        if frames.ndim != 5:
            raise ValueError(f"frames must be (B, F, H, W, 3) uint8, got shape {tuple(frames.shape)}")
        b, num_frames = int(frames.shape[0]), int(frames.shape[1])
        ids, _ = self._inputs(num_frames)
        pixel_values = self.backbone.pixel_values(frames)  # (B, F, 3, S, S)
        input_ids = ids.unsqueeze(0).expand(b, -1)  # (B, T)
        inner = self.backbone.model.model  # LlavaOnevisionModel: no LM head
        decoder = inner.language_model
        layers: nn.ModuleList = decoder.layers
        deepest = self.cfg.layers[-1]
        stop = self.cfg.early_exit

        def capture(layer: int, state: Tensor) -> None:
            if layer == self.backbone.num_layers:
                state = decoder.norm(state)  # HF's last hidden state is the normed one
            sink(layer, state)
            if stop and layer == deepest:
                raise _EarlyExit

        def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            capture(0, args[0] if args else kwargs["hidden_states"])

        def make_hook(layer: int) -> Callable[[nn.Module, Any, Any], None]:
            def hook(_m: nn.Module, _args: Any, output: Any) -> None:
                capture(layer, output[0] if isinstance(output, tuple) else output)

            return hook

        handles = []
        try:
            for layer in self.cfg.layers:
                if layer == 0:
                    handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
                else:
                    handles.append(layers[layer - 1].register_forward_hook(make_hook(layer)))
            with torch.inference_mode():
                inner(
                    input_ids=input_ids,
                    pixel_values_videos=pixel_values,
                    attention_mask=torch.ones_like(input_ids),
                    use_cache=False,
                )
        except _EarlyExit:
            pass
        finally:
            for handle in handles:
                handle.remove()

    def kept_hidden_states(self, frames: np.ndarray | Tensor) -> Tensor:
        """Uncompressed kept states (B, L, T, D) in the backbone's dtype (for analysis and tests)."""
        states: dict[int, Tensor] = {}
        self._prefill(frames, lambda layer, h: states.__setitem__(layer, h.clone()))
        return torch.stack([states[layer] for layer in self.cfg.layers], dim=1)  # (B, L, T, D)

    def encode(self, frames: np.ndarray | Tensor) -> np.ndarray:
        """Features float32 (B, L, K, D) of a batch of videos given as uint8 frames (B, F, H, W, 3).

        Each kept layer is compressed as soon as the decoder produces it, so the full ``(L, T, D)``
        states of a batch are never held at once.
        """
        num_frames = int(frames.shape[1]) if frames.ndim == 5 else 0
        pooled: dict[int, Tensor] = {}

        def sink(layer: int, state: Tensor) -> None:
            _, pool = self._inputs(num_frames)
            pooled[layer] = compress(state, pool)  # (B, K, D)

        self._prefill(frames, sink)
        out = torch.stack([pooled[layer] for layer in self.cfg.layers], dim=1)  # (B, L, K, D)
        return out.cpu().numpy().astype(np.float32, copy=False)


def feature_spec(backbone: Backbone, cfg: ExtractionConfig) -> FeatureSpec:
    """The :class:`FeatureSpec` recorded beside features extracted with ``backbone`` and ``cfg``."""
    return FeatureSpec(
        backbone=backbone.name,
        layers=cfg.layers,
        prompts=cfg.prompts,
        num_frames=cfg.num_frames,
        frame_size=cfg.frame_size,
        tokens=cfg.tokens,
        hidden=backbone.hidden_size,
        dtype=cfg.dtype,
        compression=cfg.compression,
        backbone_dtype=str(backbone.dtype).removeprefix("torch."),
        frame_sampling=cfg.frame_sampling,
    )
