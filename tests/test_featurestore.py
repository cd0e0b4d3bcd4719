"""The Feast repository on the local path (parquet files + SQLite): definitions, settings, rendering,
writing from training outputs, live pushes, the history reader, the training data read back.

The Redis path is in test_featurestore_redis.py, the S3 offline path in test_featurestore_s3.py; both
reuse the helpers below.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import linkedout.featurestore as lf
from linkedout.data.synth import SynthConfig, generate_tables
from linkedout.export.catalog import Catalog
from linkedout.featurestore import definitions as d
from linkedout.featurestore.online import read_rows

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# helpers shared with the Redis and S3 tests

def toy_interactions(users: int = 24, videos: int = 40, seed: int = 0) -> pd.DataFrame:
    """linkedout/data's interactions (user, item, timestamp ms) of a small synthetic dataset."""
    cfg = SynthConfig(num_videos=videos, num_users=users, num_interactions=users * 9, min_interactions_per_user=5,
                      max_interactions_per_user=14, workers=0, seed=seed)
    return generate_tables(cfg).pairs.reset_index(drop=True)


def toy_videos(n: int = 40, d_model: int = 8, layers: int = 3, seed: int = 0) -> lf.Videos:
    rng = np.random.default_rng(seed)
    gate = rng.dirichlet(np.ones(layers), size=n).astype(np.float32)
    return lf.Videos(ids=np.arange(1, n + 1), embeddings=rng.normal(size=(n, d_model)).astype(np.float32),
                     gate=gate, contributions=gate[:, ::-1].copy(), popularity=rng.integers(0, 100, n),
                     published=1_700_000_000_000 + np.arange(n) * 1000,
                     titles=tuple(f"video {i}" for i in range(1, n + 1)))


def expected_histories(interactions: pd.DataFrame, k: int = 10) -> dict[str, list[int]]:
    """The last k items of each user by time, computed the plain way."""
    out = {}
    for user, g in interactions.groupby("user", sort=False):
        g = g.sort_values("timestamp", kind="stable")
        out[str(user)] = [int(i) for i in g["item"].tolist()[-k:]]
    return out


def online_videos(repo: lf.FeatureRepo, ids: list[int]) -> dict[str, list]:
    return repo.store.get_online_features(
        ["video_embedding:embedding", "video_embedding:gate", "video_embedding:model_version", "video_meta:title",
         "video_meta:popularity"], entity_rows={"video_id": ids}).to_dict()


def rows_of(histories: dict[str, list[int]], events: pd.DataFrame, user: str) -> pd.DataFrame:
    """One user's history row as write_histories takes it, stamped with the user's last event."""
    last = int(events.loc[events["user_id"] == user, "event_timestamp"].max())
    return pd.DataFrame({"user_id": [user], "watched": [histories[user]], "last_watch": [last],
                         "event_timestamp": pd.to_datetime([last], unit="ms", utc=True)})


def parquet_files(root: Path, table: str) -> list[str]:
    return sorted(p.name for p in (root / table).glob("*.parquet"))


# ------------------------------------------------------------------------------------------------
# definitions and settings (no store)

def test_definitions_match_the_serving_contract() -> None:
    """docs/serving.md §2: names, join keys and types the transformer and the pipelines rely on."""
    from feast import ValueType
    from feast.types import Array, Float32, Int64, String

    defs = lf.build_definitions("/data/offline")
    assert (defs.video.name, defs.video.join_key, defs.video.value_type) == ("video", "video_id", ValueType.INT64)
    assert (defs.user.name, defs.user.join_key, defs.user.value_type) == ("user", "user_id", ValueType.STRING)
    schema = {fv.name: {f.name: f.dtype for f in fv.features} for fv in defs.feature_views().values()}
    assert schema == {
        "video_meta": {"title": String, "published": Int64, "popularity": Int64},
        "video_embedding": {"embedding": Array(Float32), "gate": Array(Float32), "contributions": Array(Float32),
                            "model_version": String},
        "user_history": {"watched": Array(Int64), "last_watch": Int64},
    }
    assert defs.user_history.entities == ["user"] and defs.video_meta.entities == ["video"]
    assert defs.user_history.stream_source is defs.user_history_push
    assert defs.user_history_push.name == "user_history_push"
    assert defs.interactions_source.name == "interactions"
    assert defs.interactions_source.path == "/data/offline/interactions"
    assert lf.WATCHED == "user_history:watched" and lf.HISTORY_LENGTH == 10
    fs = defs.feature_service("linkedout", 3)
    assert fs.name == "linkedout_v3" and fs.tags == {"model": "linkedout", "version": "3"}
    assert sorted(p.name for p in fs.feature_view_projections) == ["user_history", "video_embedding", "video_meta"]
    s3 = lf.build_definitions("s3://bucket/pre/", s3_endpoint="http://127.0.0.1:9000")
    assert s3.video_meta_source.path == "s3://bucket/pre/video_meta"
    assert s3.video_meta_source.file_options.s3_endpoint_override == "http://127.0.0.1:9000"


@pytest.mark.parametrize(("model", "version"), [("Linkedout", 1), ("linked-out", 1), ("", 1), ("linkedout", 0),
                                                ("linkedout", True), ("linkedout", "3")])
def test_service_name_rejects_bad_names(model: str, version: object) -> None:
    with pytest.raises(ValueError, match=r"model (name|version)"):
        lf.service_name(model, version)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"environment": "staging"}, "environment"),
    ({"environment": "production"}, "offline_root"),
    ({"offline_root": "/x", "s3_endpoint": "http://h:1"}, "s3_endpoint"),
    ({"offline_root": "s3://b/p", "s3_endpoint": "ftp://h"}, "s3_endpoint"),
    ({"offline_root": "s3://"}, "offline_root"),
    ({"redis_address": "localhost"}, "redis_address"),
    ({"redis_address": "h:99999"}, "redis_address"),
    ({"redis_timeout_s": 0}, "redis_timeout_s"),
    ({"redis_retries": 9}, "redis_retries"),
    ({"redis_password_env": "not a name"}, "redis_password_env"),
    ({"offline_root": "/data/$HOME"}, "offline_root"),
    ({"project": "linked-out"}, "project"),
])
def test_settings_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"FeastSettings\.{field} must be"):
        lf.FeastSettings(**kwargs)


def test_render_production_repo(tmp_path: Path) -> None:
    settings = lf.FeastSettings(environment="production", offline_root="s3://features/feast",
                                s3_endpoint="http://minio:9000", redis_address="redis.feast:6379", redis_db=2,
                                redis_password_env="REDIS_PASSWORD", redis_timeout_s=0.25)
    path = lf.render_repo(tmp_path / "repo", settings)
    text = (path / "feature_store.yaml").read_text()
    assert "{{" not in text
    import yaml

    cfg = yaml.safe_load(text)
    assert cfg["online_store"] == {"type": "redis", "redis_type": "redis", "key_ttl_seconds": None, "skip_dedup": True,
                                   "connection_string":
                                   "redis.feast:6379,db=2,socket_connect_timeout=0.25,socket_timeout=0.25,"
                                   "password=${REDIS_PASSWORD}"}
    assert cfg["registry"]["path"] == "s3://features/feast/registry.pb"
    assert cfg["offline_store"] == {"type": "file"} and cfg["project"] == "linkedout"
    assert lf.repo.read_settings(path) == settings.resolved(path)
    assert not (tmp_path / "repo" / "offline").exists()  # nothing local for an S3 root


def test_render_is_idempotent_and_open_errors(tmp_path: Path) -> None:
    path = lf.render_repo(tmp_path / "repo", lf.FeastSettings())
    (path / "feature_services.json").write_text(json.dumps([{"model": "linkedout", "version": 2}]))
    assert lf.render_repo(path, lf.FeastSettings()) == path
    assert lf.repo.read_settings(path).offline_root == str(path / "offline")
    assert json.loads((path / "feature_services.json").read_text()) == [{"model": "linkedout", "version": 2}]
    assert {p.name for p in (path / "offline").iterdir()} == set(d.TABLES)
    with pytest.raises(lf.FeatureRepoError, match=r"no Feast repository at .*missing.*does not exist"):
        lf.open_repo(tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(lf.FeatureRepoError, match=r"feature_store\.yaml is missing"):
        lf.open_repo(tmp_path / "bare")
    settings = json.loads((path / "linkedout_feast.json").read_text())
    (path / "linkedout_feast.json").write_text(json.dumps(settings | {"environment": "staging"}))
    with pytest.raises(lf.FeatureRepoError, match=r"linkedout_feast.json is not valid.*environment"):
        lf.open_repo(path)
    (path / "linkedout_feast.json").write_text("{not json")
    with pytest.raises(lf.FeatureRepoError, match=r"linkedout_feast\.json is not valid"):
        lf.open_repo(path)


def test_bad_training_outputs_are_refused() -> None:
    v = toy_videos(4)
    with pytest.raises(ValueError, match=r"Videos.embeddings must be float \[N=4, d\]"):
        lf.Videos(ids=v.ids, embeddings=v.embeddings[:3], gate=v.gate, contributions=v.contributions,
                  popularity=v.popularity, published=v.published)
    with pytest.raises(ValueError, match=r"Videos\.ids must be unique"):
        lf.Videos(ids=[1, 1, 2, 3], embeddings=v.embeddings, gate=v.gate, contributions=v.contributions,
                  popularity=v.popularity, published=v.published)
    with pytest.raises(ValueError, match=r"non-negative integers.*'v7'"):
        lf.Videos(ids=["1", "2", "v7", "4"], embeddings=v.embeddings, gate=v.gate, contributions=v.contributions,
                  popularity=v.popularity, published=v.published)
    with pytest.raises(ValueError, match=r"Videos\.published must be integer"):
        lf.Videos(ids=v.ids, embeddings=v.embeddings, gate=v.gate, contributions=v.contributions,
                  popularity=v.popularity, published=v.published.astype(float))
    with pytest.raises(ValueError, match="same L"):
        lf.Videos(ids=v.ids, embeddings=v.embeddings, gate=v.gate, contributions=v.contributions[:, :2],
                  popularity=v.popularity, published=v.published)
    sub = v.subset([3, 1])
    assert sub.ids.tolist() == [3, 1] and sub.titles == ("video 3", "video 1")
    np.testing.assert_array_equal(sub.embeddings, v.embeddings[[2, 0]])
    with pytest.raises(KeyError, match=r"\[99\]"):
        v.subset([1, 99])
    bad = pd.DataFrame({"user": ["a"], "item": ["x1"], "timestamp": [1]})
    with pytest.raises(ValueError, match=r"interactions\.item: video ids must be non-negative integers"):
        lf.histories_from_interactions(bad)
    with pytest.raises(ValueError, match=r"interactions\.timestamp must be int64"):
        lf.histories_from_interactions(bad.assign(item="1", timestamp=1.5))
    with pytest.raises(ValueError, match="missing columns"):
        lf.histories_from_interactions(bad.drop(columns="timestamp"))


def test_histories_from_interactions() -> None:
    pairs = toy_interactions()
    hist = lf.histories_from_interactions(pairs)
    assert list(hist.columns) == ["user_id", "watched", "last_watch", "event_timestamp"]
    assert list(hist["user_id"]) == list(dict.fromkeys(pairs["user"]))  # the dataset's user order
    expected = expected_histories(pairs)
    assert {u: list(w) for u, w in zip(hist["user_id"], hist["watched"])} == expected
    last = pairs.groupby("user")["timestamp"].max()
    assert [int(t.timestamp() * 1000) for t in hist["event_timestamp"]] == [int(last[u]) for u in hist["user_id"]]
    assert hist["last_watch"].tolist() == [int(last[u]) for u in hist["user_id"]]
    short = lf.histories_from_interactions(pairs, max_len=3)
    assert all(len(w) == min(3, len(expected[u])) for u, w in zip(short["user_id"], short["watched"]))


# ------------------------------------------------------------------------------------------------
# the local store end to end

@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lf.FeatureRepo]:
    path = lf.render_repo(tmp_path_factory.mktemp("feast") / "repo", lf.FeastSettings())
    repo = lf.open_repo(path)
    lf.apply(repo)
    yield repo


def test_not_applied_repo_is_a_clear_error(tmp_path: Path) -> None:
    path = lf.render_repo(tmp_path / "repo", lf.FeastSettings())
    with pytest.raises(lf.FeatureRepoError, match=r"(apply|applied)"):
        lf.HistoryReader(path)


def test_training_data_round_trip(local: lf.FeatureRepo) -> None:
    """The dataset's interactions, written to the offline store and read back through Feast, are the
    same DataFrame linkedout/data loads (dtypes, order), and re-writing them adds nothing."""
    pairs = toy_interactions()
    uri = lf.write_interactions(local, pairs)
    assert uri.endswith("interactions/dataset.parquet")
    back = lf.read_interactions(local)
    pd.testing.assert_frame_equal(back, pairs)
    assert back["user"].map(type).eq(str).all() and back["item"].map(type).eq(str).all()
    lf.write_interactions(local, pairs)  # a re-run replaces the same part
    pd.testing.assert_frame_equal(lf.read_interactions(local), pairs)
    cut = datetime.fromtimestamp(int(pairs["timestamp"].median()) / 1000, UTC)
    early = lf.read_interactions(local, end=cut)
    assert 0 < len(early) < len(pairs) and early["timestamp"].max() <= cut.timestamp() * 1000


def test_histories_online_and_the_reader(local: lf.FeatureRepo) -> None:
    pairs = toy_interactions()
    hist = lf.histories_from_interactions(pairs)
    assert lf.write_histories(local, hist) == len(hist)
    reader = lf.HistoryReader(local.path)
    expected = expected_histories(pairs)
    users = list(expected)
    assert reader.get(users) == [expected[u] for u in users]
    first = users[0]
    assert reader.get(["nobody", first, int(first), first.encode(), np.int64(first)]) == [[]] + [expected[first]] * 4
    assert reader.get([]) == []
    with pytest.raises(ValueError, match=r"user_ids\[1\] must be a str, bytes or int"):
        reader.get([first, 1.5])
    with pytest.raises(ValueError, match=r"user_ids\[0\] is an empty user id"):
        reader.get([""])
    assert reader.address == f"sqlite {local.path}/data/online.db"
    assert not reader.reads_async  # SQLite is read on a worker thread, with the deadline
    with pytest.raises(RuntimeError, match="no asyncio client"):
        asyncio.run(reader.get_async(users))
    assert asyncio.run(reader.aget(users, timeout_s=5.0)) == [expected[u] for u in users]
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(local.path / "data" / "online.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # readers never wait for a writer
    # a re-run writes the same rows again and changes nothing
    assert lf.write_histories(local, hist) == len(hist)
    assert reader.get(users) == [expected[u] for u in users]
    assert parquet_files(Path(local.settings.offline_root), "user_history") == ["batch.parquet"]


def _file_bytes_read(reader: lf.HistoryReader, users: list[str]) -> int:
    """Bytes this thread's read calls returned (Linux's rchar) while ``reader`` reads every user twice."""
    def rchar() -> int:
        return int(Path("/proc/thread-self/io").read_text().split()[1])

    before = rchar()
    for user in users * 2:
        reader.get([user])
    return rchar() - before


@pytest.mark.skipif(not Path("/proc/thread-self/io").exists(), reason="needs Linux's per-thread I/O counters")
def test_the_sqlite_reader_holds_the_history_pages_and_reads_no_file(local: lf.FeatureRepo) -> None:
    pairs = toy_interactions()
    lf.write_histories(local, lf.histories_from_interactions(pairs))
    users = list(expected_histories(pairs))
    held = lf.HistoryReader(local.path)
    assert held.held_pages_bytes == (local.path / "data" / "online.db").stat().st_size > 0
    # a read never waits for the disk: not one 4 KiB page read in 48 reads (the counter's own file: ~120 B)
    assert _file_bytes_read(held, users) < 4096
    plain = lf.HistoryReader(local.path, sqlite_cache_mb=0)  # SQLite's own default: pages read as needed
    assert plain.held_pages_bytes == 0 and _file_bytes_read(plain, users) > 4096
    assert held.get(users) == plain.get(users)
    with pytest.raises(ValueError, match="sqlite_cache_mb must be >= 0"):
        lf.HistoryReader(local.path, sqlite_cache_mb=-1)


def test_publish_model_versions(local: lf.FeatureRepo, tmp_path: Path) -> None:
    v1 = toy_videos(seed=1)
    fs = lf.publish_model_version(local, "linkedout", 1, v1)
    assert fs.name == "linkedout_v1"
    got = online_videos(local, [1, 7, 999])
    assert got["model_version"] == ["linkedout_v1", "linkedout_v1", None]
    np.testing.assert_allclose(got["embedding"][1], v1.embeddings[6], rtol=0, atol=0)
    np.testing.assert_allclose(got["gate"][0], v1.gate[0], rtol=0, atol=0)
    assert got["title"][:2] == ["video 1", "video 7"] and got["popularity"][1] == v1.popularity[6]
    # version 2 re-publishes the catalogue, from an exported version directory (docs/serving.md §1)
    v2 = toy_videos(seed=2)
    vdir = tmp_path / "linkedout_ranker" / "2"
    vdir.mkdir(parents=True)
    Catalog(ids=v2.ids, embeddings=v2.embeddings, gate=v2.gate, contributions=v2.contributions,
            popularity=v2.popularity, published=v2.published).save(vdir, model="linkedout", version=2)
    titles = pd.DataFrame({"item": ["7"], "title": ["the seventh"]})
    for _ in range(2):  # the second run is a re-run: same state
        lf.publish_catalog(local, vdir, titles=titles)
    got = online_videos(local, [7])
    assert got["model_version"] == ["linkedout_v2"] and got["title"] == ["the seventh"]
    np.testing.assert_allclose(got["embedding"][0], v2.embeddings[6], rtol=0, atol=0)
    services = {s.name: s.tags for s in local.store.list_feature_services()}
    assert services == {"linkedout_v1": {"model": "linkedout", "version": "1"},
                        "linkedout_v2": {"model": "linkedout", "version": "2"}}
    assert local.published_services() == [("linkedout", 1), ("linkedout", 2)]
    offline = Path(local.settings.offline_root)
    assert parquet_files(offline, "video_embedding") == ["linkedout_v1.parquet", "linkedout_v2.parquet"]
    # the feature service serves all three views by name
    resp = local.store.get_online_features(local.store.get_feature_service("linkedout_v2"),
                                           entity_rows=[{"user_id": "1", "video_id": 7}]).to_dict()
    assert resp["model_version"] == ["linkedout_v2"] and "watched" in resp
    with pytest.raises(lf.FeatureRepoError, match="no catalogue metadata at"):
        lf.publish_catalog(local, tmp_path)


def test_push_appends_keeps_ten_and_is_idempotent(local: lf.FeatureRepo) -> None:
    pairs = toy_interactions()
    lf.write_interactions(local, pairs)
    lf.write_histories(local, lf.histories_from_interactions(pairs))
    reader = lf.HistoryReader(local)
    user = str(pairs["user"].iloc[0])
    before = reader.get([user])[0]
    t0 = int(pairs.loc[pairs["user"] == user, "timestamp"].max())
    after = lf.record_watch(local, user, 38, timestamp_ms=t0 + 1000)
    assert after == [*before, 38][-10:] and reader.get([user]) == [after]
    assert lf.record_watch(local, user, 38, timestamp_ms=t0 + 1000) == after  # re-delivered: no change
    assert lf.record_watch(local, user, 39, timestamp_ms=t0 - 1) == after  # older than the history: skipped
    events = pd.DataFrame({"user_id": [user, "newcomer", user], "video_id": [40, 5, 39],
                           "event_timestamp": [t0 + 3000, t0, t0 + 2000]})
    changed = lf.push_watches(local, events)
    assert changed == {user: [*after, 39, 40][-10:], "newcomer": [5]}
    assert reader.get([user, "newcomer"]) == [changed[user], [5]]
    # the events are in the training data, once each, even though 38 was pushed twice
    back = lf.read_interactions(local)
    mine = back[back["user"] == user]
    assert mine["item"].tolist()[-3:] == ["38", "39", "40"] and (mine["item"] == "38").sum() == 1 + (
        pairs.loc[pairs["user"] == user, "item"] == "38").sum()
    # a batch rebuild from the older dataset interactions does not undo the live watches
    lf.write_histories(local, lf.histories_from_interactions(pairs))
    assert reader.get([user]) == [changed[user]]
    # ... unless told not to look (a bulk load into a store known to be empty): then it does
    lf.write_histories(local, lf.histories_from_interactions(pairs), check_newer=False)
    assert reader.get([user]) == [before]
    lf.write_histories(local, rows_of(changed, events, user), check_newer=False)
    assert reader.get([user]) == [changed[user]]
    # the late event (older than the history online) was logged, not applied; a rebuild from the
    # interactions read back places it in time order, and is written over the live row (same last watch)
    assert back.loc[back["user"] == user, "timestamp"].eq(t0 - 1).sum() == 1
    rebuilt = lf.histories_from_interactions(back)
    truth = expected_histories(back)[user]
    assert list(rebuilt.loc[rebuilt["user_id"] == user, "watched"].iloc[0]) == truth != changed[user]
    lf.write_histories(local, rebuilt)
    assert reader.get([user, "newcomer"]) == [truth, [5]]
    with pytest.raises(ValueError, match="timezone-aware"):
        lf.push_watches(local, events.assign(event_timestamp=pd.to_datetime(events["event_timestamp"], unit="ms")))
    with pytest.raises(ValueError, match="missing columns"):
        lf.push_watches(local, events.drop(columns="video_id"))


def test_materialize_path(tmp_path: Path) -> None:
    """Offline only, then `materialize` (first from the epoch, then incrementally): the online store
    gets the histories (a year-old watch included) and the videos; live pushes survive it."""
    repo = lf.open_repo(lf.render_repo(tmp_path / "repo", lf.FeastSettings()))
    assert lf.materialize(repo) == {"user_history": "empty", "video_meta": "empty", "video_embedding": "empty"}
    lf.apply(repo)
    pairs = toy_interactions()
    pairs.loc[0, "timestamp"] -= 3 * 365 * 86_400_000  # older than Feast's one-year default window
    lf.write_histories(repo, lf.histories_from_interactions(pairs), online="none")
    lf.write_videos(repo, toy_videos(), model_version="linkedout_v1", online="none")
    reader = lf.HistoryReader(repo)
    expected = expected_histories(pairs)
    assert reader.get(list(expected)) == [[]] * len(expected)
    assert lf.materialize(repo) == {"user_history": "full", "video_meta": "full", "video_embedding": "full"}
    assert reader.get(list(expected)) == [expected[u] for u in expected]
    assert online_videos(repo, [3])["model_version"] == ["linkedout_v1"]
    user = next(iter(expected))
    t0 = int(pairs.loc[pairs["user"] == user, "timestamp"].max())
    live = lf.record_watch(repo, user, 12, timestamp_ms=t0 + 1)
    v2 = lf.write_videos(repo, toy_videos(seed=5), model_version="linkedout_v2", online="materialize")
    assert v2.online == "materialize" and online_videos(repo, [3])["model_version"] == ["linkedout_v2"]
    assert lf.materialize(repo, ["user_history"], end=datetime.now(UTC) + timedelta(seconds=1)) == {
        "user_history": "incremental"}
    assert lf.materialize(repo, ["user_history"], incremental=False) == {"user_history": "full"}
    assert reader.get([user]) == [live]  # the live row is offline too, and it is the latest
    with pytest.raises(ValueError, match="unknown feature views"):
        lf.materialize(repo, ["nope"])
    with pytest.raises(ValueError, match="online must be one of"):
        lf.write_videos(repo, toy_videos(), model_version="linkedout_v3", online="later")  # type: ignore[arg-type]


def test_read_rows_report_event_times(local: lf.FeatureRepo) -> None:
    pairs = toy_interactions()
    lf.write_histories(local, lf.histories_from_interactions(pairs))
    user = str(pairs["user"].iloc[-1])
    (ts, values), (none_ts, none_values) = read_rows(local, "user_history", [user, "ghost"],
                                                     ["watched", "last_watch"])
    last = int(pairs.loc[pairs["user"] == user, "timestamp"].max())
    assert values == {"watched": expected_histories(pairs)[user], "last_watch": last}
    # Feast's SQLite store keeps event times in whole seconds; last_watch is exact
    assert ts is not None and int(ts.timestamp()) == last // 1000
    assert none_ts is None and none_values is None


def test_reader_agrees_with_get_online_features_and_is_faster(local: lf.FeatureRepo) -> None:
    """The reader's shortcut (the provider's online_read, by feature name) answers what Feast's own
    get_online_features answers, for known and unknown users, and does not cost more (a ratio of
    medians, not a time: the machine is shared)."""
    import time

    pairs = toy_interactions()
    lf.write_histories(local, lf.histories_from_interactions(pairs))
    reader = lf.HistoryReader(local)
    store = reader.repo.store
    users = [*dict.fromkeys(pairs["user"]), "ghost"]

    def feast(u: list[str]) -> list[list[int]]:
        got = store.get_online_features(["user_history:watched"], entity_rows={"user_id": u}).to_dict()["watched"]
        return [w or [] for w in got]

    assert reader.get(users) == feast(users)
    with pytest.raises(ValueError, match="view:feature"):
        lf.HistoryReader(local, feature="watched")
    with pytest.raises(lf.FeatureRepoError, match=r"Array\(Int64\) feature keyed by user_id"):
        lf.HistoryReader(local, feature="video_meta:popularity")
    with pytest.raises(lf.FeatureRepoError, match="no 'nope' feature"):
        lf.HistoryReader(local, feature="user_history:nope")

    def median(fn: object, n: int = 200) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    one = [users[0]]
    assert median(lambda: reader.get(one)) < median(lambda: feast(one))


# ------------------------------------------------------------------------------------------------
# processes: the feast CLI on a rendered repo, and what the transformer imports

def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.integration
@pytest.mark.slow  # two `feast` processes, each importing Feast (~10-30 s on a shared machine)
def test_feast_cli_apply_keeps_published_services(local: lf.FeatureRepo) -> None:
    """`feast -c DIR apply` (which deletes what the directory does not declare) keeps the feature
    services and the online data the library wrote."""
    lf.register_model_version(local, "sasrec_id", 4)
    feast = Path(sys.executable).with_name("feast")
    run = subprocess.run([str(feast), "-c", str(local.path), "apply"], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    listed = subprocess.run([str(feast), "-c", str(local.path), "feature-services", "list"], capture_output=True,
                            text=True, env=_env(), timeout=300)
    assert "sasrec_id_v4" in listed.stdout, listed.stdout + listed.stderr[-2000:]
    local.store.refresh_registry()
    assert "sasrec_id_v4" in {s.name for s in local.store.list_feature_services()}


@pytest.mark.integration
def test_reader_imports_neither_kserve_nor_tritonclient() -> None:
    code = ("import sys, linkedout.featurestore, linkedout.featurestore.online; "
            "bad = [m for m in ('kserve', 'tritonclient') if m in sys.modules]; "
            "assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
