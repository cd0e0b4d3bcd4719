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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import cached_file

from linkedout.extraction.backbone_config import (
    QWEN2_SPECIAL_IDS,
    BackboneConfig,
    architecture_config,
    tiny_name,
    tiny_special_ids,
)
from linkedout.utils import get_logger

__all__ = [
    "LLAVA_OV_CHAT_TEMPLATE",
    "Backbone",
    "VideoPreprocessing",
    "load_backbone",
    "save_tiny_checkpoint",
]

log = get_logger(__name__)

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

# SigLIP's normalisation (what the LLaVA-OneVision checkpoints' preprocessor configs say).
_SIGLIP_MEAN = (0.5, 0.5, 0.5)
_SIGLIP_STD = (0.5, 0.5, 0.5)


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
    specials = tiny_special_ids() if cfg.source == "tiny" else dict(QWEN2_SPECIAL_IDS)
    tokenizer = _local_tokenizer(specials)
    preprocessing = VideoPreprocessing(size=int(_sub(config, "vision_config").image_size))
    return Backbone(_freeze(model), tokenizer, LLAVA_OV_CHAT_TEMPLATE, preprocessing, cfg,
                    name=cfg.source if cfg.source.startswith("random:") else tiny_name(cfg))


def _read_json(source: str, filename: str, revision: str | None) -> dict[str, Any] | None:
    path = cached_file(source, filename, revision=revision, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def _read_chat_template(source: str, tokenizer: PreTrainedTokenizerBase, revision: str | None) -> str:
    """The processor's chat template (``chat_template.jinja`` / ``chat_template.json``), else the tokenizer's."""
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
