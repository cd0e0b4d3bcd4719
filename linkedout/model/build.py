"""The model factory: ``build_model(cfg, num_items, item_counts=None, state_dict=None)`` builds any kind.

Kinds: ``linkedout`` and ``hybrid`` (:class:`~linkedout.model.recommender.LinkedOutRecommender`),
``warmcold`` (:class:`~linkedout.model.warmcold.WarmColdRecommender`), ``sasrec_id`` and
``popularity`` (:mod:`linkedout.model.baselines`). With the ``state_dict`` of a checkpoint (saved
beside ``cfg.to_dict()``) it rebuilds the trained model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import Tensor

from linkedout.model.base import Recommender
from linkedout.model.baselines import Popularity, SASRecID
from linkedout.model.config import COUNT_KINDS, ModelConfig
from linkedout.model.recommender import LinkedOutRecommender
from linkedout.model.warmcold import WarmColdRecommender

__all__ = ["build_model"]


def build_model(cfg: ModelConfig, num_items: int, item_counts: np.ndarray | None = None,
                state_dict: Mapping[str, Tensor] | None = None) -> Recommender:
    """Build the recommender of kind ``cfg.kind`` for a catalogue of ``num_items`` items (``1..N``).

    ``item_counts`` int [N+1] (training popularity) is needed by ``popularity`` and ``warmcold``
    (which ID rows were trained) unless ``state_dict`` is given. With ``state_dict`` (a checkpoint's),
    the weights and buffers are loaded strictly, so
    ``build_model(ModelConfig.from_dict(ckpt["model_config"]), N, state_dict=ckpt["model_state"])``
    rebuilds a trained model. Works under ``with torch.device("meta"):`` for parameter counting.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    model: Recommender
    if cfg.kind in COUNT_KINDS and item_counts is None and state_dict is None:
        raise ValueError(f"item_counts is required for ModelConfig.kind={cfg.kind!r} (or a state_dict)")
    if cfg.kind in LinkedOutRecommender.KINDS:
        model = LinkedOutRecommender(cfg, num_items)
    elif cfg.kind == "warmcold":
        model = WarmColdRecommender(cfg, num_items, item_counts)
    elif cfg.kind == "sasrec_id":
        model = SASRecID(cfg, num_items)
    else:
        counts = item_counts if item_counts is not None else np.zeros(num_items + 1, dtype=np.int64)
        model = Popularity(cfg, num_items, counts)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model
