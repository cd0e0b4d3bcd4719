"""The leave-one-out split the main job trains and evaluates on, over the videos that have features.

MicroLens preprocessing (users with fewer than ``MIN_INTERACTIONS`` dropped, each user's last
``MAX_INTERACTIONS`` kept), then the last interaction of each user is the test target and the one
before it the validation target. The split is cached with its fingerprint (the dataset's tables,
the feature shards' content, the interactions read from Feast) and rebuilt when they change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from linkedout.data.microlens import DatasetError, load_microlens
from linkedout.data.split import SplitData, leave_one_out, preprocess
from linkedout.extraction.reconcile import check_store_dataset
from linkedout.fingerprint import Fingerprint, read_fingerprint, write_fingerprint
from linkedout.job.dataset import (
    MAX_HISTORY,
    MAX_INTERACTIONS,
    MIN_INTERACTIONS,
    check_trainable,
    dataset_digest,
)
from linkedout.shards import FeatureReader
from linkedout.shards.verify import store_digest
from linkedout.utils import get_logger

log = get_logger(__name__)


def load_split(split: str | Path) -> SplitData:
    """The split a training-data step saved at ``split``."""
    return SplitData.load(split)


def interactions_digest(interactions: pd.DataFrame) -> str:
    """sha256 of an interactions table's rows (``user, item, timestamp``, in order)."""
    rows = pd.util.hash_pandas_object(interactions[["user", "item", "timestamp"]], index=False)
    return hashlib.sha256(rows.to_numpy().tobytes()).hexdigest()


def build_split(data: Path, features: str | None, cache_dir: Path | None = None, *,
                s3_endpoint: Any = None, interactions: pd.DataFrame | None = None) -> SplitData:
    """MicroLens preprocessing and leave-one-out split, over the videos that have features.

    Videos whose extraction failed (corrupt files) have no features: their interactions are dropped
    before preprocessing, and how many is logged, so that every model is compared on the same split.
    The split is cached in ``cache_dir`` with its fingerprint (the dataset's tables and the feature
    store's content) and rebuilt when they change.

    ``interactions``: the interactions to split (``user, item, timestamp`` as linkedout/data holds
    them, e.g. read back from Feast's offline store) instead of the dataset's own table; the
    catalogue is still the dataset's, and the interactions' content is part of the fingerprint.
    """
    dataset = load_microlens(data, check_videos=False)
    catalog = list(dataset.item_ids)
    inputs: dict[str, Any] = {"dataset": dataset_digest(Path(data)), "features": None,
                              "preprocess": [MIN_INTERACTIONS, MAX_INTERACTIONS, MAX_HISTORY]}
    if interactions is not None:
        inputs["interactions"] = interactions_digest(interactions)
    if features is not None:
        reader = FeatureReader(features, endpoint_url=s3_endpoint)
        if not reader.storage.exists("index.json"):
            raise ValueError(f"feature store {features} is incomplete (no index.json: extraction is still "
                             "running or was stopped); finish it with `linkedout extract` first")
        check_store_dataset(reader, dataset, catalog)
        have = set(reader.ids)
        inputs["features"] = store_digest(reader)
        missing = [i for i in catalog if i not in have]
        if missing:
            log.warning("%d videos have no features (failed extraction: %s%s); their interactions are dropped",
                        len(missing), ", ".join(missing[:5]), " ..." if len(missing) > 5 else "")
            catalog = [i for i in catalog if i in have]
    fp = Fingerprint("split", inputs)
    if cache_dir is not None and (cache_dir / "split.json").is_file():
        stored = read_fingerprint(cache_dir)
        if stored is not None and stored.digest == fp.digest:
            return SplitData.load(cache_dir)
        if stored is not None:
            log.info("the split in %s is stale (%s); rebuilding it", cache_dir, "; ".join(stored.diff(fp)[:4]))
    inter = dataset.interactions if interactions is None else interactions
    inter = inter[inter["item"].isin(set(catalog))]
    pre = preprocess(inter, MIN_INTERACTIONS, MAX_INTERACTIONS)
    if pre.empty:
        check_trainable(inter, f"dataset {data}" + (" (videos with features only)" if features else ""))
        raise DatasetError(f"dataset {data}: no interactions left after preprocessing")
    split = leave_one_out(pre, max_history=MAX_HISTORY, catalog=catalog)
    if cache_dir is not None:
        split.save(cache_dir)
        write_fingerprint(cache_dir, fp)
    return split
