"""Fixtures shared by several test modules."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from linkedout.job.dataset import ensure_dataset
from linkedout.job.extraction import extract
from linkedout.job.split import build_split
from linkedout.job.training import item_features_for, item_side_info
from linkedout.job.variants import model_config_for, parse_variant
from linkedout.serving.local import LocalStack, StackSettings


@dataclass
class Toy:
    """The toy synthetic dataset (real mp4s) and its features from the tiny backbone (2 frames a video)."""

    data: Path
    features: Path
    split: Any
    item_features: Any


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    from linkedout.extraction.extractor import ExtractionConfig

    root = tmp_path_factory.mktemp("toy")
    data = ensure_dataset(root / "data", "toy")
    features = root / "features"
    extract(data, features, (ExtractionConfig(num_frames=2, batch_size=8, shard_size=16), None))
    split = build_split(data, str(features))
    return Toy(data, features, split, item_features_for(split, str(features)))


def build_variant(variant: str, toy: Toy, *, seed: int = 7, d_model: int = 32) -> Any:
    """A model of ``variant`` over the toy catalogue with seeded, non-trivial random weights."""
    import torch

    from linkedout.model import build_model
    from linkedout.model.recommender import LinkedOutRecommender
    from linkedout.utils import set_seed

    v = parse_variant(variant)
    from linkedout.model.config import FEATURE_KINDS

    spec = toy.item_features.reader.spec if v.kind in FEATURE_KINDS else None
    cfg = model_config_for(v, spec, d_model=d_model)
    set_seed(seed)
    model = build_model(cfg, toy.split.num_items, toy.split.item_counts)
    if v.side_info:
        assert isinstance(model, LinkedOutRecommender)
        model.set_item_side_info(*item_side_info(toy.data, toy.split.item_ids, cfg))
    with torch.no_grad():  # make untrained parameters non-trivial (LayerNorm gains, biases)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():  # padding rows stay zero, as training keeps them
            if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
    return model.eval()


@dataclass
class ServingRepo:
    """A model repository with the toy models ``linkedout`` and ``sasrec_id`` exported (max_k 20)."""

    root: Path
    models: dict[str, Any]
    toy: Toy


@pytest.fixture(scope="session")
def serving_repo(toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> ServingRepo:
    from linkedout.export import ExportConfig, ModelRepository, export_model

    root = tmp_path_factory.mktemp("serving-repo") / "model_repository"
    models = {}
    for name in ("linkedout", "sasrec_id"):
        model = build_variant(name, toy)
        export_model(model, ModelRepository(root), item_ids=toy.split.item_ids,
                     item_features=toy.item_features if model.needs_features else None,
                     popularity=toy.split.item_counts,
                     layers=[f"L{layer}" for layer in toy.item_features.reader.spec.layers],
                     config=ExportConfig(name=name, max_k=20))
        models[name] = model
    return ServingRepo(root, models, toy)


@pytest.fixture(scope="session")
def served_transformer(serving_repo: ServingRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The transformer and the KServe fallback predictor on loopback over a copy of ``serving_repo`` (``LocalStack``,
    no Feast: every user is cold start); yields the stack's ``info["transformer"]`` (``grpc``, ``http``, ``model``)."""
    work = tmp_path_factory.mktemp("served")
    shutil.copytree(serving_repo.root, work / "model_repository")
    with LocalStack(StackSettings(workdir=work, prefer="kserve", use_feast=False)) as stack:
        yield stack.info["transformer"]


@contextlib.contextmanager
def moto_s3(*extra_env: str) -> Iterator[str]:
    """A moto S3 server on a free loopback port, dummy credentials in the environment; yields its URL.

    ``extra_env``: more variables set to the URL while it runs (e.g. ``FEAST_S3_ENDPOINT_URL``).
    """
    from moto import server as moto_server

    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "http_proxy"):
            mp.delenv(name, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1")
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            url = f"http://{host}:{port}"
            for name in extra_env:
                mp.setenv(name, url)
            yield url
        finally:
            server.stop()


def new_bucket(endpoint: str, prefix: str) -> str:
    """A fresh bucket on the S3 server at ``endpoint``."""
    import uuid

    import boto3

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
