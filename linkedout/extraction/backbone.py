"""The frozen video LLM: LLaVA-OneVision (SigLIP vision tower + Qwen2 decoder) and its input pipeline.

``load_backbone(BackboneConfig(source=...))`` gives a :class:`Backbone`: the
``LlavaOnevisionForConditionalGeneration`` model (eval mode, no gradients) plus what its processor
does for a video and a text prompt, i.e. pixel normalisation and the chat template with the
``<video>`` placeholder expanded to the number of visual tokens. ``source`` is one of

- ``"tiny"``: the same architecture from a tiny config (SigLIP hidden 32 × 2 layers, Qwen2 hidden 64 ×
  24 layers by default) with seeded random weights and a byte-level tokenizer built locally: the
  embedded default, needs no network and no download;
- ``"random:<name>"``: a real architecture (``llava-onevision-qwen2-7b``, ``llava-onevision-qwen2-0.5b``)
  with random weights, for throughput and memory benchmarks (``device="meta"`` builds it without
  memory, to check the configuration);
- a local directory or a hub id holding a checkpoint in the HF layout (``config.json``, weights,
  tokenizer, ``chat_template.jinja`` or ``chat_template.json``, ``video_preprocessor_config.json`` or
  ``preprocessor_config.json``), e.g. ``llava-hf/llava-onevision-qwen2-7b-ov-hf``.
  :func:`save_tiny_checkpoint` writes one, so this path is tested on the tiny model.

Why not ``LlavaOnevisionProcessor`` itself: in transformers 5 its video processor requires
torchvision, which this project does not install. The processor's video work is small and is done
here in torch, on the model's device, with the checkpoint's own settings: resize (bicubic,
antialiased) to the vision tower's image size, rescale by ``1/255``, normalise by the checkpoint's mean
and std; the text goes through the checkpoint's chat template and the ``<video>`` placeholder is
repeated ``F * ceil(P / 2)**2 + 1`` times (``P`` patches per side; 2×2 bilinear pooling per frame plus
one newline token), exactly as ``LlavaOnevisionProcessor.replace_video_token``. The checkpoints written
here carry the HF processor files too, so a torchvision-equipped HF processor reads them as well.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from linkedout.utils import get_logger

__all__ = [
    "LLAVA_OV_CHAT_TEMPLATE",
    "RANDOM_ARCHITECTURES",
    "Backbone",
    "BackboneConfig",
    "VideoPreprocessing",
    "architecture_config",
    "load_backbone",
    "save_tiny_checkpoint",
]

log = get_logger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The chat template LLaVA-OneVision's processor ships (llava-hf/llava-onevision-qwen2-*-ov-hf): Qwen2's
# ``<|im_start|>role ... <|im_end|>`` turns, images then videos then the texts of a turn, each text on
# its own line.
LLAVA_OV_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Special tokens of the Qwen2 / LLaVA-OneVision vocabulary, with their ids in the real tokenizer.
_QWEN2_SPECIAL_IDS = {
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

# SigLIP's normalisation (what the LLaVA-OneVision checkpoints' preprocessor configs say).
_SIGLIP_MEAN = (0.5, 0.5, 0.5)
_SIGLIP_STD = (0.5, 0.5, 0.5)


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


@dataclass(frozen=True)
class VideoPreprocessing:
    """What the checkpoint's video processor does to frames: resize, rescale, normalise."""

    size: int  # square side the vision tower expects (its ``image_size``)
    mean: tuple[float, float, float] = _SIGLIP_MEAN
    std: tuple[float, float, float] = _SIGLIP_STD
    rescale_factor: float = 1 / 255

    def hf_config(self) -> dict[str, Any]:
        """The ``video_preprocessor_config.json`` an HF ``LlavaOnevisionVideoProcessor`` reads."""
        return {
            "video_processor_type": "LlavaOnevisionVideoProcessor",
            "processor_class": "LlavaOnevisionProcessor",
            "size": {"height": self.size, "width": self.size},
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "rescale_factor": self.rescale_factor,
            "resample": 3,  # bicubic
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "do_sample_frames": False,
        }


@dataclass
class Backbone:
    """A frozen LLaVA-OneVision model with its input pipeline (see the module docstring).

    ``model`` is in eval mode with ``requires_grad=False`` everywhere; run it under
    ``torch.inference_mode()``. ``name`` identifies the weights for the feature spec.
    """

    model: LlavaOnevisionForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    chat_template: str
    preprocessing: VideoPreprocessing
    config: BackboneConfig
    name: str
    _prompt_cache: dict[tuple[tuple[str, ...], int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_layers(self) -> int:
        """Decoder layers; hidden states are numbered ``0`` (embeddings) to ``num_layers``."""
        return int(_sub(self.model.config, "text_config").num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """``D``, the decoder's hidden size."""
        return int(_sub(self.model.config, "text_config").hidden_size)

    @property
    def video_token_id(self) -> int:
        return int(getattr(self.model.config, "video_token_id"))  # noqa: B009 (an attribute_map alias)

    @property
    def end_of_turn_id(self) -> int:
        """Id of ``<|im_end|>``, which closes the user turn."""
        return int(cast(int, self.tokenizer.convert_tokens_to_ids("<|im_end|>")))

    def video_tokens(self, num_frames: int) -> int:
        """Visual tokens one video of ``num_frames`` frames takes: ``F * ceil(P / 2)**2 + 1``."""
        vision = _sub(self.model.config, "vision_config")
        pooled = math.ceil((vision.image_size // vision.patch_size) / 2)
        return num_frames * pooled * pooled + 1

    def pixel_values(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames (B, F, H, W, 3) -> normalised (B, F, 3, S, S) in the model's dtype and device."""
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (B, F, H, W, 3) RGB, got shape {tuple(frames.shape)}")
        video = torch.as_tensor(frames)
        if video.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 RGB in [0, 255], got dtype {video.dtype}")
        video = video.to(self.device)  # (B, F, H, W, 3) uint8
        b, f, h, w, _ = video.shape
        x = video.permute(0, 1, 4, 2, 3).reshape(b * f, 3, h, w).float()  # (B*F, 3, H, W) in [0, 255]
        size = self.preprocessing.size
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp_(0, 255).round_()  # the HF processor resizes uint8 images
        mean = torch.tensor(self.preprocessing.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=x.device).view(1, 3, 1, 1)
        x = (x * self.preprocessing.rescale_factor - mean) / std  # (B*F, 3, S, S)
        return x.view(b, f, 3, size, size).to(self.dtype)

    def prompt_ids(self, prompts: Sequence[str], num_frames: int) -> torch.Tensor:
        """Token ids (T,) of one user turn holding the video then the prompts, plus the assistant header.

        The ``<video>`` placeholder is expanded to :meth:`video_tokens` copies. Cached per (prompts, F).
        """
        key = (tuple(prompts), num_frames)
        if key not in self._prompt_cache:
            content: list[dict[str, str]] = [{"type": "video"}]
            content += [{"type": "text", "text": p} for p in prompts]
            conversation: Any = [{"role": "user", "content": content}]
            text = self.tokenizer.apply_chat_template(
                conversation,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=True,
            )
            assert isinstance(text, str)
            video_token = str(self.tokenizer.convert_ids_to_tokens(self.video_token_id))
            if text.count(video_token) != 1:
                raise ValueError(
                    f"the chat template of backbone {self.name!r} must render exactly one {video_token} "
                    f"for a video, rendered {text.count(video_token)}"
                )
            text = text.replace(video_token, video_token * self.video_tokens(num_frames))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompt_cache[key] = torch.tensor(ids, dtype=torch.long)  # (T,)
        return self._prompt_cache[key]

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write model, tokenizer, chat template and processor configs in the HF layout."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.chat_template = self.chat_template
        self.tokenizer.save_pretrained(out)
        (out / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        (out / "video_preprocessor_config.json").write_text(
            json.dumps(self.preprocessing.hf_config(), indent=2), encoding="utf-8"
        )
        vision = _sub(self.model.config, "vision_config")
        processor = {
            "processor_class": "LlavaOnevisionProcessor",
            "num_image_tokens": (vision.image_size // vision.patch_size) ** 2,
            "vision_feature_select_strategy": self.model.config.vision_feature_select_strategy,
            "vision_aspect_ratio": self.model.config.vision_aspect_ratio,
        }
        (out / "processor_config.json").write_text(json.dumps(processor, indent=2), encoding="utf-8")


def _sub(config: Any, name: str) -> Any:
    """A sub-config (``vision_config`` / ``text_config``) of a ``LlavaOnevisionConfig``."""
    return getattr(config, name)


def _triple(values: Any, name: str, source: str) -> tuple[float, float, float]:
    vals = [float(v) for v in values] if isinstance(values, list | tuple) else [float(values)] * 3
    if len(vals) != 3:
        raise ValueError(f"backbone {source}: {name} must have 3 values (RGB), got {values!r}")
    return (vals[0], vals[1], vals[2])


def _local_tokenizer(special_ids: dict[str, int]) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte symbols, no merges) plus Qwen2's special tokens at ``special_ids``.

    Encodes any text without unknown tokens; built offline.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update(special_ids)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_ids])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.chat_template = LLAVA_OV_CHAT_TEMPLATE
    return fast


def architecture_config(cfg: BackboneConfig) -> LlavaOnevisionConfig:
    """The ``LlavaOnevisionConfig`` of a ``tiny`` or ``random:<name>`` source."""
    if cfg.source.startswith("random:"):
        spec = json.loads(json.dumps(RANDOM_ARCHITECTURES[cfg.source[len("random:"):]]))
    elif cfg.source == "tiny":
        specials = _tiny_special_ids()
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


def _tiny_special_ids() -> dict[str, int]:
    return {token: 256 + i for i, token in enumerate(_QWEN2_SPECIAL_IDS)}


def _freeze(model: LlavaOnevisionForConditionalGeneration) -> LlavaOnevisionForConditionalGeneration:
    model.eval()
    model.requires_grad_(False)
    return model


def _build_random(cfg: BackboneConfig) -> Backbone:
    """``tiny`` or ``random:<name>``: the architecture with seeded random weights."""
    config = architecture_config(cfg)
    config._attn_implementation = cfg.attn_implementation
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        if device.type in ("cuda", "meta"):
            # Big models: initialise in place, in the target dtype (a float32 copy of a 7B model on
            # the GPU first would double the memory).
            with device:
                model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=dtype)
        else:
            # On CPU: initialise in float32, then cast, so a seed gives the same weights in any dtype.
            model = LlavaOnevisionForConditionalGeneration(config)
    model = cast(Any, model).to(device=device, dtype=dtype)
    specials = _tiny_special_ids() if cfg.source == "tiny" else dict(_QWEN2_SPECIAL_IDS)
    tokenizer = _local_tokenizer(specials)
    preprocessing = VideoPreprocessing(size=int(_sub(config, "vision_config").image_size))
    return Backbone(_freeze(model), tokenizer, LLAVA_OV_CHAT_TEMPLATE, preprocessing, cfg,
                    name=cfg.source if cfg.source.startswith("random:") else tiny_name(cfg))


def _read_json(source: str, filename: str, revision: str | None) -> dict[str, Any] | None:
    from transformers.utils import cached_file

    path = cached_file(source, filename, revision=revision, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def _read_chat_template(source: str, tokenizer: PreTrainedTokenizerBase, revision: str | None) -> str:
    """The processor's chat template (``chat_template.jinja`` / ``chat_template.json``), else the tokenizer's."""
    from transformers.utils import cached_file

    path = cached_file(source, "chat_template.jinja", revision=revision,
                       _raise_exceptions_for_missing_entries=False)
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    data = _read_json(source, "chat_template.json", revision)
    if data and isinstance(data.get("chat_template"), str):
        return str(data["chat_template"])
    if isinstance(tokenizer.chat_template, str) and "video" in tokenizer.chat_template:
        return tokenizer.chat_template
    log.warning("backbone %s has no video chat template; using LLaVA-OneVision's", source)
    return LLAVA_OV_CHAT_TEMPLATE


def _read_preprocessing(source: str, config: LlavaOnevisionConfig, revision: str | None) -> VideoPreprocessing:
    data = _read_json(source, "video_preprocessor_config.json", revision) or _read_json(
        source, "preprocessor_config.json", revision
    ) or {}
    image_size = int(_sub(config, "vision_config").image_size)
    size = data.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") or image_size
    if int(side) != image_size:
        raise ValueError(
            f"backbone {source}: the processor resizes to {side} but the vision tower expects {image_size}"
        )
    return VideoPreprocessing(
        size=image_size,
        mean=_triple(data.get("image_mean", _SIGLIP_MEAN), "image_mean", source),
        std=_triple(data.get("image_std", _SIGLIP_STD), "image_std", source),
        rescale_factor=float(data.get("rescale_factor", 1 / 255)),
    )


def _load_pretrained(cfg: BackboneConfig) -> Backbone:
    """A checkpoint from a local directory or the hub, in the HF layout."""
    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": cfg.attn_implementation,
                              "revision": cfg.revision}
    if device.type == "cuda":
        kwargs["device_map"] = str(device)  # load the shards straight onto the GPU
    local = Path(cfg.source).expanduser().is_dir()
    try:
        model = LlavaOnevisionForConditionalGeneration.from_pretrained(cfg.source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(cfg.source, revision=cfg.revision)
    except OSError as err:
        where = ("the local directory" if local else
                 "no local directory of that name, and the model hub (offline? no cache?) could not provide it")
        raise ValueError(f"BackboneConfig.source {cfg.source!r}: cannot load a checkpoint from {where}: {err}") from err
    model = cast(Any, model).to(device)
    chat_template = _read_chat_template(cfg.source, tokenizer, cfg.revision)
    preprocessing = _read_preprocessing(cfg.source, model.config, cfg.revision)
    name = str(Path(cfg.source).resolve()) if Path(cfg.source).is_dir() else cfg.source
    if cfg.revision:
        name += f"@{cfg.revision}"
    return Backbone(_freeze(model), tokenizer, chat_template, preprocessing, cfg, name=name)


def load_backbone(cfg: BackboneConfig) -> Backbone:
    """Build (``tiny``, ``random:<name>``) or load (directory, hub id) a frozen backbone.

    :meth:`BackboneConfig.check` runs first: a missing device or checkpoint directory is a clear
    ``ValueError``, not an error from deep inside torch or the hub client.
    """
    cfg.check()
    if cfg.source == "tiny" or cfg.source.startswith("random:"):
        backbone = _build_random(cfg)
    else:
        backbone = _load_pretrained(cfg)
    log.info(
        "backbone %s: %d decoder layers, hidden %d, %s on %s",
        backbone.name, backbone.num_layers, backbone.hidden_size, backbone.dtype, backbone.device,
    )
    return backbone


def save_tiny_checkpoint(directory: str | os.PathLike[str], cfg: BackboneConfig | None = None) -> Path:
    """Build the ``tiny`` backbone of ``cfg`` and save it in the HF layout to ``directory``.

    ``load_backbone(BackboneConfig(source=directory))`` then loads it through the same code path as a
    real LLaVA-OneVision checkpoint. Returns the directory.
    """
    cfg = cfg or BackboneConfig()
    if cfg.source != "tiny":
        raise ValueError(f"BackboneConfig.source must be 'tiny' to save a tiny checkpoint, got {cfg.source!r}")
    backbone = _build_random(cfg)
    backbone.save_pretrained(directory)
    (Path(directory) / "linkedout_backbone.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    return Path(directory)
