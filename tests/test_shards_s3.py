"""The shard store on S3, against a real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import moto_s3, new_bucket

from linkedout.shards import (
    FeatureReader,
    FeatureSpec,
    MissingKeyError,
    S3Storage,
    ShardStoreError,
    ShardWriter,
    info_from_store,
    open_storage,
)
from linkedout.shards.layout import data_key

pytestmark = pytest.mark.integration

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

SHAPE = (2, 3, 8)  # (L, K, D)
IDS = [f"v{i:02d}" for i in range(7)]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with dummy credentials in the environment."""
    with moto_s3() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    return new_bucket(endpoint, "features")


def make_spec(dtype: str) -> FeatureSpec:
    return FeatureSpec(backbone="tiny", layers=(0, 4), prompts=("which objects?",), num_frames=2,
                       frame_size=32, tokens=3, hidden=8, dtype=dtype)


def features(ids: list[str]) -> dict[str, np.ndarray]:
    return {vid: np.random.default_rng(i).normal(size=SHAPE).astype(np.float32) for i, vid in enumerate(ids)}


def extract_all(writer: ShardWriter, feats: dict[str, np.ndarray], calls: list[int] | None = None) -> None:
    for i, chunk in enumerate(writer.plan(sorted(feats))):
        if writer.is_complete(i, expected_ids=chunk, verify="size"):
            continue
        if calls is not None:
            calls.append(i)
        writer.write_shard(i, chunk, np.stack([feats[v] for v in chunk]))
    writer.finalize()


def close(a: np.ndarray, b: np.ndarray, dtype: str) -> bool:
    if dtype == "float16":
        return bool(np.array_equal(a, b.astype(np.float16).astype(np.float32)))
    return bool((np.abs(a - b) <= np.abs(b).max(axis=-1, keepdims=True) / 254 * 1.0001).all())


def test_s3_storage_basics(endpoint: str, bucket: str) -> None:
    store = S3Storage(bucket, "a", endpoint_url=endpoint)
    other = S3Storage(bucket, "ab", endpoint_url=endpoint)
    store.write_bytes("x/y.bin", b"hello")
    other.write_bytes("z.bin", b"!")
    assert store.read_bytes("x/y.bin") == b"hello" and store.size("x/y.bin") == 5
    assert store.exists("x/y.bin") and not store.exists("x/none")
    assert store.list() == ["x/y.bin"] and store.list("x/") == ["x/y.bin"] and other.list() == ["z.bin"]
    assert store.local_path("x/y.bin") is None and store.uri == f"s3://{bucket}/a"
    with pytest.raises(MissingKeyError, match=rf"'x/none'.*s3://{bucket}/a"):
        store.read_bytes("x/none")
    store.delete("x/y.bin")
    store.delete("x/y.bin")
    assert store.list() == []
    with pytest.raises(ShardStoreError, match="NoSuchBucket"):
        S3Storage("no-such-bucket", endpoint_url=endpoint).read_bytes("k")


def test_unreachable_endpoint_is_a_clear_error() -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{port}", connect_timeout=1, retries=0)
    with pytest.raises(ShardStoreError, match=r"'spec\.json'.*s3://bucket"):
        store.read_bytes("spec.json")


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_s3_roundtrip(endpoint: str, bucket: str, dtype: str) -> None:
    feats = features(IDS)
    uri = f"s3://{bucket}/features/v1"
    extract_all(ShardWriter(uri, make_spec(dtype), shard_size=3, endpoint_url=endpoint), feats)
    reader = FeatureReader(uri, cache_size=1, endpoint_url=endpoint)
    assert reader.spec == make_spec(dtype) and reader.ids == IDS and reader.shards == (0, 1, 2)
    order = ["v06", "v00", "v03", "v06"]
    for row, vid in zip(reader.get_many(order), order):
        assert close(row, feats[vid], dtype)
    assert len(reader._cache.entries) == 1  # LRU bounded by cache_size
    with pytest.raises(KeyError, match="'nope'"):
        reader.get("nope")
    assert reader.verify() == 3 * (2 if dtype == "int8" else 1)
    clone = pickle.loads(pickle.dumps(reader))  # a DataLoader worker's copy builds its own client
    np.testing.assert_array_equal(clone.get_many(order), reader.get_many(order))
    info = info_from_store(reader)
    assert info["num_shards"] == 3 and info["store_total_bytes"] > info["stored_shard_bytes"] > 0


def test_s3_endpoint_from_environment(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    storage = open_storage(f"s3://{bucket}/env")  # no endpoint_url: boto3 reads AWS_ENDPOINT_URL
    extract_all(ShardWriter(storage, make_spec("float16"), shard_size=4), features(IDS[:2]))
    assert FeatureReader(f"s3://{bucket}/env").ids == IDS[:2]


def test_s3_killed_and_damaged_shards(endpoint: str, bucket: str) -> None:
    feats = features(IDS)
    uri = f"s3://{bucket}/crash"
    writer = ShardWriter(uri, make_spec("int8"), shard_size=4, endpoint_url=endpoint)
    chunks = writer.plan(IDS)
    writer.write_shard(0, chunks[0], np.stack([feats[v] for v in chunks[0]]))
    writer.storage.write_bytes(data_key(1), b"half a shard")  # killed before the manifest
    reader = FeatureReader(uri, endpoint_url=endpoint)
    assert reader.ids == chunks[0]
    calls: list[int] = []
    extract_all(writer, feats, calls)
    assert calls == [1]
    # a data object replaced behind the manifest's back: same size, other bytes
    raw = writer.storage.read_bytes(data_key(1))
    writer.storage.write_bytes(data_key(1), raw[:-1] + bytes([raw[-1] ^ 1]))
    assert writer.is_complete(0) and not writer.is_complete(1)
    reader = FeatureReader(uri, endpoint_url=endpoint)
    assert close(reader.get("v00"), feats["v00"], "int8")
    with pytest.raises(ShardStoreError, match=r"checksum mismatch.*shard-00001"):
        reader.get("v05")
    extract_all(writer, feats, calls)  # a size-only resume check cannot see it (same size) ...
    assert calls == [1]  # ... the checksum check above does: redo it
    writer.write_shard(1, chunks[1], np.stack([feats[v] for v in chunks[1]]))
    writer.finalize()
    assert close(FeatureReader(uri, endpoint_url=endpoint).get("v05"), feats["v05"], "int8")


def test_s3_cache_dir(endpoint: str, bucket: str, tmp_path: Path) -> None:
    feats = features(IDS)
    uri = f"s3://{bucket}/cached"
    writer = ShardWriter(uri, make_spec("float16"), shard_size=4, endpoint_url=endpoint)
    extract_all(writer, feats)
    first = FeatureReader(uri, endpoint_url=endpoint, cache_dir=tmp_path)
    expected = first.get_many(IDS)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    for shard in (0, 1):  # the remote data goes away; the cache, keyed by sha256, still serves it
        writer.storage.delete(data_key(shard))
    second = FeatureReader(uri, endpoint_url=endpoint, cache_dir=tmp_path)
    np.testing.assert_array_equal(second.get_many(IDS), expected)
    assert isinstance(second._cache.get(0).data, np.memmap)  # type: ignore[union-attr]


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A loopback TCP server that accepts every connection and never answers a byte."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)  # kept open, never read, never written
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_the_default_s3_bounds_fail_a_silent_endpoint_within_30_s() -> None:
    from linkedout.shards import S3Config

    cfg = S3Config()
    assert cfg.worst_case_seconds() <= 30  # every attempt waiting out both timeouts, plus the back-off
    client = S3Storage("bucket", endpoint_url="http://127.0.0.1:1").client.meta.config
    assert (client.connect_timeout, client.read_timeout) == (cfg.connect_timeout, cfg.read_timeout)
    assert client.retries["total_max_attempts"] == cfg.attempts == 3  # botocore counts the first try too


def test_a_silent_endpoint_fails_fast_naming_it(silent_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import time

    from linkedout.cli import main
    from linkedout.data.synth import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig.preset("toy", num_videos=30, num_users=4), write_videos=False)
    _credentials(monkeypatch)
    t0 = time.monotonic()
    assert main(["features", "info", "--store", "s3://bucket/features", "--s3-endpoint", silent_endpoint,
                 "--s3-read-timeout", "0.5", "--s3-retries", "1"]) == 2
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert elapsed < 5, elapsed  # 2 attempts x 0.5 s (before: 6 attempts x 120 s, over 400 s with no output)
    assert silent_endpoint in err and "did not answer" in err and "read timeout 0.5 s, 2 attempts" in err
    # the same bounds from the environment, for extract (which reaches the store after loading the backbone)
    monkeypatch.setenv("LINKEDOUT_S3_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("LINKEDOUT_S3_RETRIES", "0")
    t0 = time.monotonic()
    assert main(["extract", "--data", str(data), "--out", "s3://bucket/f", "--s3-endpoint", silent_endpoint,
                 "--layers", "0,4", "--tokens", "16", "--frames", "2", "--device", "cpu"]) == 2
    assert time.monotonic() - t0 < 20
    err = capsys.readouterr().err
    assert silent_endpoint in err and "read timeout 0.5 s, 1 attempt)" in err


def test_extract_reaches_the_store_before_it_loads_the_backbone(silent_endpoint: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """A 7B backbone takes minutes to load: an S3 endpoint that never answers must not wait for it."""
    from linkedout.data.microlens import load_microlens
    from linkedout.data.synth import SynthConfig, generate
    from linkedout.extraction import BackboneConfig, driver
    from linkedout.shards import S3Config

    data = generate(tmp_path / "data", SynthConfig.preset("toy", num_videos=30, num_users=4), write_videos=False)
    _credentials(monkeypatch)
    loads: list[object] = []
    monkeypatch.setattr(driver, "load_backbone", loads.append)
    with pytest.raises(ShardStoreError, match=rf"{silent_endpoint}.*did not answer"):
        driver.extract_dataset(load_microlens(data, check_videos=False), "s3://bucket/f", None,
                               BackboneConfig(device="cpu"),
                               endpoint_url=S3Config(silent_endpoint, read_timeout=0.5, retries=0))
    assert loads == []  # failed before the backbone was loaded
    # and `linkedout extract` reaches it before importing the extraction code at all
    from linkedout.cli import main

    monkeypatch.setattr("linkedout.job.extraction.extract", loads.append)
    assert main(["extract", "--data", str(data), "--out", "s3://bucket/f", "--s3-endpoint", silent_endpoint,
                 "--s3-read-timeout", "0.5", "--s3-retries", "0"]) == 2
    assert loads == []


@pytest.mark.slow  # waits out the default bounds twice (about 20 s each)
def test_with_the_default_bounds_a_silent_endpoint_fails_within_30_s(silent_endpoint: str,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    import time

    from linkedout.cli import main
    from linkedout.data.synth import SynthConfig, generate

    data = generate(tmp_path / "data", SynthConfig.preset("toy", num_videos=30, num_users=4), write_videos=False)
    _credentials(monkeypatch)
    for name in ("LINKEDOUT_S3_CONNECT_TIMEOUT", "LINKEDOUT_S3_READ_TIMEOUT", "LINKEDOUT_S3_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    for argv in (["features", "info", "--store", "s3://bucket/features"],
                 ["extract", "--data", str(data), "--out", "s3://bucket/f", "--device", "cpu"]):
        t0 = time.monotonic()
        assert main([*argv, "--s3-endpoint", silent_endpoint]) == 2
        elapsed = time.monotonic() - t0
        err = capsys.readouterr().err
        assert elapsed < 30, (argv[0], elapsed)
        assert silent_endpoint in err and "did not answer" in err, err


def test_malformed_s3_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from linkedout.shards import S3Config

    monkeypatch.setenv("LINKEDOUT_S3_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="LINKEDOUT_S3_CONNECT_TIMEOUT"):
        S3Config.from_env()
    monkeypatch.setenv("LINKEDOUT_S3_CONNECT_TIMEOUT", "0")
    with pytest.raises(ValueError, match=r"S3Config\.connect_timeout"):
        S3Config.from_env()
    monkeypatch.setenv("LINKEDOUT_S3_CONNECT_TIMEOUT", "2")
    assert S3Config.from_env(connect_timeout=4).connect_timeout == 4  # a flag wins over the environment
