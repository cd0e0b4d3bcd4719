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
               item_features: Any = None, extra_source: dict[str, Any] | None = None) -> Any:
    """Export a trained run's best checkpoint and its catalogue into a Triton model repository.

    The catalogue is the split's videos (those with features), in the model's item order, with their
    training popularity and publish time (a MicroLens video's first interaction). ``extra_source`` is
    recorded with the version's source (e.g. the validation metric the deploy decision compares).
    Returns the ``linkedout.export.ExportResult``.
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
              "data": str(data), "features": None if features is None else str(features), **(extra_source or {})}
    return export_model(model, repository, item_ids=split.item_ids, item_features=item_features,
                        popularity=split.item_counts, published=published, layers=layers, source=source,
                        config=export_cfg)


def default_feature_spec() -> Any:
    """The ``FeatureSpec`` of the embedded default: the tiny backbone with the default extraction config."""
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.shards import FeatureSpec

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


def open_feast(feast_dir: Path, settings: Any = None) -> Any:
    """The Feast repository in ``feast_dir``, rendered first if there is none (``settings``: a
    ``FeastSettings``, default the local environment), with its definitions applied."""
    from linkedout.featurestore import FeastSettings, apply, open_repo, render_repo

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
    from linkedout.data.microlens import load_microlens
    from linkedout.export import ModelRepository, ranker_name
    from linkedout.featurestore import (
        histories_from_interactions,
        publish_catalog,
        write_histories,
        write_interactions,
    )

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


# -------------------------------------------------------------------------------- live catalogue


class _VideoFiles:
    """A ``VideoDataset`` over loose video files (what ``extract_dataset`` reads)."""

    prefix = "catalog-additions"

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.root = None

    @property
    def item_ids(self) -> list[str]:
        return sorted(self.files, key=lambda v: int(v))

    def video_path(self, item: str) -> Path:
        return self.files[item]


def extraction_of_store(features: str, *, backbone: Any = None, s3_endpoint: str | None = None) -> tuple[Any, Any]:
    """``(ExtractionConfig, BackboneConfig)`` that reproduce a feature store's features, from its spec.

    ``backbone`` (a ``BackboneConfig``) overrides the backbone (a path, a hub id, another device);
    by default the store's recorded backbone and precision are used (the tiny backbone with its
    default seed). ``add_videos`` checks the result on a video already in the store.
    """
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.shards import FeatureReader

    spec = FeatureReader(features, endpoint_url=s3_endpoint).spec
    ecfg = ExtractionConfig(layers=tuple(spec.layers), prompts=tuple(spec.prompts), num_frames=spec.num_frames,
                            frame_size=spec.frame_size, tokens=spec.tokens, dtype=spec.dtype,
                            frame_sampling=spec.frame_sampling, shard_size=64, decode_workers=0)
    if backbone is None:
        dtype = spec.backbone_dtype if spec.backbone_dtype in ("float32", "bfloat16", "float16") else "auto"
        backbone = BackboneConfig(dtype=dtype, **backbone_source_of(spec.backbone))
    return ecfg, backbone


def backbone_source_of(name: str) -> dict[str, Any]:
    """``BackboneConfig`` fields from a store's recorded backbone name.

    A checkpoint is recorded by its path or hub id (``@revision`` appended); the tiny seeded backbone
    as ``tiny:seed=S,image=I/P,vision=HxL,text=HxL``.
    """
    if not name.startswith("tiny:"):
        source, _, revision = name.partition("@")
        return {"source": source, **({"revision": revision} if revision else {})}
    fields = dict(part.split("=", 1) for part in name.removeprefix("tiny:").split(",") if "=" in part)
    try:
        image, patch = fields["image"].split("/")
        vh, vl = fields["vision"].split("x")
        th, tl = fields["text"].split("x")
        return {"source": "tiny", "seed": int(fields["seed"]), "tiny_image_size": int(image),
                "tiny_patch_size": int(patch), "tiny_vision_hidden": int(vh), "tiny_vision_layers": int(vl),
                "tiny_text_hidden": int(th), "tiny_text_layers": int(tl)}
    except (KeyError, ValueError) as e:
        raise ValueError(f"cannot read the tiny backbone's settings from {name!r}: {e}") from None


def add_videos(videos: list[Path], *, repository: str | os.PathLike[str], name: str, features: str,
               added_store: str | os.PathLike[str], ids: list[int] | None = None, feast_dir: Path | None = None,
               titles: dict[int, str] | None = None, backbone: Any = None, check: bool = True,
               s3_endpoint: str | None = None) -> dict[str, Any]:
    """Add video files to the served catalogue of ``name``: no retraining, no restart.

    1. the videos are read by the frozen backbone with the feature store's own extraction config
       (``extraction_of_store``) into ``added_store`` (a feature store of their own: ``features``
       keeps one dataset's catalogue); with ``check``, one video of ``features`` is extracted again
       and must match its stored features, so that new and old videos live in one feature space;
    2. ``update_catalog`` encodes them with the published ONNX item encoder (no ID row: content only)
       and publishes a new ranker version with them appended;
    3. with ``feast_dir``, their metadata and embeddings go to Feast under the new version.

    ``ids`` default to the files' names (``1234.mp4`` is video 1234). Videos that cannot be decoded
    are reported and left out; none decodable is an error. Returns a summary (new version, added,
    failed). A running local stack picks the version up by itself (``LocalStack`` follows the
    repository); ``refresh`` below makes it immediate.
    """
    import time as _time

    from linkedout.export import update_catalog
    from linkedout.export.catalog import parse_video_ids
    from linkedout.extraction.backbone import load_backbone
    from linkedout.extraction.extractor import extract_dataset
    from linkedout.shards import FeatureReader

    if not videos:
        raise ValueError("no videos to add")
    paths = [Path(v) for v in videos]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"video file(s) not found: {missing[:5]}")
    if ids is None:
        try:
            id_arr = parse_video_ids([p.stem for p in paths])
        except ValueError as e:
            raise ValueError(f"{e}; name the files by video id (1234.mp4) or give --ids") from None
    else:
        if len(ids) != len(paths):
            raise ValueError(f"{len(ids)} ids for {len(paths)} videos")
        id_arr = parse_video_ids(ids)
    if len(set(id_arr.tolist())) != len(id_arr):
        raise ValueError("the videos to add hold duplicate ids")
    ecfg, bcfg = extraction_of_store(features, backbone=backbone, s3_endpoint=s3_endpoint)
    model = load_backbone(bcfg)
    if check:
        _check_reproduces(features, ecfg, model, s3_endpoint)
    files = {str(int(i)): p for i, p in zip(id_arr, paths)}
    summary = extract_dataset(_VideoFiles(files), str(added_store), ecfg, model)
    ok = [int(v) for v in files if v not in summary.failed]
    if not ok:
        raise ValueError(f"none of the videos could be decoded: {dict(list(summary.failed.items())[:5])}")
    feats = FeatureReader(str(added_store)).get_many([str(v) for v in ok])  # (M, L, K, D)
    now = int(_time.time() * 1000)
    version, catalog = update_catalog(repository, name, add_ids=ok, add_features=feats,
                                      add_published=np.full(len(ok), now, dtype=np.int64))
    out: dict[str, Any] = {"model": name, "version": version, "added": ok, "failed": dict(summary.failed),
                           "catalogue": catalog.num_items}
    if feast_dir is not None and (Path(feast_dir) / "feature_store.yaml").is_file():
        from linkedout.export import ModelRepository, ranker_name
        from linkedout.featurestore import open_repo, publish_model_version
        from linkedout.featurestore.write import Videos

        vdir = ModelRepository(repository).version_dir(ranker_name(name), version)
        new = Videos.from_catalog(vdir, titles or {}).subset(ok)
        publish_model_version(open_repo(Path(feast_dir)), name, version, new)
        out["feast"] = str(feast_dir)
    log.info("catalogue of %s: version %d with %d new videos (%d failed)", name, version, len(ok), len(summary.failed))
    return out


def _check_reproduces(features: str, ecfg: Any, backbone: Any, s3_endpoint: str | None) -> None:
    """Extract one stored video again and compare: the new videos must share the store's feature space."""
    from linkedout.data.microlens import load_microlens
    from linkedout.extraction.catalog import _read_dataset_doc
    from linkedout.extraction.extractor import LinkedOutExtractor
    from linkedout.extraction.video import decode_frames
    from linkedout.shards import FeatureReader

    reader = FeatureReader(features, endpoint_url=s3_endpoint)
    doc = _read_dataset_doc(reader.storage) or {}
    root = doc.get("root")
    if not root or not Path(root).is_dir():
        log.warning("cannot check that the new videos share %s's features (its dataset %s is not here); "
                    "trusting the spec", features, root)
        return
    dataset = load_microlens(Path(root), check_videos=False)
    for vid in list(reader.ids)[:5]:
        path = dataset.video_path(vid)
        if not path.is_file():
            continue
        frames = decode_frames(path, ecfg.num_frames, ecfg.frame_size, sampling=ecfg.frame_sampling)
        got = LinkedOutExtractor(backbone, ecfg).encode(frames[None])[0]  # (L, K, D)
        want = reader.get(vid)
        scale = float(np.abs(want).max()) or 1.0
        err = float(np.abs(got - want).max()) / scale
        if err > 2e-2:
            raise ValueError(f"the backbone does not reproduce {features}'s features (video {vid}: max relative "
                             f"difference {err:.3g}): give the backbone the store was extracted with (--backbone)")
        return
    log.warning("no video of %s found under %s to check against; trusting the spec", features, root)


# ------------------------------------------------------------------------------------- main job


def export_if_new(data: Path, features: str, run_dir: Path, repository: Path, *, name: str, split: Any = None,
                  item_features: Any = None, extra_source: dict[str, Any] | None = None) -> int:
    """Export ``run_dir`` as ``name`` unless the repository's latest version already is this checkpoint.

    Returns the ranker version that serves the run.
    """
    from linkedout.export import Catalog, ModelRepository, ranker_name

    repo = ModelRepository(repository)
    ckpt = _checkpoint_of(Path(run_dir))
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    latest = repo.latest(ranker_name(name))
    if latest is not None:
        meta = Catalog.load(repo.version_dir(ranker_name(name), latest)).meta
        if (meta.get("source") or {}).get("checkpoint_sha256") == sha and not meta.get("added") \
                and not meta.get("removed"):
            log.info("%s_ranker version %d already serves %s", name, latest, ckpt)
            return latest
    result = export_run(data, features, run_dir, repository, name=name, split=split, item_features=item_features,
                        extra_source=extra_source)
    return int(result.ranker_version)


def features_published(feast_dir: Path, stamp: dict[str, Any]) -> bool:
    f = Path(feast_dir) / "linkedout_published.json"
    return f.is_file() and json.loads(f.read_text()) == stamp


def serve_and_query(workdir: Path, *, name: str, users: list[str], k: int = 10) -> list[Any]:
    """Start the local stack of ``workdir``, ask it for ``users``' recommendations over gRPC, stop it.

    Returns the answers (``linkedout.serving.client.Recommendation``).
    """
    from linkedout.serving.client import RecommendClient
    from linkedout.serving.stack import LocalStack, StackSettings

    with LocalStack(StackSettings(workdir=workdir, default_model=name)) as stack:
        client = RecommendClient(stack.info["transformer"]["grpc"], model=name)
        try:
            return client.recommend(users, k, explain=True)
        finally:
            client.close()


def publish_features_once(data: Path, repository: Path, feast_dir: Path, *, name: str, version: int,
                          settings: Any = None) -> dict[str, Any]:
    """:func:`publish_features` unless this dataset and this version of ``name`` are already published there.

    The stamp ``FEAST/linkedout_published.json`` records the dataset's tables and the version; a
    re-run of the same job writes nothing. Returns the stamp and whether it was written now.
    """
    from linkedout.pipeline import dataset_digest
    from linkedout.utils import atomic_write_text

    stamp = {"dataset": dataset_digest(data), "model": name, "version": int(version)}
    if features_published(feast_dir, stamp):
        log.info("feast %s already holds %s version %d of this dataset", feast_dir, name, version)
        return {**stamp, "written": False, "feast": str(feast_dir)}
    summary = publish_features(data, repository, feast_dir, name=name, version=version, settings=settings)
    atomic_write_text(Path(feast_dir) / "linkedout_published.json", json.dumps(stamp, indent=2))
    return {**stamp, **summary, "written": True}


# --------------------------------------------------------------------------- training data from Feast

OFFLINE_STAMP = "linkedout_offline_dataset.json"


def training_interactions(data: Path, feast_dir: Path, *, settings: Any = None, force: bool = False) -> Any:
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
    from linkedout.data.microlens import load_microlens
    from linkedout.fingerprint import StageMismatch
    from linkedout.pipeline import dataset_digest
    from linkedout.featurestore import (
        read_interactions,
        write_interactions,
    )
    from linkedout.featurestore.definitions import INTERACTIONS
    from linkedout.featurestore.offline import list_parts
    from linkedout.utils import atomic_write_text

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


# ---------------------------------------------------------------------------- the deploy decision


def validation_metric(checkpoint: Path, split: Any, item_features: Any, metric: str = "NDCG@10") -> float:
    """``metric`` of the model in ``checkpoint`` on the split's validation users (full catalogue, history masked).

    The items before each validation user's history window are masked too, as in training's validation.
    """
    import torch

    from linkedout.evaluation import evaluate
    from linkedout.training.checkpoint import load_model_from_checkpoint

    model: Any = load_model_from_checkpoint(checkpoint, split.num_items)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    result = evaluate(model, split.valid, item_features if model.needs_features else None,
                      exclude=list(split.train_sequences), sampled_negatives=0)
    values = result.summary()
    if metric not in values:
        raise ValueError(f"unknown validation metric {metric!r}; choose from {sorted(values)}")
    return float(values[metric])


def compare_with_serving(run_dir: Path, repository: Path, *, name: str, split: Any, item_features: Any,
                         metric: str = "NDCG@10") -> dict[str, Any]:
    """Decide whether the model trained in ``run_dir`` may replace the one ``repository`` serves as ``name``.

    The model now serving is the newest version of ``NAME_ranker``; the candidate is deployed when
    nothing serves yet, when that version already is this checkpoint, or when its validation
    ``metric`` is at least the serving model's on the same split. The serving model's value is the
    one recorded when it was exported, if it was measured on this split; otherwise its checkpoint is
    measured again here (when it is still there and fits this catalogue); a serving model that cannot
    be measured on this split (another catalogue, a checkpoint gone) is replaced, and the reason says so.

    Returns ``{"deploy", "reason", "metric", "candidate", "serving", "serving_version", "validation"}``;
    ``validation`` is the record to store with an exported version (``export_if_new(extra_source=...)``).
    """
    from linkedout.export import Catalog, ModelRepository, ranker_name

    ckpt = _checkpoint_of(Path(run_dir))
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    candidate = validation_metric(ckpt, split, item_features, metric)
    record = {"validation": {"metric": metric, "value": candidate, "split": split.digest()}}
    out: dict[str, Any] = {"metric": metric, "candidate": candidate, "serving": None, "serving_version": None,
                           "validation": record}
    repo = ModelRepository(repository)
    latest = repo.latest(ranker_name(name)) if Path(repository).is_dir() else None
    if latest is None:
        return {**out, "deploy": True, "reason": f"nothing serves {name!r} yet: deploy (validation {metric} "
                                                 f"{candidate:.4f})"}
    source = Catalog.load(repo.version_dir(ranker_name(name), latest)).meta.get("source") or {}
    out["serving_version"] = latest
    if source.get("checkpoint_sha256") == sha:
        return {**out, "deploy": True, "serving": candidate,
                "reason": f"{name} v{latest} already serves this checkpoint (validation {metric} {candidate:.4f})"}
    serving = None
    recorded = source.get("validation") or {}
    if recorded.get("metric") == metric and recorded.get("split") == split.digest():
        serving = float(recorded["value"])
    else:
        old = Path(str(source.get("run_dir", ""))) / "checkpoints" / str(source.get("checkpoint", "best.pt"))
        if old.is_file() and hashlib.sha256(old.read_bytes()).hexdigest() == source.get("checkpoint_sha256"):
            try:
                serving = validation_metric(old, split, item_features, metric)
            except (ValueError, RuntimeError, KeyError) as e:
                log.warning("cannot measure %s v%d on this split: %s", name, latest, e)
    if serving is None:
        return {**out, "deploy": True,
                "reason": f"{name} v{latest} cannot be measured on this split (another catalogue, or its checkpoint "
                          f"is gone): the new model replaces it (validation {metric} {candidate:.4f})"}
    out["serving"] = serving
    if candidate >= serving:
        return {**out, "deploy": True, "reason": f"validation {metric} {candidate:.4f} >= {serving:.4f} of {name} "
                                                 f"v{latest}: deploy"}
    return {**out, "deploy": False, "reason": f"validation {metric} {candidate:.4f} < {serving:.4f} of {name} "
                                              f"v{latest}: v{latest} keeps serving"}
