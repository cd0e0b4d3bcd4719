"""The production online store: Feast's Redis store against a real redis-server on 127.0.0.1.

The server (Debian's ``redis-server``) is started by the fixture on a free port with no
persistence and stopped by its PID. The offline data stays in a local directory here; the S3
offline path is in test_featurestore_s3.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_featurestore import expected_histories, online_videos, toy_interactions, toy_videos

import linkedout.featurestore as lf
from linkedout.featurestore.local_redis import LocalRedis, free_port, redis_server_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed (apt-get install redis-server)"),
]

TIMEOUT_S = 0.3  # socket connect/read timeout of the repositories below


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    with LocalRedis() as server:
        yield server


def production_repo(path: Path, address: str, **overrides: object) -> lf.FeatureRepo:
    fields: dict = {"offline_root": str(path / "offline"), "registry": str(path / "registry.db"),
                    "redis_timeout_s": TIMEOUT_S, "redis_retries": 1} | overrides
    settings = lf.FeastSettings(environment="production", redis_address=address, **fields)
    return lf.open_repo(lf.render_repo(path / "repo", settings))


@pytest.fixture(scope="module")
def repo(redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory) -> lf.FeatureRepo:
    repo = production_repo(tmp_path_factory.mktemp("feast-redis"), redis_server.address)
    lf.apply(repo)
    return repo


def test_redis_end_to_end(repo: lf.FeatureRepo) -> None:
    pairs = toy_interactions(seed=3)
    lf.write_interactions(repo, pairs)
    hist = lf.histories_from_interactions(lf.read_interactions(repo))
    assert lf.write_histories(repo, hist) == len(hist)
    reader = lf.HistoryReader(repo.path)
    assert reader.address == f"redis {repo.settings.redis_address}"
    expected = expected_histories(pairs)
    users = list(expected)
    assert reader.get([*users, "nobody"]) == [*(expected[u] for u in users), []]
    # the transformer's read: Feast's asyncio client on the event loop, the same answer
    assert reader.reads_async
    assert asyncio.run(reader.get_async([*users, "nobody"])) == [*(expected[u] for u in users), []]
    assert asyncio.run(reader.aget(users[:3], timeout_s=2.0)) == [expected[u] for u in users[:3]]  # another loop
    videos = toy_videos(seed=4)
    lf.publish_model_version(repo, "hybrid", 2, videos)
    got = online_videos(repo, [5])
    assert got["model_version"] == ["hybrid_v2"]
    np.testing.assert_allclose(got["embedding"][0], videos.embeddings[4], rtol=0, atol=0)
    user = users[0]
    t0 = int(pairs.loc[pairs["user"] == user, "timestamp"].max())
    live = lf.record_watch(repo, user, 3, timestamp_ms=t0 + 5)
    assert live == [*expected[user], 3][-10:] and reader.get([user]) == [live]
    assert lf.record_watch(repo, user, 3, timestamp_ms=t0 + 5) == live  # re-delivered: no change
    lf.write_histories(repo, hist)  # an older batch does not undo the live watch (Redis checks too)
    assert reader.get([user]) == [live]
    assert lf.materialize(repo, ["user_history"]) == {"user_history": "full"}  # the live row is offline too
    assert reader.get([user]) == [live]
    # a late watch is logged, not applied; the rebuild (same last watch as the live row) replaces it
    assert lf.record_watch(repo, user, 4, timestamp_ms=t0 - 1) == live
    back = lf.read_interactions(repo)
    truth = expected_histories(back)[user]
    assert truth != live and 4 in truth
    lf.write_histories(repo, lf.histories_from_interactions(back))
    assert reader.get([user]) == [truth]


def test_redis_materialize_path(redis_server: LocalRedis, tmp_path: Path) -> None:
    repo = production_repo(tmp_path, redis_server.address, project="matpath")
    lf.apply(repo)
    pairs = toy_interactions(seed=5)
    lf.write_histories(repo, lf.histories_from_interactions(pairs), online="none")
    reader = lf.HistoryReader(repo)
    expected = expected_histories(pairs)
    assert reader.get(list(expected)[:3]) == [[], [], []]
    lf.write_videos(repo, toy_videos(), model_version="linkedout_v1", online="materialize")
    assert lf.materialize(repo) == {"user_history": "full", "video_meta": "incremental", "video_embedding": "incremental"}
    assert reader.get(list(expected)) == [expected[u] for u in expected]
    assert online_videos(repo, [1])["model_version"] == ["linkedout_v1"]


def _wait_for_error(fn: object, bound_s: float) -> tuple[BaseException, float]:
    t = time.monotonic()
    with pytest.raises(lf.OnlineStoreUnavailable) as info:
        fn()  # type: ignore[operator]
    return info.value, time.monotonic() - t


def test_unreachable_redis_is_a_clear_bounded_error(repo: lf.FeatureRepo, tmp_path: Path) -> None:
    """Nobody on the port (refused at once), and a server that accepts and never answers (the read
    timeout): OnlineStoreUnavailable naming host:port, within timeout x (retries + 1) and some slack."""
    lf.write_histories(repo, lf.histories_from_interactions(toy_interactions(seed=3)))
    shared = {"registry": repo.settings.registry, "offline_root": repo.settings.offline_root}
    dead = production_repo(tmp_path / "dead", f"127.0.0.1:{free_port()}", **shared)
    reader = lf.HistoryReader(dead)  # the registry is a file: opening needs no Redis
    err, took = _wait_for_error(lambda: reader.get(["1"]), 2.0)
    assert f"127.0.0.1:{dead.settings.redis_host_port[1]}" in str(err) and took < 2.0, (str(err), took)

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never replies
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = silent.getsockname()[1]
        hung = production_repo(tmp_path / "hung", f"127.0.0.1:{port}", **shared)
        reader = lf.HistoryReader(hung)
        bound = TIMEOUT_S * (hung.settings.redis_retries + 1)
        err, took = _wait_for_error(lambda: reader.get(["1"]), bound + 1.5)
        assert f"127.0.0.1:{port}" in str(err) and "Timeout" in str(err), str(err)
        assert took < bound + 1.5, took
        # the asyncio deadline of the transformer's call path answers first when it is shorter
        t = time.monotonic()
        with pytest.raises(lf.OnlineStoreUnavailable, match=rf"127\.0\.0\.1:{port}.*within 0\.1 s"):
            asyncio.run(reader.aget(["1"], timeout_s=0.1))
        assert time.monotonic() - t < 0.5
        reader.close()
        with pytest.raises(lf.OnlineStoreUnavailable, match=rf"127\.0\.0\.1:{port}"):
            lf.record_watch(hung, "1", 2, log=False)
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        silent.close()


def test_reader_recovers_when_redis_comes_back(tmp_path: Path) -> None:
    """Redis killed under a live reader: a clear error within the bound; restarted on the same port:
    the same reader answers again (the server keeps serving once the store is back)."""
    server = LocalRedis().start()
    try:
        repo = production_repo(tmp_path, server.address)
        lf.apply(repo)
        hist = lf.histories_from_interactions(toy_interactions(seed=6))
        lf.write_histories(repo, hist)
        reader = lf.HistoryReader(repo.path)
        user = str(hist["user_id"].iloc[0])
        want = list(hist["watched"].iloc[0])
        assert reader.get([user]) == [want]
        server.stop()
        err, took = _wait_for_error(lambda: reader.get([user]), 2.0)
        assert server.address in str(err) and took < 2.0
        server.start()  # same port, empty (no persistence): write again, read with the same reader
        lf.write_histories(repo, hist)
        assert reader.get([user]) == [want]
        assert asyncio.run(reader.aget([user, "nobody"], timeout_s=2.0)) == [want, []]

        async def down_and_back() -> tuple[BaseException, float]:  # one event loop, as in the transformer
            assert await reader.get_async([user]) == [want]
            server.stop()
            t = time.monotonic()
            with pytest.raises(lf.OnlineStoreUnavailable) as err:
                await reader.aget([user], timeout_s=2.0)
            took = time.monotonic() - t
            server.start()
            lf.write_histories(repo, hist)
            assert await reader.get_async([user]) == [want]  # the same asyncio client reconnects
            return err.value, took

        err, took = asyncio.run(down_and_back())
        assert server.address in str(err) and took < 2.0, (str(err), took)
        reader.close()
    finally:
        server.stop()
