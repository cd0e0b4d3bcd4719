"""The S3 parquet offline store (and an S3 registry), against a real S3 server (moto) on 127.0.0.1.

Feast's file offline store reads ``s3://`` sources with Dask; without ``s3fs`` installed the
pyarrow bridge of :mod:`linkedout.featurestore.s3compat` serves them. The last test runs the whole
production configuration: S3 offline store and registry, Redis online store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import moto_s3, new_bucket
from test_featurestore import expected_histories, online_videos, toy_interactions, toy_videos

import linkedout.featurestore as lf
from linkedout.featurestore.local_redis import LocalRedis, redis_server_binary

pytestmark = pytest.mark.integration

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with dummy credentials in the environment."""
    with moto_s3("FEAST_S3_ENDPOINT_URL") as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    return new_bucket(endpoint, "feast")


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_s3_offline_store(endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training data and materialisation from parquet on S3; the registry on S3 too (so a second
    repository directory, rendered elsewhere, sees what the first registered)."""
    monkeypatch.setenv("FEAST_S3_ENDPOINT_URL", "unset-below")
    monkeypatch.delenv("FEAST_S3_ENDPOINT_URL")  # open_repo sets it from s3_endpoint (undone after the test)
    settings = lf.FeastSettings(offline_root=f"s3://{bucket}/feast", s3_endpoint=endpoint,
                                registry=f"s3://{bucket}/feast/registry.pb")
    repo = lf.open_repo(lf.render_repo(tmp_path / "a", settings))
    lf.apply(repo)
    pairs = toy_interactions(seed=7)
    assert lf.write_interactions(repo, pairs) == f"s3://{bucket}/feast/interactions/dataset.parquet"
    pd.testing.assert_frame_equal(lf.read_interactions(repo), pairs)
    lf.write_histories(repo, lf.histories_from_interactions(pairs), online="none")
    videos = toy_videos(seed=8)
    lf.write_videos(repo, videos, model_version="linkedout_v1", online="none")
    assert s3_keys(endpoint, bucket, "feast/") == [
        "feast/interactions/dataset.parquet", "feast/registry.pb", "feast/user_history/batch.parquet",
        "feast/video_embedding/linkedout_v1.parquet", "feast/video_meta/linkedout_v1.parquet"]
    assert lf.materialize(repo) == {"user_history": "full", "video_meta": "full", "video_embedding": "full"}
    reader = lf.HistoryReader(repo)
    expected = expected_histories(pairs)
    assert reader.get(list(expected)) == [expected[u] for u in expected]
    got = online_videos(repo, [2])
    assert got["model_version"] == ["linkedout_v1"]
    np.testing.assert_allclose(got["embedding"][0], videos.embeddings[1], rtol=0, atol=0)
    lf.register_model_version(repo, "linkedout", 1)
    other = lf.open_repo(lf.render_repo(tmp_path / "b", dataclasses.replace(settings, sqlite_path=str(tmp_path / "b.db"))))
    assert [s.name for s in other.store.list_feature_services()] == ["linkedout_v1"]


def test_s3_missing_bucket_is_a_clear_error(endpoint: str, tmp_path: Path) -> None:
    settings = lf.FeastSettings(offline_root="s3://no-such-bucket-here/feast", s3_endpoint=endpoint,
                                registry=str(tmp_path / "registry.db"))
    repo = lf.open_repo(lf.render_repo(tmp_path / "repo", settings))
    with pytest.raises(lf.OfflineStoreError, match=r"interactions/dataset\.parquet.*s3://no-such-bucket-here/feast"):
        lf.write_interactions(repo, toy_interactions())
    with pytest.raises(lf.FeatureRepoError, match="no-such-bucket-here"):
        lf.read_interactions(repo)


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed (apt-get install redis-server)")
def test_production_configuration(endpoint: str, bucket: str, tmp_path: Path) -> None:
    """environment=production as a cluster runs it: S3 offline store and registry, Redis online store."""
    with LocalRedis() as redis_server:
        settings = lf.FeastSettings(environment="production", offline_root=f"s3://{bucket}/prod",
                                    s3_endpoint=endpoint, redis_address=redis_server.address)
        repo = lf.open_repo(lf.render_repo(tmp_path / "repo", settings))
        assert repo.settings.registry == f"s3://{bucket}/prod/registry.pb"
        lf.apply(repo)
        pairs = toy_interactions(seed=9)
        lf.write_interactions(repo, pairs)
        hist = lf.histories_from_interactions(lf.read_interactions(repo))
        lf.write_histories(repo, hist, online="materialize")
        lf.publish_model_version(repo, "linkedout", 1, toy_videos(seed=9), online="materialize")
        reader = lf.HistoryReader(repo.path)
        expected = expected_histories(pairs)
        assert reader.get(list(expected)) == [expected[u] for u in expected]
        user = next(iter(expected))
        t0 = int(pairs.loc[pairs["user"] == user, "timestamp"].max())
        assert lf.record_watch(repo, user, 11, timestamp_ms=t0 + 1) == [*expected[user], 11][-10:]
        assert online_videos(repo, [4])["model_version"] == ["linkedout_v1"]
        assert "linkedout_v1" in {s.name for s in repo.store.list_feature_services()}
        back = lf.read_interactions(repo)  # the watch is in the training data, logged on S3
        assert len(back) == len(pairs) + 1
        assert back.loc[back["user"] == user].iloc[-1].tolist() == [user, "11", t0 + 1]
