"""Training: ``TrainConfig``, losses, batching, the ``Trainer`` loop, checkpoints and DDP.

``Trainer(model, split, item_features, cfg, run_dir).fit() -> TrainResult`` trains any
``linkedout.model.base.Recommender``; ``load_model_from_checkpoint(path)`` rebuilds a trained model
from its checkpoint alone. Under ``torchrun`` use ``python -m linkedout.training.distributed``.
"""

from linkedout.training.batches import Batch, BatchBuilder, ShardedOrder, iterate_batches
from linkedout.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    save_checkpoint,
)
from linkedout.training.config import LOSSES, TrainConfig
from linkedout.training.ddp import DistContext, init_distributed
from linkedout.training.losses import (
    bpr_loss,
    full_softmax_loss,
    inbatch_logq_loss,
    log_popularity,
    sample_negatives,
)
from linkedout.training.trainer import Trainer, TrainResult, default_evaluate

__all__ = [
    "LOSSES",
    "Batch",
    "BatchBuilder",
    "CheckpointError",
    "DistContext",
    "ShardedOrder",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "bpr_loss",
    "default_evaluate",
    "full_softmax_loss",
    "inbatch_logq_loss",
    "init_distributed",
    "iterate_batches",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "log_popularity",
    "sample_negatives",
    "save_checkpoint",
]
