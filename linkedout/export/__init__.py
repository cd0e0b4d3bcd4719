"""Export: ONNX graphs of the item encoder and the ranker, the Triton model repository, the catalogue.

- ``graphs``: ``EncoderGraph`` and ``UserGraph`` (the ranker: histories -> user states) over any
  ``Recommender``, ``export_onnx``;
- ``catalog``: ``Catalog``, the live catalogue of a served model: the videos a ranker version
  serves (ids, embeddings, gates, popularity), saved with its retrieval index; changed in place;
- ``index``: ``RetrievalIndex``, exact or ANN (faiss) top-K over the catalogue, appendable;
- ``repository``: ``ModelRepository`` (versions, publish, retire, roll back, upload) and
  ``config_pbtxt`` for Triton's ONNX Runtime backend;
- ``exporter``: ``export_model`` (checkpoint -> encoder + ranker versions, checked against PyTorch);
- ``checks``: the checks of an export, onnxruntime against PyTorch or NumPy;
- ``update``: ``update_catalog`` (add or remove videos in place: no retraining, no new version).

The contracts are in docs/serving.md §1. ``catalog`` needs numpy only (the KServe transformer reads
it); the rest needs torch, onnx and onnxruntime, and no server package.
"""

from __future__ import annotations

import importlib
from typing import Any

from linkedout.export.catalog import Catalog, CatalogError

# heavy parts (torch, onnx) load on first use, so that the transformer can read catalogues alone
_LAZY = {
    "ExportConfig": "exporter", "ExportResult": "exporter", "encoder_name": "exporter", "export_model": "exporter",
    "ranker_name": "exporter", "export_ranker": "exporter",
    "update_catalog": "update", "CatalogChange": "update",
    "ModelRepository": "repository", "RepositoryError": "repository", "TritonConfig": "repository",
    "config_pbtxt": "repository",
    "IndexSettings": "index", "RetrievalIndex": "index", "RetrievalIndexError": "index",
}

__all__ = ["Catalog", "CatalogError", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"linkedout.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'linkedout.export' has no attribute {name!r}")
