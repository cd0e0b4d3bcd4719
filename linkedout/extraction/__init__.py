"""Offline feature extraction: videos -> frames -> frozen video LLM prefill -> ``(L, K, D)`` features.

- :mod:`.video`: ``decode_frames`` (PyAV, uniform sampling) and ``VideoDecodeError``.
- :mod:`.backbone_config`: ``BackboneConfig`` (which LLaVA-OneVision: tiny, random real
  architecture, local checkpoint or hub id) and ``architecture_config``.
- :mod:`.backbone`: ``load_backbone`` -> ``Backbone`` (the frozen model and its input pipeline),
  ``save_tiny_checkpoint``.
- :mod:`.compress`: order-preserving segment-mean token compression to ``K`` tokens.
- :mod:`.extractor`: ``ExtractionConfig``, ``LinkedOutExtractor`` (one prefill, early exit).
- :mod:`.driver`: ``extract_dataset`` (a dataset into a shard store: sharded, resumable, failures
  recorded by id).
- :mod:`.reconcile`: a shard store kept in step with its dataset's videos before an extraction.
- :mod:`.prefetch`: video decoding ahead of the model, in worker processes.

Submodules are imported on first use of their names, so ``linkedout.extraction.video`` and
``.prefetch`` (PyAV only; the decode worker processes import them) do not pull in torch and
transformers. Hence the names below are imported for type checkers only and resolved by
``__getattr__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names for type checkers; at run time __getattr__ imports their module on first use
    from linkedout.extraction.backbone import (  # lazy: torch and transformers
        Backbone,
        VideoPreprocessing,
        load_backbone,
        save_tiny_checkpoint,
    )
    from linkedout.extraction.backbone_config import (  # lazy: torch and transformers
        RANDOM_ARCHITECTURES,
        BackboneConfig,
        architecture_config,
    )
    from linkedout.extraction.compress import find_spans, pooling_weights, segment_pool  # lazy: torch
    from linkedout.extraction.driver import ExtractionSummary, extract_dataset  # lazy: torch and transformers
    from linkedout.extraction.extractor import (  # lazy: torch and transformers
        DEFAULT_PROMPTS,
        ExtractionConfig,
        LinkedOutExtractor,
        feature_spec,
    )
    from linkedout.extraction.video import VideoDecodeError, decode_frames, sample_indices  # lazy: PyAV

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
    **dict.fromkeys(["Backbone", "VideoPreprocessing", "load_backbone", "save_tiny_checkpoint"], "backbone"),
    **dict.fromkeys(["RANDOM_ARCHITECTURES", "BackboneConfig", "architecture_config"], "backbone_config"),
    **dict.fromkeys(["find_spans", "pooling_weights", "segment_pool"], "compress"),
    **dict.fromkeys(["DEFAULT_PROMPTS", "ExtractionConfig", "LinkedOutExtractor", "feature_spec"], "extractor"),
    **dict.fromkeys(["ExtractionSummary", "extract_dataset"], "driver"),
    **dict.fromkeys(["VideoDecodeError", "decode_frames", "sample_indices"], "video"),
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
