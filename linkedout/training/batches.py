"""Training batches: deterministic, shardable order and one item-tower pass per distinct item.

``training_examples(split, max_history)`` gives ``inputs`` and ``targets`` (S, T), left-padded
(0 = padding): position ``t`` of ``inputs`` has seen items ``<= t`` and must predict
``targets[:, t]``. A batch of B rows holds many repeated items; ``BatchBuilder`` collects the
batch's *distinct* items (inputs, targets and BPR negatives; the whole catalogue for
``full_softmax``) with ``torch.unique`` once, loads their backbone features once (when the model
``needs_features``), and keeps each slot's inverse index so the item tower's output ``(U, d)``
is gathered back into ``(B, T, d)`` (``linkedout.model.base.gather_history``).

Order: epoch ``e`` visits the S rows in ``permutation(S)`` drawn from ``(seed, e)`` alone — not
from any global RNG — so a resumed run sees the same batches, and the ``world_size`` processes of
a DDP run agree on it. The permutation is cut into *global* batches of ``batch_size`` rows; rank
``r`` of ``W`` takes the ``r``-th of ``W`` near-equal contiguous slices of each, so the
concatenation of the ranks' shards (rank order) is exactly the single-process batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from linkedout.model.base import unique_items
from linkedout.training.losses import sample_negatives

FeatureFn = Callable[[Tensor], Tensor]


@dataclass
class Batch:
    """One process's share of a training batch (B rows, T positions, U distinct real items)."""

    inputs: Tensor  # (B, T) int64 history item indices, 0 = padding
    targets: Tensor  # (B, T) int64 next-item indices, 0 = no target at this position
    negatives: Tensor | None  # (B, T, n) int64 BPR negatives (0 where targets is 0), or None
    items: Tensor  # (U,) int64 sorted distinct real items (> 0) to encode; 1..N for full_softmax
    features: Tensor | None  # (U, L, K, D) backbone features of ``items`` when the model needs them
    inputs_inv: Tensor  # (B*T,) int64 row of each input slot in the padded table (see ``has_pad``)
    has_pad: bool  # whether row 0 of the item table is a padding row (``items`` then start at row 1)
    rows: Tensor  # (B,) int64 example rows of this batch (for debugging / tests)

    @property
    def num_sequences(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        def mv(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(inputs=mv(self.inputs), targets=mv(self.targets),
                     negatives=None if self.negatives is None else mv(self.negatives), items=mv(self.items),
                     features=None if self.features is None else mv(self.features),
                     inputs_inv=mv(self.inputs_inv), has_pad=self.has_pad, rows=mv(self.rows))


class ShardedOrder:
    """Which example rows each (epoch, batch, rank) gets; a pure function of the seed.

    ``num_batches`` global batches per epoch; the last, partial one is kept when it still gives every
    rank at least one row, else dropped (so all ranks run the same number of steps).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_examples < 1:
            raise ValueError("no training examples (every training sequence is shorter than 2 items?)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} of world_size {world_size}")
        if batch_size < world_size:
            raise ValueError(f"TrainConfig.batch_size ({batch_size}) must be >= the number of processes ({world_size})")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        full, rest = divmod(num_examples, batch_size)
        self.num_batches = full + (1 if rest >= world_size else 0)
        if self.num_batches == 0:
            raise ValueError(f"{num_examples} examples cannot fill one batch over {world_size} processes")

    def permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(self.num_examples)

    def rows(self, epoch: int, batch: int, perm: np.ndarray | None = None) -> np.ndarray:
        """This rank's rows (int64) of global batch ``batch`` of ``epoch``."""
        if not 0 <= batch < self.num_batches:
            raise IndexError(f"batch {batch} out of range 0..{self.num_batches - 1}")
        perm = self.permutation(epoch) if perm is None else perm
        global_rows = perm[batch * self.batch_size : (batch + 1) * self.batch_size]
        return np.array_split(global_rows, self.world_size)[self.rank].astype(np.int64)


class BatchBuilder:
    """Builds ``Batch``es from example tensors.

    ``features_fn`` maps item indices (U,) to features (U, L, K, D) (an ``ItemFeatures``); pass
    ``None`` for models that do not read features. ``loss`` decides what else goes in a batch:
    ``bpr`` adds ``num_negatives`` uniform negatives per position (drawn from ``(seed, epoch, step,
    rank)``), ``full_softmax`` encodes the whole catalogue ``1..num_items``.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        num_items: int,
        *,
        loss: str,
        features_fn: FeatureFn | None,
        num_negatives: int = 1,
        seed: int = 0,
        rank: int = 0,
    ):
        if inputs.shape != targets.shape or inputs.dim() != 2:
            raise ValueError(f"inputs and targets must both be (S, T), got {tuple(inputs.shape)}, {tuple(targets.shape)}")
        if int(inputs.max()) > num_items or int(targets.max()) > num_items or int(inputs.min()) < 0:
            raise ValueError(f"example item indices must be in 0..{num_items}")
        self.inputs = inputs.long()
        self.targets = targets.long()
        self.num_items = num_items
        self.loss = loss
        self.features_fn = features_fn
        self.num_negatives = num_negatives
        self.seed = seed
        self.rank = rank

    def build(self, rows: np.ndarray, epoch: int = 0, step: int = 0) -> Batch:
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        inputs = self.inputs[idx]  # (B, T)
        targets = self.targets[idx]  # (B, T)
        negatives = None
        if self.loss == "bpr":
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch, step, self.rank))
            negatives = sample_negatives(targets, self.num_items, self.num_negatives, gen)  # (B, T, n)
        if self.loss == "full_softmax":
            # the table is the whole catalogue 0..N, so an item's row is its index
            items = torch.arange(1, self.num_items + 1)
            inputs_inv, has_pad = inputs.reshape(-1), True
        else:
            parts = [inputs, targets] + ([negatives] if negatives is not None else [])
            uniq, (inputs_inv, *_) = unique_items(*parts)  # (U',), (B*T,)
            has_pad = bool(uniq[0] == 0)
            items = uniq[1:] if has_pad else uniq  # (U,)
        features = self.features_fn(items) if self.features_fn is not None else None
        return Batch(inputs=inputs, targets=targets, negatives=negatives, items=items, features=features,
                     inputs_inv=inputs_inv, has_pad=has_pad, rows=idx)


def iterate_batches(
    builder: BatchBuilder,
    order: ShardedOrder,
    epoch: int,
    *,
    start: int = 0,
    stop: int | None = None,
    step_offset: int = 0,
    num_workers: int = 0,
) -> Iterator[Batch]:
    """This rank's batches ``start..stop-1`` of ``epoch``, built ahead by ``num_workers`` threads.

    ``step_offset`` is the global optimiser step of batch 0 of the epoch (seeds the negatives).
    """
    stop = order.num_batches if stop is None else min(stop, order.num_batches)
    perm = order.permutation(epoch)

    def make(b: int) -> Batch:
        return builder.build(order.rows(epoch, b, perm), epoch, step_offset + b)

    if num_workers <= 0:
        for b in range(start, stop):
            yield make(b)
        return
    ahead = max(2, 2 * num_workers)
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="batches") as pool:
        pending: list[Future[Batch]] = []
        nxt = start
        while nxt < stop or pending:
            while nxt < stop and len(pending) < ahead:
                pending.append(pool.submit(make, nxt))
                nxt += 1
            yield pending.pop(0).result()


def steps_per_epoch(order: ShardedOrder, max_steps: int = 0) -> int:
    """Optimiser steps per epoch: all batches, or at most ``max_steps`` (> 0)."""
    return order.num_batches if max_steps <= 0 else min(order.num_batches, max_steps)


def _mix(*ints: int) -> int:
    """A 63-bit seed from several non-negative ints (stable across processes and runs)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(1, dtype=np.uint64)[0]) >> 1


__all__ = ["Batch", "BatchBuilder", "ShardedOrder", "iterate_batches", "steps_per_epoch"]
