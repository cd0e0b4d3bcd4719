"""The embedded default's artefacts, derived from the defaults alone (no run): the feature spec the tiny
backbone gives, the model config of the served variant, and the model repository's configs.

``model_repository/`` in git holds :func:`default_repository_configs`; a test regenerates and compares
them (``linkedout export --configs-only`` writes them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from linkedout.export import ExportConfig, config_pbtxt, encoder_name, ranker_name
from linkedout.export.graphs import encoder_spec, max_history, ranker_spec
from linkedout.extraction.backbone_config import BackboneConfig
from linkedout.extraction.extractor import ExtractionConfig
from linkedout.job.variants import DEFAULT_VARIANTS, model_config_for, parse_variant
from linkedout.model import build_model
from linkedout.shards import FeatureSpec


def default_feature_spec() -> Any:
    """The ``FeatureSpec`` of the embedded default: the tiny backbone with the default extraction config."""
    ecfg, bcfg = ExtractionConfig(), BackboneConfig()
    return FeatureSpec(backbone="tiny", layers=tuple(ecfg.layers), prompts=tuple(ecfg.prompts),
                       num_frames=ecfg.num_frames, frame_size=ecfg.frame_size, tokens=ecfg.tokens,
                       hidden=bcfg.tiny_text_hidden, dtype=ecfg.dtype)


def default_model_config() -> Any:
    """The ``ModelConfig`` of the model the main job trains and serves (``DEFAULT_VARIANTS[0]``)."""
    return model_config_for(parse_variant(DEFAULT_VARIANTS[0]), default_feature_spec())


def default_repository_configs(name: str = "linkedout") -> dict[str, str]:
    """``{relative path: config.pbtxt text}`` of the embedded default's model repository.

    The main job exports its default model (``DEFAULT_VARIANTS[0]``) under ``name``, on features of
    the tiny backbone with the default extraction config; ``model_repository/`` in git holds these
    files, and a test regenerates and compares them (``linkedout export --configs-only``).
    """
    spec = default_feature_spec()
    mcfg = default_model_config()
    n = 1000  # any catalogue gives the same configuration (the catalogue is not in the graphs)
    with torch.device("meta"):
        model = build_model(mcfg, n, np.ones(n + 1, dtype=np.int64))
    xcfg = ExportConfig(name=name)
    enc = encoder_spec(model, (len(spec.layers), spec.tokens, spec.hidden))
    rk = ranker_spec(max_history(model), mcfg.d_model)
    return {f"{encoder_name(name)}/config.pbtxt": config_pbtxt(encoder_name(name), enc, xcfg.triton),
            f"{ranker_name(name)}/config.pbtxt": config_pbtxt(ranker_name(name), rk, xcfg.triton)}
