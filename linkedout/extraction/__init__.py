"""Offline feature extraction: videos -> frames -> frozen video LLM prefill -> ``(L, K, D)`` features.

- :mod:`.video`: ``decode_frames`` (PyAV, uniform sampling) and ``VideoDecodeError``.
- :mod:`.backbone`: ``BackboneConfig``, ``load_backbone`` -> ``Backbone`` (LLaVA-OneVision: tiny,
  random real architecture, local checkpoint or hub id), ``save_tiny_checkpoint``.
- :mod:`.compress`: order-preserving segment-mean token compression to ``K`` tokens.
- :mod:`.extractor`: ``ExtractionConfig``, ``LinkedOutExtractor`` (one prefill, early exit) and
  ``extract_dataset`` (sharded, resumable, failures recorded by id).

Submodules are imported on first use of their names, so ``linkedout.extraction.video`` (PyAV only)
does not pull in torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linkedout.extraction.backbone import (
        RANDOM_ARCHITECTURES,
        Backbone,
        BackboneConfig,
        VideoPreprocessing,
        architecture_config,
        load_backbone,
        save_tiny_checkpoint,
    )
    from linkedout.extraction.compress import find_spans, pooling_weights, segment_pool
    from linkedout.extraction.extractor import (
        DEFAULT_PROMPTS,
        ExtractionConfig,
        ExtractionSummary,
        LinkedOutExtractor,
        extract_dataset,
        feature_spec,
    )
    from linkedout.extraction.video import VideoDecodeError, decode_frames, sample_indices

__all__ = [
    "DEFAULT_PROMPTS",
    "RANDOM_ARCHITECTURES",
    "Backbone",
    "BackboneConfig",
    "ExtractionConfig",
    "ExtractionSummary",
    "LinkedOutExtractor",
    "VideoDecodeError",
    "VideoPreprocessing",
    "architecture_config",
    "decode_frames",
    "extract_dataset",
    "feature_spec",
    "find_spans",
    "load_backbone",
    "pooling_weights",
    "sample_indices",
    "save_tiny_checkpoint",
    "segment_pool",
]

_HOME = {
    **dict.fromkeys(["RANDOM_ARCHITECTURES", "Backbone", "BackboneConfig", "VideoPreprocessing",
                     "architecture_config", "load_backbone", "save_tiny_checkpoint"], "backbone"),
    **dict.fromkeys(["find_spans", "pooling_weights", "segment_pool"], "compress"),
    **dict.fromkeys(["DEFAULT_PROMPTS", "ExtractionConfig", "ExtractionSummary", "LinkedOutExtractor",
                     "extract_dataset", "feature_spec"], "extractor"),
    **dict.fromkeys(["VideoDecodeError", "decode_frames", "sample_indices"], "video"),
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
