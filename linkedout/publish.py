"""Publishing a trained model: the model repository, the Feast store, live catalogue additions.

The stages after training, shared by the main job, the CLI (``linkedout export``, ``linkedout catalog
add``) and the Kubeflow components:

- ``export_run``: a trained run's best checkpoint and its catalogue -> a new version of
  ``NAME_encoder`` and ``NAME_ranker`` in a Triton model repository (``linkedout.export``);
- ``publish_features``: the Feast repository of a work directory (rendered and applied), the
  interactions (offline: the training data), the users' histories (online) and the catalogue
  version's videos with their embeddings, one FeatureService per published version;
- ``add_videos``: new video files -> features with the store's own extraction config -> a new
  catalogue version (no retraining) -> Feast, loaded by a running local stack at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.pipeline import (
    DEFAULT_VARIANTS,
    _checkpoint_of,
    build_split,
    item_features_for,
    model_config_for,
    parse_variant,
)
from linkedout.utils import get_logger

log = get_logger(__name__)

__all__ = ["default_feature_spec", "default_model_config", "default_repository_configs", "export_run",
           "publish_features"]


def export_run(data: Path, features: str | None, run_dir: Path, repository: str | os.PathLike[str], *,
               name: str | None = None, config: Any = None, s3_endpoint: str | None = None, split: Any = None,
               item_features: Any = None) -> Any:
    """Export a trained run's best checkpoint and its catalogue into a Triton model repository.

    The catalogue is the split's videos (those with features), in the model's item order, with their
    training popularity and publish time (a MicroLens video's first interaction). Returns the
    ``linkedout.export.ExportResult``.
    """
    from linkedout.data.microlens import load_microlens
    from linkedout.export import ExportConfig, export_model
    from linkedout.training.checkpoint import load_model_from_checkpoint

    run_dir = Path(run_dir)
    ckpt = _checkpoint_of(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if split is None:
        split = build_split(data, features, s3_endpoint=s3_endpoint)
    model: Any = load_model_from_checkpoint(ckpt, split.num_items)
    if model.needs_features and item_features is None:
        if features is None:
            raise ValueError(f"{run_dir} holds a model that reads backbone features: pass --features")
        item_features = item_features_for(split, features, s3_endpoint)
    layers = None
    if item_features is not None:
        layers = [f"L{layer}" for layer in item_features.reader.spec.layers]
    inter = load_microlens(data, check_videos=False).interactions
    first = inter.groupby("item")["timestamp"].min()
    published = np.asarray([int(first.get(i, 0)) for i in split.item_ids[1:]], dtype=np.int64)
    export_cfg = config if config is not None else ExportConfig(name=name or str(cfg.get("variant", run_dir.name)))
    source = {"run_dir": str(run_dir.resolve()), "checkpoint": ckpt.name,
              "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "variant": cfg.get("variant"),
              "data": str(data), "features": None if features is None else str(features)}
    return export_model(model, repository, item_ids=split.item_ids, item_features=item_features,
                        popularity=split.item_counts, published=published, layers=layers, source=source,
                        config=export_cfg)


def default_feature_spec() -> Any:
    """The ``FeatureSpec`` of the embedded default: the tiny backbone with the default extraction config."""
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.features import FeatureSpec

    ecfg, bcfg = ExtractionConfig(), BackboneConfig()
    return FeatureSpec(backbone="tiny", layers=tuple(ecfg.layers), prompts=tuple(ecfg.prompts),
                       num_frames=ecfg.num_frames, frame_size=ecfg.frame_size, tokens=ecfg.tokens,
                       hidden=bcfg.tiny_text_hidden, dtype=ecfg.dtype)


def default_model_config() -> Any:
    """The ``ModelConfig`` of the model the main job trains and serves (``DEFAULT_VARIANTS[0]``)."""
    return model_config_for(parse_variant(DEFAULT_VARIANTS[0]), default_feature_spec())


def default_repository_configs(name: str = "linkedout") -> dict[str, str]:
    """``{relative path: config.pbtxt text}`` of the embedded default's model repository.

    The main job exports its default model (``DEFAULT_VARIANTS[0]``) under ``name``, on features of
    the tiny backbone with the default extraction config; ``model_repository/`` in git holds these
    files, and a test regenerates and compares them (``linkedout export --configs-only``).
    """
    import torch

    from linkedout.export import ExportConfig, config_pbtxt, encoder_name, ranker_name
    from linkedout.export.graphs import encoder_spec, max_history, ranker_spec
    from linkedout.model import build_model

    spec = default_feature_spec()
    mcfg = default_model_config()
    n = 1000  # any catalogue of at least max_k videos gives the same configuration
    with torch.device("meta"):
        model = build_model(mcfg, n, np.ones(n + 1, dtype=np.int64))
    xcfg = ExportConfig(name=name)
    enc = encoder_spec(model, (len(spec.layers), spec.tokens, spec.hidden))
    rk = ranker_spec(max_history(model), xcfg.max_k, mcfg.d_model)
    return {f"{encoder_name(name)}/config.pbtxt": config_pbtxt(encoder_name(name), enc, xcfg.triton),
            f"{ranker_name(name)}/config.pbtxt": config_pbtxt(ranker_name(name), rk, xcfg.triton)}


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
    from linkedout.data.microlens import load_microlens
    from linkedout.export import ModelRepository, ranker_name
    from linkedout.featurestore import (
        FeastSettings,
        apply,
        histories_from_interactions,
        open_repo,
        publish_catalog,
        render_repo,
        write_histories,
        write_interactions,
    )

    feast_dir = Path(feast_dir)
    if not (feast_dir / "feature_store.yaml").is_file():
        render_repo(feast_dir, settings if settings is not None else FeastSettings(environment="local"))
    repo = open_repo(feast_dir)
    apply(repo)
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
