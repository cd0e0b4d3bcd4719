"""The frozen LLaVA-OneVision backbone: tiny build, determinism, checkpoint round trip, 7B config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from linkedout.extraction import (
    BackboneConfig,
    ExtractionConfig,
    LinkedOutExtractor,
    load_backbone,
    save_tiny_checkpoint,
)
from linkedout.extraction.backbone import Backbone

TINY = BackboneConfig(tiny_image_size=56, device="cpu")
CFG = ExtractionConfig(num_frames=2, frame_size=56, tokens=8, text_tokens=2, layers=(0, 4, 20))


def frames(seed: int = 0, batch: int = 2, num_frames: int = 2, size: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, num_frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone(TINY)


def test_tiny_architecture(tiny: Backbone) -> None:
    config: Any = tiny.model.config
    assert type(tiny.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert config.vision_config.model_type == "siglip_vision_model"
    assert config.text_config.model_type == "qwen2"
    assert tiny.num_layers == 24 and tiny.hidden_size == 64
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"


def test_backbone_is_frozen(tiny: Backbone) -> None:
    assert not tiny.model.training
    assert all(not m.training for m in tiny.model.modules())
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_same_seed_same_features_other_seed_other_features(tiny: Backbone) -> None:
    again = load_backbone(TINY)
    other = load_backbone(BackboneConfig(tiny_image_size=56, device="cpu", seed=1))
    video = frames()
    a = LinkedOutExtractor(tiny, CFG).encode(video)
    b = LinkedOutExtractor(again, CFG).encode(video)
    c = LinkedOutExtractor(other, CFG).encode(video)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert again.name == tiny.name != other.name


def test_prompt_ids_follow_the_chat_template(tiny: Backbone) -> None:
    prompts = ("Which objects appear in this video?", "What is the mood?")
    ids = tiny.prompt_ids(prompts, num_frames=3)
    # 56 px / patch 14 = 4x4 patches, pooled 2x2 per frame, plus one newline token.
    assert tiny.video_tokens(3) == 3 * 2 * 2 + 1
    assert int((ids == tiny.video_token_id).sum()) == tiny.video_tokens(3)
    text = str(tiny.tokenizer.decode(ids))
    assert text.startswith("<|im_start|>user <video>")
    assert text.endswith("\nWhich objects appear in this video?\nWhat is the mood?<|im_end|>\n<|im_start|>assistant\n")


def test_pixel_values_resize_and_normalise(tiny: Backbone) -> None:
    white = np.full((1, 2, 32, 32, 3), 255, np.uint8)
    pixels = tiny.pixel_values(white)
    assert pixels.shape == (1, 2, 3, 56, 56)
    torch.testing.assert_close(pixels, torch.ones_like(pixels))  # (1 - 0.5) / 0.5
    with pytest.raises(ValueError, match=r"\(B, F, H, W, 3\)"):
        tiny.pixel_values(np.zeros((2, 32, 32, 3), np.uint8))


def test_saved_checkpoint_loads_with_identical_features(tiny: Backbone, tmp_path: Path) -> None:
    directory = save_tiny_checkpoint(tmp_path / "ckpt", TINY)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "video_preprocessor_config.json", "processor_config.json"):
        assert (directory / name).is_file(), name
    assert json.loads((directory / "config.json").read_text())["model_type"] == "llava_onevision"
    loaded = load_backbone(BackboneConfig(source=str(directory), device="cpu"))
    assert loaded.chat_template == tiny.chat_template
    assert loaded.preprocessing == tiny.preprocessing
    assert torch.equal(loaded.prompt_ids(CFG.prompts, 2), tiny.prompt_ids(CFG.prompts, 2))
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    video = frames(seed=3)
    np.testing.assert_array_equal(
        LinkedOutExtractor(loaded, CFG).encode(video), LinkedOutExtractor(tiny, CFG).encode(video)
    )


def test_missing_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"BackboneConfig\.source"):
        load_backbone(BackboneConfig(source=str(tmp_path / "empty"), device="cpu"))


def test_real_7b_architecture_on_meta_device() -> None:
    backbone = load_backbone(BackboneConfig(source="random:llava-onevision-qwen2-7b", device="meta"))
    config: Any = backbone.model.config
    assert backbone.device.type == "meta"
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (3584, 28)
    assert (config.text_config.num_key_value_heads, config.text_config.vocab_size) == (4, 152128)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1152, 26, 384, 14)
    assert backbone.video_token_id == 151647
    assert backbone.video_tokens(8) == 8 * 14 * 14 + 1  # 27x27 patches pooled to 14x14 per frame
    params = sum(p.numel() for p in backbone.model.parameters())
    assert 7.9e9 < params < 8.1e9, params  # LLaVA-OneVision-7B has 8.03 B parameters
    assert backbone.dtype == torch.float32  # "auto" off CUDA


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dtype": "float64"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"tiny_text_layers": 12}, "tiny_text_layers"),
        ({"tiny_image_size": 50}, "tiny_image_size"),
        ({"source": "random:gpt-5"}, "source"),
        ({"source": ""}, "source"),
        ({"device": "meta"}, "device"),
        ({"attn_implementation": "magic"}, "attn_implementation"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"BackboneConfig.{field}"):
        BackboneConfig(**kwargs)


def test_auto_dtype() -> None:
    assert BackboneConfig(device="cpu").resolved_dtype() == torch.float32
    assert BackboneConfig(device="cuda").resolved_dtype() == torch.bfloat16
    assert BackboneConfig(device="cuda", dtype="float16").resolved_dtype() == torch.float16


def test_pixel_values_need_uint8(tiny: Backbone) -> None:
    with pytest.raises(ValueError, match="uint8"):
        tiny.pixel_values(np.zeros((1, 2, 56, 56, 3), np.float32))
