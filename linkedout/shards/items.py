"""Item-index → backbone features, for the trainer and the evaluator.

The model numbers items ``1..N`` (``SplitData.item_ids``); the shard store keys videos by their
dataset id. ``ItemFeatures`` bridges the two and caches: the catalogue's features are loaded into
memory once when they fit in ``max_cache_bytes`` (the default embedded dataset does), otherwise
an LRU of single items is kept, so repeated batches do not hit the store again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from linkedout.utils import get_logger

log = get_logger(__name__)


class _Reader(Protocol):
    def get_many(self, ids: Sequence[str]) -> np.ndarray: ...

    def __contains__(self, video_id: object) -> bool: ...


class ItemFeatures:
    """Callable ``item_idx (M,) int64 -> features (M, L, K, D)`` over a ``FeatureReader``.

    ``item_ids[i]`` is the dataset id of item index ``i`` (index 0 is padding; its features are
    zeros and never used for scoring). Unknown items raise ``KeyError`` naming the id.
    """

    def __init__(
        self,
        reader: _Reader,
        item_ids: Sequence[str],
        *,
        max_cache_bytes: int = 2 << 30,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(item_ids) < 2:
            raise ValueError("ItemFeatures.item_ids must hold padding plus at least one item")
        missing = [i for i in item_ids[1:] if i not in reader]
        if missing:
            raise KeyError(
                f"{len(missing)} catalogue items have no stored features (first: {missing[:5]}); "
                "extract them or drop their interactions"
            )
        self.reader = reader
        self.item_ids = list(item_ids)
        self.dtype = dtype
        probe = reader.get_many([self.item_ids[1]])  # (1, L, K, D)
        self.shape = tuple(probe.shape[1:])
        itemsize = torch.empty((), dtype=dtype).element_size()
        total = len(self.item_ids) * int(np.prod(self.shape)) * itemsize
        self._table: Tensor | None = None
        self._lru: OrderedDict[int, Tensor] = OrderedDict()
        self._lock = threading.Lock()  # batch-building threads share the LRU
        self._lru_items = max(1, max_cache_bytes // max(1, int(np.prod(self.shape)) * itemsize))
        if total <= max_cache_bytes:
            feats = reader.get_many(self.item_ids[1:])  # (N, L, K, D)
            table = torch.zeros((len(self.item_ids), *self.shape), dtype=dtype)
            table[1:] = torch.from_numpy(np.asarray(feats, dtype=np.float32)).to(dtype)
            self._table = table
            log.info("cached features of %d items in memory (%.1f MB)", len(self.item_ids) - 1, total / 1e6)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def __call__(self, item_idx: Tensor) -> Tensor:
        """Features (M, L, K, D) of items ``item_idx`` (M,), on the CPU in ``self.dtype``."""
        idx = item_idx.detach().to("cpu", torch.long)
        if int(idx.min()) < 0 or int(idx.max()) >= len(self.item_ids):
            raise KeyError(f"item index out of range 0..{len(self.item_ids) - 1}")
        if self._table is not None:
            return self._table[idx]
        out = torch.zeros((idx.numel(), *self.shape), dtype=self.dtype)
        todo = [(pos, int(i)) for pos, i in enumerate(idx.tolist()) if i > 0]
        with self._lock:
            miss = sorted({i for _, i in todo if i not in self._lru})
            if miss:
                feats = self.reader.get_many([self.item_ids[i] for i in miss])
                for i, f in zip(miss, feats):
                    self._lru[i] = torch.from_numpy(np.asarray(f, dtype=np.float32)).to(self.dtype)
            for pos, i in todo:
                out[pos] = self._lru[i]
                self._lru.move_to_end(i)
            while len(self._lru) > max(self._lru_items, len(todo)):
                self._lru.popitem(last=False)
        return out
