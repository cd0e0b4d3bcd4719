"""Feast in the main job: the repository of a work directory (rendered, applied), the training data read back
from its offline store (:func:`training_data`), and the users' histories and a model version's
videos written to it (:func:`push_to_feast`).

The dataset's interactions are the offline store's part ``dataset`` (replaced when the dataset's
tables change); what the serving side pushes (live watches) are other parts and stay, so the next
training sees them. Each step records what it wrote (a stamp in the repository) and writes nothing
on a re-run of the same job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from linkedout.data.microlens import load_microlens
from linkedout.export import ModelRepository, ranker_name
from linkedout.featurestore import (
    FeastSettings,
    apply,
    histories_from_interactions,
    open_repo,
    publish_catalog,
    read_interactions,
    render_repo,
    write_histories,
    write_interactions,
)
from linkedout.featurestore.definitions import INTERACTIONS
from linkedout.featurestore.offline import list_parts
from linkedout.fingerprint import StageMismatch
from linkedout.job.dataset import dataset_digest
from linkedout.job.split import build_split
from linkedout.job.step import step
from linkedout.utils import atomic_write_text, get_logger
from linkedout.workdir import Workdir

log = get_logger(__name__)

OFFLINE_STAMP = "linkedout_offline_dataset.json"
PUBLISHED_STAMP = "linkedout_published.json"


def feast_location(workdir: str | Path, feast_repo: str = "") -> Path:
    """The Feast repository of a run: ``feast_repo``, or ``W/feast``."""
    return Path(feast_repo) if feast_repo else Workdir.of(workdir).feast


def open_feast(feast_dir: Path, settings: Any = None) -> Any:
    """The Feast repository in ``feast_dir``, rendered first if there is none (``settings``: a
    ``FeastSettings``, default the local environment), with its definitions applied."""
    if not (feast_dir / "feature_store.yaml").is_file():
        render_repo(feast_dir, settings if settings is not None else FeastSettings(environment="local"))
    repo = open_repo(feast_dir)
    apply(repo)
    return repo


def publish_features(data: Path, repository: str | os.PathLike[str], feast_dir: str | os.PathLike[str], *,
                     name: str, version: int | None = None, settings: Any = None) -> dict[str, Any]:
    """Write a work directory's Feast store from the dataset and a published catalogue version.

    The repository at ``feast_dir`` is rendered (``settings``: a ``FeastSettings``, default the local
    environment: parquet files + SQLite) unless it exists, then applied; the dataset's interactions go
    to the offline store (the training data of the next run), each user's last 10 watches to the online
    ``user_history`` view, and the videos of ``NAME_ranker`` version ``version`` (default: the latest)
    with their embeddings, gates and metadata to ``video_meta`` / ``video_embedding``, under the
    FeatureService ``NAME_vV``. Safe to run again (newer rows win). Returns a summary.
    """
    feast_dir = Path(feast_dir)
    repo = open_feast(feast_dir, settings)
    dataset = load_microlens(data, check_videos=False)
    write_interactions(repo, dataset.interactions, part="dataset")
    histories = histories_from_interactions(dataset.interactions)
    write_histories(repo, histories)
    vdir = ModelRepository(repository).version_dir(ranker_name(name), version)
    service = publish_catalog(repo, vdir, titles=dataset.titles)
    summary = {"feast": str(feast_dir), "users": len(histories), "videos_version": int(vdir.name),
               "service": service.name, "online": repo.online_address}
    log.info("feast %s: %d user histories, %s videos of %s v%s", feast_dir, len(histories), name, name, vdir.name)
    return summary


def features_published(feast_dir: Path, stamp: dict[str, Any]) -> bool:
    f = Path(feast_dir) / PUBLISHED_STAMP
    return f.is_file() and json.loads(f.read_text()) == stamp


def publish_features_once(data: Path, repository: Path, feast_dir: Path, *, name: str, version: int,
                          settings: Any = None) -> dict[str, Any]:
    """:func:`publish_features` unless this dataset and this version of ``name`` are already published there.

    The stamp ``FEAST/linkedout_published.json`` records the dataset's tables and the version; a
    re-run of the same job writes nothing. Returns the stamp and whether it was written now.
    """
    stamp = {"dataset": dataset_digest(data), "model": name, "version": int(version)}
    if features_published(feast_dir, stamp):
        log.info("feast %s already holds %s version %d of this dataset", feast_dir, name, version)
        return {**stamp, "written": False, "feast": str(feast_dir)}
    summary = publish_features(data, repository, feast_dir, name=name, version=version, settings=settings)
    atomic_write_text(Path(feast_dir) / PUBLISHED_STAMP, json.dumps(stamp, indent=2))
    return {**stamp, **summary, "written": True}


# --------------------------------------------------------------------------- training data from Feast

def training_interactions(data: Path, feast_dir: Path, *, settings: Any = None,
                          force: bool = False) -> pd.DataFrame:
    """The training interactions, as Feast's offline store serves them, with the dataset's written there first.

    The Feast repository at ``feast_dir`` is rendered (``settings``, default the local environment)
    unless it exists. The dataset's interactions are written to the offline ``interactions`` table
    as the part ``dataset`` (replaced when the dataset's tables changed, untouched otherwise); the
    other parts (live watches pushed by the serving side) stay, so the training data is the
    dataset plus what users watched since. A store whose interactions came from another dataset
    (another name) is refused with :class:`linkedout.fingerprint.StageMismatch`; ``force`` deletes
    every interactions part first. Returns ``user, item, timestamp`` rows sorted as linkedout/data
    sorts them (:func:`linkedout.featurestore.read_interactions`).
    """
    feast_dir = Path(feast_dir)
    repo = open_feast(feast_dir, settings)
    digest = dataset_digest(data)
    stamp_path = feast_dir / OFFLINE_STAMP
    old = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    if old is not None and old != digest:
        if old.get("prefix") != digest["prefix"] and not force:
            raise StageMismatch(str(feast_dir), "the offline interactions of another dataset",
                                [f"dataset: {old.get('prefix')!r} -> {digest['prefix']!r}"],
                                "Use another --workdir (or feast repository), or --force to delete its interactions.")
        if force:
            storage = repo.offline_storage()
            parts = list_parts(repo, INTERACTIONS)
            for key in parts:
                storage.delete(key)
            log.warning("--force: deleted the %d interactions parts of %s (another dataset's)", len(parts), feast_dir)
    if old != digest or not list_parts(repo, INTERACTIONS):
        dataset = load_microlens(data, check_videos=False)
        write_interactions(repo, dataset.interactions, part="dataset")
        atomic_write_text(stamp_path, json.dumps(digest, indent=2))
    return read_interactions(repo)


# ----------------------------------------------------------------------------------- the steps


@step("training-data")
def training_data(workdir: str, data: str, features: str, feast_repo: str = "", force: bool = False,
                  s3_endpoint: str = "") -> dict[str, Any]:
    """The training data from Feast's offline store (the dataset's interactions written there first, then
    read back through Feast) -> the leave-one-out split at ``W/split`` (reused when its inputs are the same)."""
    inter = training_interactions(Path(data), feast_location(workdir, feast_repo), force=force)
    split = build_split(Path(data), features, cache_dir=Workdir.of(workdir).split, s3_endpoint=s3_endpoint or None,
                        interactions=inter)
    return {"split": str(Workdir.of(workdir).split), "digest": split.digest(), "users": len(split.test.user_ids),
            "videos": split.num_items, "interactions": len(inter)}


@step("push-to-feast")
def push_to_feast(workdir: str, data: str, model_name: str, version: int, feast_repo: str = "") -> dict[str, Any]:
    """The users' histories and the version's video embeddings and metadata into Feast (once per dataset and version)."""
    return publish_features_once(Path(data), Workdir.of(workdir).model_repository, feast_location(workdir, feast_repo),
                                         name=model_name, version=int(version))
