"""Dataset statistics (``linkedout data stats``): sizes, sequence lengths, popularity, cold start.

``dataset_stats`` accepts a :class:`MicroLensDataset`, a raw interactions DataFrame or a
:class:`SplitData`. For the first two, the raw numbers are followed by those after MicroLens
preprocessing and the leave-one-out split (section ``"split"``), which is where the cold-start test
items are counted. The result is a plain JSON-serialisable dict.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from linkedout.data.microlens import MicroLensDataset
from linkedout.data.split import SplitData, leave_one_out, preprocess

LENGTH_BINS: tuple[tuple[int, int | None], ...] = (
    (1, 1), (2, 4), (5, 9), (10, 13), (14, 20), (21, 50), (51, 100), (101, None),
)


def dataset_stats(data: MicroLensDataset | SplitData | pd.DataFrame, *, min_interactions: int = 5,
                  max_interactions: int = 13, max_history: int = 10) -> dict[str, Any]:
    """Users, items, interactions, sequence-length and popularity distributions, cold-start share.

    Keys: ``source``, ``name``, ``users``, ``items`` (catalogue), ``interacted_items``,
    ``interactions``, ``density``, ``sequence_length`` (min/median/mean/max/histogram),
    ``popularity`` (gini, head/tail shares), and ``split`` (after preprocessing: users, items,
    train/valid/test sizes, cold-start test items and their share of test targets).
    """
    if isinstance(data, SplitData):
        return _split_only(data)
    if isinstance(data, MicroLensDataset):
        interactions, catalog, name, source = data.interactions, data.item_ids, data.prefix, "dataset"
    elif isinstance(data, pd.DataFrame):
        interactions, catalog, name, source = data, None, "", "interactions"
    else:
        raise TypeError(f"dataset_stats needs a MicroLensDataset, SplitData or DataFrame, got {type(data).__name__}")
    lengths = interactions.groupby("user", sort=False).size().to_numpy()
    counts = interactions["item"].value_counts().to_numpy()
    n_items = len(catalog) if catalog is not None else len(counts)
    out: dict[str, Any] = {
        "source": source,
        "name": name,
        "users": len(lengths),
        "items": n_items,
        "interacted_items": len(counts),
        "interactions": len(interactions),
        "density": _density(len(interactions), len(lengths), n_items),
        "sequence_length": _length_stats(lengths),
        "popularity": _popularity(counts),
    }
    pre = preprocess(interactions, min_interactions=min_interactions, max_interactions=max_interactions)
    if pre.empty:
        out["split"] = {"users": 0, "note": f"no user has >= {min_interactions} interactions"}
    else:
        split = leave_one_out(pre, max_history=max_history, catalog=catalog)
        out["split"] = _split_section(split, min_interactions, max_interactions)
    return out


def format_stats(d: dict[str, Any]) -> str:
    """A readable text block of :func:`dataset_stats`' output."""
    lines = [f"dataset {d.get('name') or '(unnamed)'} [{d.get('source', '?')}]"]
    for key in ("users", "items", "interacted_items", "interactions"):
        if key in d:
            lines.append(f"  {key:<22}{d[key]:>12,}")
    if "density" in d:
        lines.append(f"  {'density':<22}{d['density']:>12.6f}")
    if "sequence_length" in d:
        sl = d["sequence_length"]
        lines.append(f"  sequence length        min {sl['min']}, median {sl['median']:g}, mean {sl['mean']:.2f}, "
                     f"max {sl['max']}")
        total = max(1, sum(sl["histogram"].values()))
        for label, n in sl["histogram"].items():
            bar = "#" * round(40 * n / total)
            lines.append(f"    {label:>8} {n:>9,} {bar}")
    if "popularity" in d:
        p = d["popularity"]
        lines.append(f"  popularity             gini {p['gini']:.3f}; top 1% items {p['top1pct_share']:.1%}, "
                     f"top 20% items {p['top20pct_share']:.1%}, bottom 50% items {p['bottom50pct_share']:.1%} "
                     "of interactions")
        lines.append(f"                         items with one interaction: {p['items_with_one_interaction']:,}; "
                     f"max count {p['max_count']:,}, median {p['median_count']:g}")
    s = d.get("split")
    if s:
        if "note" in s:
            lines.append(f"  split                  {s['note']}")
        else:
            if "min_interactions" in s:
                lines.append(f"  after preprocessing    (>= {s['min_interactions']} interactions, last "
                             f"{s['max_interactions']} kept, leave-one-out)")
            else:
                lines.append("  leave-one-out split")
            for key in ("users", "items", "train_interactions"):
                lines.append(f"    {key:<20}{s[key]:>12,}")
            lines.append(f"    cold-start test      {s['cold_test_targets']:,} targets "
                         f"({s['cold_test_fraction']:.2%} of test), {s['cold_test_items']:,} distinct items")
            lines.append(f"    cold-start valid     {s['cold_valid_targets']:,} targets "
                         f"({s['cold_valid_fraction']:.2%} of validation)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def _density(interactions: int, users: int, items: int) -> float:
    return float(interactions / (users * items)) if users and items else 0.0


def _length_stats(lengths: np.ndarray) -> dict[str, Any]:
    if len(lengths) == 0:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0, "histogram": {}}
    hist: dict[str, int] = {}
    for lo, hi in LENGTH_BINS:
        label = f"{lo}" if hi == lo else (f"{lo}+" if hi is None else f"{lo}-{hi}")
        sel = (lengths >= lo) if hi is None else ((lengths >= lo) & (lengths <= hi))
        hist[label] = int(sel.sum())
    return {"min": int(lengths.min()), "median": float(np.median(lengths)), "mean": float(lengths.mean()),
            "max": int(lengths.max()), "histogram": hist}


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = equal, -> 1 = concentrated on one item)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    cum = np.cumsum(x)
    return float((n + 1 - 2 * (cum / cum[-1]).sum()) / n)


def _popularity(counts: np.ndarray) -> dict[str, Any]:
    """Shares of interactions held by the most / least popular items (over interacted items)."""
    c = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
    total = max(1, int(c.sum()))
    n = len(c)

    def top(frac: float) -> float:
        return float(c[: max(1, int(np.ceil(frac * n)))].sum() / total) if n else 0.0

    return {
        "gini": gini(c),
        "top1pct_share": top(0.01),
        "top10pct_share": top(0.10),
        "top20pct_share": top(0.20),
        "bottom50pct_share": float(c[n - n // 2:].sum() / total) if n else 0.0,
        "items_with_one_interaction": int((c == 1).sum()),
        "max_count": int(c.max()) if n else 0,
        "median_count": float(np.median(c)) if n else 0.0,
    }


def _split_section(split: SplitData, min_interactions: int | None, max_interactions: int | None) -> dict[str, Any]:
    cold_items = np.unique(split.test.targets[split.test.cold])
    n_test, n_valid = len(split.test), len(split.valid)
    out: dict[str, Any] = {
        "users": len(split.user_ids),
        "items": split.num_items,
        "train_interactions": int(sum(len(s) for s in split.train_sequences)),
        "valid_targets": n_valid,
        "test_targets": n_test,
        "cold_test_items": len(cold_items),
        "cold_test_targets": int(split.test.cold.sum()),
        "cold_test_fraction": float(split.test.cold.mean()) if n_test else 0.0,
        "cold_valid_targets": int(split.valid.cold.sum()),
        "cold_valid_fraction": float(split.valid.cold.mean()) if n_valid else 0.0,
    }
    if min_interactions is not None:
        out["min_interactions"] = min_interactions
        out["max_interactions"] = max_interactions
    return out


def _split_only(split: SplitData) -> dict[str, Any]:
    histories = list(split.user_full_history.values())
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    flat = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    counts = np.bincount(flat, minlength=split.num_items + 1)[1:]
    counts = counts[counts > 0]
    return {
        "source": "split",
        "name": "",
        "users": len(split.user_ids),
        "items": split.num_items,
        "interacted_items": len(counts),
        "interactions": int(lengths.sum()),
        "density": _density(int(lengths.sum()), len(lengths), split.num_items),
        "sequence_length": _length_stats(lengths),
        "popularity": _popularity(counts),
        "split": _split_section(split, None, None),
    }
