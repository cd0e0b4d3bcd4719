"""The live catalogue: new video files added to a served model's catalogue with no retraining and no restart
(``linkedout catalog add``).

Not a stage of the main job: an operation on what the main job published. The new videos are
read by the frozen backbone with the feature shards' own extraction config, encoded by the
published ONNX item encoder (content only: no ID row), appended in place to the catalogue of the
served ranker version (``update_catalog``), and written to Feast under that version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.data.microlens import load_microlens
from linkedout.export import ModelRepository, ranker_name, update_catalog
from linkedout.export.catalog import live_ids, live_rows_of, parse_video_ids
from linkedout.extraction.backbone import load_backbone
from linkedout.extraction.backbone_config import BackboneConfig
from linkedout.extraction.driver import extract_dataset
from linkedout.extraction.extractor import ExtractionConfig, LinkedOutExtractor
from linkedout.extraction.reconcile import read_dataset_doc
from linkedout.extraction.video import decode_frames
from linkedout.featurestore import open_repo
from linkedout.featurestore.definitions import service_name
from linkedout.featurestore.write import Videos, write_videos
from linkedout.shards import FeatureReader
from linkedout.utils import get_logger

log = get_logger(__name__)


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
    """Add video files to the served catalogue of ``name``: no retraining, no restart; as often as wanted.

    1. ids already in the served catalogue, duplicate ids and missing files are refused before
       anything is loaded or written;
    2. the videos are read by the frozen backbone with the feature shards' own extraction config
       (``extraction_of_store``) into a shard store of their own under ``added_store`` (a local
       directory: ``ADDED/v<version>`` once published; ``features`` keeps one dataset's videos);
       with ``check``, one video of ``features`` is extracted again and must match its stored
       features, so that new and old videos live in one feature space;
    3. ``update_catalog`` encodes them with the published ONNX item encoder (no ID row: content only)
       and appends them to the served catalogue in place (no new model version);
    4. with ``feast_dir``, their metadata and embeddings go to Feast under the served version.

    A failure at any step leaves nothing behind (the batch's shards are written to a staging
    directory first) and the served catalogue as it was. ``ids`` default to the files' names
    (``1234.mp4`` is video 1234). Videos that cannot be decoded are reported and left out; none
    decodable is an error. Returns a summary (version, added, failed, rows). A running transformer
    serves them from its next catalogue poll (``--catalog_poll_s``), with no reload.
    """
    paths, id_arr = _videos_to_add(videos, ids)
    _refuse_known_ids(repository, name, id_arr)
    ecfg, bcfg = extraction_of_store(features, backbone=backbone, s3_endpoint=s3_endpoint)
    model = load_backbone(bcfg)
    if check:
        _check_reproduces(features, ecfg, model, s3_endpoint)
    root = Path(added_store)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        files = {str(int(i)): p for i, p in zip(id_arr, paths)}
        summary = extract_dataset(_VideoFiles(files), str(staging), ecfg, model)
        ok = [int(v) for v in files if v not in summary.failed]
        if not ok:
            raise ValueError(f"none of the videos could be decoded: {dict(list(summary.failed.items())[:5])}")
        feats = FeatureReader(str(staging)).get_many([str(v) for v in ok])  # (M, L, K, D)
        now = int(time.time() * 1000)
        change = update_catalog(repository, name, add_ids=ok, add_features=feats,
                                add_published=np.full(len(ok), now, dtype=np.int64))
        # one store per batch, named by its first row (rows only grow: never taken twice)
        batch = f"v{change.version}-row{change.added_rows[0]}"
        staging.rename(root / batch)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    out: dict[str, Any] = {"model": name, "version": change.version, "added": ok, "rows": change.added_rows,
                           "failed": dict(summary.failed), "catalogue": change.num_items,
                           "features": str(root / batch)}
    if feast_dir is not None and (Path(feast_dir) / "feature_store.yaml").is_file():
        a = change.additions  # as encoded: no need to read the (maybe 10 M-video) catalogue back
        new = Videos(ids=a["ids"], embeddings=a["embeddings"], gate=a.get("gate", np.zeros((len(ok), 0))),
                     contributions=a.get("contributions", np.zeros((len(ok), 0))),
                     popularity=np.zeros(len(ok), dtype=np.int64), published=a["published"],
                     titles=tuple((titles or {}).get(v, "") for v in ok))
        service = service_name(name, change.version)
        write_videos(open_repo(Path(feast_dir)), new, model_version=service, part=f"{service}-{batch}")
        out["feast"] = str(feast_dir)
    log.info("catalogue of %s (version %d): %d new videos at rows %d.. (%d failed)", name, change.version, len(ok),
             change.added_rows[0], len(summary.failed))
    return out


def _videos_to_add(videos: list[Path], ids: list[int] | None) -> tuple[list[Path], np.ndarray]:
    """The files (each must exist) and their video ids (``ids``, else the files' names), no id twice."""
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
    return paths, id_arr


def _refuse_known_ids(repository: str | os.PathLike[str], name: str, ids: np.ndarray) -> None:
    """``ValueError`` naming the ids the served catalogue of ``name`` already holds (before any extraction)."""
    repo = ModelRepository(repository)
    latest = repo.latest(ranker_name(name)) if Path(repository).is_dir() else None
    if latest is None:
        raise ValueError(f"{repository} serves no model {name!r} (no {ranker_name(name)} version): export one first")
    all_ids, removed = live_ids(repo.version_dir(ranker_name(name), latest))
    known = ids[live_rows_of(all_ids, removed, ids) > 0].tolist()
    if known:
        raise ValueError(f"video id(s) {known[:10]} are already in the catalogue of {name} (version {latest}); "
                         "give new ids (--ids) or remove those videos first")


def _check_reproduces(features: str, ecfg: Any, backbone: Any, s3_endpoint: str | None) -> None:
    """Extract one stored video again and compare: the new videos must share the store's feature space."""
    reader = FeatureReader(features, endpoint_url=s3_endpoint)
    doc = read_dataset_doc(reader.storage) or {}
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
