"""Which video LLM to load: ``BackboneConfig`` (validated) and the architectures it can build.

A ``source`` is ``"tiny"`` (a tiny LLaVA-OneVision config, seeded random weights), ``"random:<name>"``
(a real architecture of :data:`RANDOM_ARCHITECTURES` with random weights), a local checkpoint
directory or a hub id. :func:`architecture_config` gives the ``LlavaOnevisionConfig`` of the first
two; :mod:`.backbone` builds or loads the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaOnevisionConfig

__all__ = [
    "QWEN2_SPECIAL_IDS",
    "RANDOM_ARCHITECTURES",
    "BackboneConfig",
    "architecture_config",
    "tiny_name",
    "tiny_special_ids",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Special tokens of the Qwen2 / LLaVA-OneVision vocabulary, with their ids in the real tokenizer.
QWEN2_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<image>": 151646,
    "<video>": 151647,
}

#: The SigLIP-so400m vision tower of every LLaVA-OneVision checkpoint (HF config values).
_SIGLIP_SO400M: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}

# Real architectures by name (the HF ``config.json`` of llava-hf/llava-onevision-qwen2-*-ov-hf, minus
# the image-only anyres fields): for benchmarks with random weights.
RANDOM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llava-onevision-qwen2-7b": {
        "image_token_index": 151646,
        "video_token_index": 151647,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
        "tie_word_embeddings": False,
        "vision_config": _SIGLIP_SO400M,
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "vocab_size": 152128,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "tie_word_embeddings": False,
            "use_sliding_window": False,
        },
    },
    "llava-onevision-qwen2-0.5b": {
        "image_token_index": 151646,
        "video_token_index": 151647,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
        "tie_word_embeddings": True,
        "vision_config": _SIGLIP_SO400M,
        "text_config": {
            "model_type": "qwen2",
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "vocab_size": 151936,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
        },
    },
}

# A model-hub id: owner/name, no path syntax (a local path is anything else, or an existing directory).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

@dataclass
class BackboneConfig:
    """Which video LLM to load and how.

    source: ``"tiny"`` | ``"random:<name>"`` (a key of ``RANDOM_ARCHITECTURES``) | a local checkpoint
        directory | a hub id (``owner/name``).
    dtype: ``auto`` (bfloat16 on CUDA, float32 otherwise) | ``float32`` | ``bfloat16`` | ``float16``.
    device: ``auto`` (CUDA if available, else CPU) | ``cpu`` | ``cuda`` | ``cuda:N`` | ``meta`` (no
        memory; for inspecting ``random:`` architectures only).
    seed: seeds the random weights of ``tiny`` and ``random:`` backbones (same seed, same weights).
    attn_implementation: ``sdpa`` | ``eager`` | ``flash_attention_2`` (the latter needs the package).
    revision: hub revision (branch, tag or commit) when ``source`` is a hub id.
    tiny_*: sizes of the ``tiny`` model; the decoder keeps >= 21 layers so the paper's layers
        (0, 4, ..., 20) exist; ``tiny_image_size`` must be a multiple of ``tiny_patch_size``.
    """

    source: str = "tiny"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    attn_implementation: str = "sdpa"
    revision: str | None = None
    tiny_vision_hidden: int = 32
    tiny_vision_layers: int = 2
    tiny_vision_heads: int = 2
    tiny_patch_size: int = 14
    tiny_image_size: int = 224
    tiny_text_hidden: int = 64
    tiny_text_layers: int = 24
    tiny_text_heads: int = 4
    tiny_text_kv_heads: int = 2
    tiny_text_intermediate: int = 128

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("BackboneConfig.source must be 'tiny', 'random:<name>', a directory or a hub id")
        if self.source.startswith("random:") and self.source[len("random:"):] not in RANDOM_ARCHITECTURES:
            raise ValueError(
                f"BackboneConfig.source: unknown architecture {self.source!r}; "
                f"known: {sorted('random:' + k for k in RANDOM_ARCHITECTURES)}"
            )
        if self.dtype not in ("auto", *_DTYPES):
            raise ValueError(f"BackboneConfig.dtype must be auto|float32|bfloat16|float16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda", "meta") and not self.device.startswith("cuda:"):
            raise ValueError(f"BackboneConfig.device must be auto|cpu|cuda|cuda:N|meta, got {self.device!r}")
        if self.device == "meta" and not self.source.startswith("random:"):
            raise ValueError("BackboneConfig.device='meta' is only for source='random:<name>'")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            raise ValueError(
                f"BackboneConfig.attn_implementation must be sdpa|eager|flash_attention_2, "
                f"got {self.attn_implementation!r}"
            )
        positive = ("tiny_vision_hidden", "tiny_vision_layers", "tiny_vision_heads", "tiny_patch_size",
                    "tiny_image_size", "tiny_text_hidden", "tiny_text_heads", "tiny_text_kv_heads",
                    "tiny_text_intermediate")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"BackboneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.tiny_text_layers < 21:
            raise ValueError(
                f"BackboneConfig.tiny_text_layers must be >= 21 (the paper keeps layers up to 20), "
                f"got {self.tiny_text_layers}"
            )
        if self.tiny_image_size % self.tiny_patch_size:
            raise ValueError(
                f"BackboneConfig.tiny_image_size ({self.tiny_image_size}) must be a multiple of "
                f"tiny_patch_size ({self.tiny_patch_size})"
            )
        if self.tiny_vision_hidden % self.tiny_vision_heads:
            raise ValueError("BackboneConfig.tiny_vision_hidden must be divisible by tiny_vision_heads")
        if self.tiny_text_hidden % self.tiny_text_heads or (self.tiny_text_hidden // self.tiny_text_heads) % 2:
            raise ValueError("BackboneConfig.tiny_text_hidden / tiny_text_heads must be an even integer")
        if self.tiny_text_heads % self.tiny_text_kv_heads:
            raise ValueError("BackboneConfig.tiny_text_heads must be divisible by tiny_text_kv_heads")

    def check(self) -> None:
        """Check, before any loading, what only this machine can tell: that the device exists and
        that a local checkpoint directory is there. ``ValueError`` naming the field and the way out."""
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
                       else "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)")
                raise ValueError(f"BackboneConfig.device is {self.device!r} but {why}: use --device cpu "
                                 "(or auto, which picks CUDA when there is a GPU)")
            if ":" in self.device:
                index = int(self.device.split(":", 1)[1]) if self.device.split(":", 1)[1].isdigit() else -1
                if not 0 <= index < torch.cuda.device_count():
                    raise ValueError(f"BackboneConfig.device is {self.device!r} but this machine has "
                                     f"{torch.cuda.device_count()} CUDA device(s)")
        if self.source == "tiny" or self.source.startswith("random:"):
            return
        path = Path(self.source).expanduser()
        if path.exists():
            if not path.is_dir() or not (path / "config.json").is_file():
                raise ValueError(f"BackboneConfig.source {self.source!r} is not a saved LLaVA-OneVision checkpoint "
                                 "directory (no config.json; write one with save_pretrained)")
        elif not _HUB_ID.fullmatch(self.source):
            raise ValueError(f"BackboneConfig.source: the backbone directory {self.source!r} does not exist "
                             "(and it is not a hub id of the form owner/name)")

    def resolved_device(self) -> torch.device:
        """The torch device (``auto`` resolved)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        """The torch dtype (``auto``: bfloat16 on CUDA, float32 elsewhere)."""
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return _DTYPES[self.dtype]


def architecture_config(cfg: BackboneConfig) -> LlavaOnevisionConfig:
    """The ``LlavaOnevisionConfig`` of a ``tiny`` or ``random:<name>`` source."""
    if cfg.source.startswith("random:"):
        spec = json.loads(json.dumps(RANDOM_ARCHITECTURES[cfg.source[len("random:"):]]))
    elif cfg.source == "tiny":
        specials = tiny_special_ids()
        spec = {
            "image_token_index": specials["<image>"],
            "video_token_index": specials["<video>"],
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
            "vision_aspect_ratio": "anyres_max_9",
            "image_grid_pinpoints": [[cfg.tiny_image_size, cfg.tiny_image_size]],
            "tie_word_embeddings": False,
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": cfg.tiny_vision_hidden,
                "intermediate_size": 2 * cfg.tiny_vision_hidden,
                "num_hidden_layers": cfg.tiny_vision_layers,
                "num_attention_heads": cfg.tiny_vision_heads,
                "image_size": cfg.tiny_image_size,
                "patch_size": cfg.tiny_patch_size,
                "vision_use_head": False,
            },
            "text_config": {
                "model_type": "qwen2",
                "hidden_size": cfg.tiny_text_hidden,
                "intermediate_size": cfg.tiny_text_intermediate,
                "num_hidden_layers": cfg.tiny_text_layers,
                "num_attention_heads": cfg.tiny_text_heads,
                "num_key_value_heads": cfg.tiny_text_kv_heads,
                "max_position_embeddings": 8192,
                "vocab_size": 512,
                "bos_token_id": specials["<|endoftext|>"],
                "eos_token_id": specials["<|im_end|>"],
                "pad_token_id": specials["<|endoftext|>"],
                "tie_word_embeddings": False,
                "use_sliding_window": False,
            },
        }
    else:
        raise ValueError(f"BackboneConfig.source {cfg.source!r} is a checkpoint, not a built architecture")
    return LlavaOnevisionConfig(**spec)


def tiny_name(cfg: BackboneConfig) -> str:
    """The backbone name recorded for a ``tiny`` config: its seed and sizes (``tiny:seed=...,text=...``)."""
    return (f"tiny:seed={cfg.seed},image={cfg.tiny_image_size}/{cfg.tiny_patch_size},"
            f"vision={cfg.tiny_vision_hidden}x{cfg.tiny_vision_layers},text={cfg.tiny_text_hidden}x{cfg.tiny_text_layers}")


def tiny_special_ids() -> dict[str, int]:
    """Qwen2's special tokens at the ids of the ``tiny`` vocabulary (just after the 256 byte symbols)."""
    return {token: 256 + i for i, token in enumerate(QWEN2_SPECIAL_IDS)}
