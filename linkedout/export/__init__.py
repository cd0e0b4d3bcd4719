"""Export: ONNX graphs of the item encoder and the ranker, the Triton model repository, the catalogue.

- ``graphs``: ``EncoderGraph`` and ``RankerGraph`` over any ``Recommender``, ``export_onnx``;
- ``catalog``: ``Catalog``, the videos a ranker version serves (ids <-> rows, embeddings, gates);
- ``repository``: ``ModelRepository`` (versions, publish, retire, roll back, upload) and
  ``config_pbtxt`` for Triton's ONNX Runtime backend;
- ``exporter``: ``export_model`` (checkpoint -> encoder + ranker versions, checked against PyTorch)
  and ``update_catalog`` (add or remove videos: a new ranker version, no retraining).

The contracts are in docs/serving.md §1. ``catalog`` needs numpy only (the KServe transformer reads
it); the rest needs torch, onnx and onnxruntime, and no server package.
"""

from linkedout.export.catalog import Catalog, CatalogError
from linkedout.export.exporter import (
    ExportConfig,
    ExportResult,
    encoder_name,
    export_model,
    ranker_name,
    update_catalog,
)
from linkedout.export.repository import ModelRepository, RepositoryError, TritonConfig, config_pbtxt

__all__ = [
    "Catalog",
    "CatalogError",
    "ExportConfig",
    "ExportResult",
    "ModelRepository",
    "RepositoryError",
    "TritonConfig",
    "config_pbtxt",
    "encoder_name",
    "export_model",
    "ranker_name",
    "update_catalog",
]
