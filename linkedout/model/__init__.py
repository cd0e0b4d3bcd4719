"""The learning model: Cross-layer Knowledge-Fusion MoE item tower, sequence recommender, baselines.

``WarmColdRecommender`` (kind ``warmcold``) is LinkedOut plus an ID row for the videos seen in
training, the main job's default model. All recommenders follow ``base.Recommender``
(``encode_items``, ``user_states``, ``score``, ``param_groups``) and keep their ``ModelConfig`` as
``.config``; ``build_model`` builds any kind; ``linkedout.model.summary`` counts parameters per part.
"""

from linkedout.model.base import ItemEncoding, Recommender, gather_history, unique_items
from linkedout.model.baselines import Popularity, SASRecID
from linkedout.model.build import build_model
from linkedout.model.config import (
    FusionConfig,
    IDConfig,
    ImageConfig,
    ModelConfig,
    SequenceConfig,
    TextConfig,
)
from linkedout.model.fusion import CrossLayerFusion, FusionOutput
from linkedout.model.recommender import LinkedOutRecommender
from linkedout.model.towers import hash_title_tokens
from linkedout.model.warmcold import WarmColdRecommender

__all__ = [
    "CrossLayerFusion",
    "FusionConfig",
    "FusionOutput",
    "IDConfig",
    "ImageConfig",
    "ItemEncoding",
    "LinkedOutRecommender",
    "ModelConfig",
    "Popularity",
    "Recommender",
    "SASRecID",
    "SequenceConfig",
    "TextConfig",
    "WarmColdRecommender",
    "build_model",
    "gather_history",
    "hash_title_tokens",
    "unique_items",
]
