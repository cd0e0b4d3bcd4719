"""The shard store on a local directory: storage, int8 quantisation, shards, index, resume, info."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linkedout.shards import (
    FeatureReader,
    FeatureSpec,
    LocalStorage,
    MissingKeyError,
    S3Storage,
    ShardStoreError,
    ShardWriter,
    dequantize_int8,
    format_info,
    info_from_store,
    open_storage,
    quantize_int8,
    storage_summary,
)
from linkedout.shards.layout import INDEX_KEY, SPEC_KEY, data_key, manifest_key, scale_key

SHAPE = (2, 3, 8)  # (L, K, D), tiny


def make_spec(dtype: str = "float16", **overrides: Any) -> FeatureSpec:
    fields: dict[str, Any] = dict(backbone="tiny", layers=(0, 4), prompts=("which objects?",), num_frames=2,
                                  frame_size=32, tokens=3, hidden=8, dtype=dtype)
    fields.update(overrides)
    return FeatureSpec(**fields)


def video_features(ids: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct float32 [L, K, D] features per id, with an all-zero row to exercise scale 0."""
    out = {}
    for i, vid in enumerate(ids):
        x = np.random.default_rng(seed * 1000 + i).normal(scale=1 + i, size=SHAPE).astype(np.float32)
        x[0, 0] = 0.0
        out[vid] = x
    return out


def run_extraction(writer: ShardWriter, feats: dict[str, np.ndarray], failed: dict[str, str] | None = None,
                   on_extract: Callable[[int], None] | None = None) -> None:
    """What the extraction driver does: plan, skip complete shards, write the others, finalize."""
    failed = failed or {}
    for i, chunk in enumerate(writer.plan(sorted([*feats, *failed]))):
        if writer.is_complete(i, expected_ids=chunk):
            continue
        if on_extract is not None:
            on_extract(i)
        ok = [v for v in chunk if v not in failed]
        array = np.stack([feats[v] for v in ok]) if ok else np.zeros((0, *SHAPE), np.float32)
        writer.write_shard(i, ok, array, {v: failed[v] for v in chunk if v in failed})
    writer.finalize()


IDS = [f"v{i:02d}" for i in range(7)]


# ------------------------------------------------------------------------------------------ storage


def test_local_storage_roundtrip_list_delete(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("a/b.bin", b"xyz")
    store.write_bytes("ab.bin", b"1")
    assert store.read_bytes("a/b.bin") == b"xyz"
    assert store.exists("a/b.bin") and not store.exists("a/c.bin")
    assert store.size("a/b.bin") == 3
    assert store.list() == ["a/b.bin", "ab.bin"]
    assert store.list("a/") == ["a/b.bin"]
    assert store.list("a") == ["a/b.bin", "ab.bin"]
    assert store.local_path("ab.bin") == tmp_path / "root" / "ab.bin"
    # a temp file left by a killed atomic write is not listed
    (tmp_path / "root" / "a" / ".c.bin.k3j2.tmp").write_bytes(b"partial")
    assert store.list("a/") == ["a/b.bin"]
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # absent: no error
    assert store.list("a/") == []


def test_local_storage_errors_name_the_key(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    with pytest.raises(MissingKeyError, match=r"'nope\.json'.*" + str(tmp_path)):
        store.read_bytes("nope.json")
    with pytest.raises(MissingKeyError, match="nope"):
        store.size("nope")
    for bad in ["", "/abs", "a/../b", "a//b", "./a"]:
        with pytest.raises(ValueError, match="storage key"):
            store.read_bytes(bad)


def test_open_storage_dispatch(tmp_path: Path) -> None:
    assert isinstance(open_storage(tmp_path), LocalStorage)
    assert open_storage(f"file://{tmp_path}").uri == str(tmp_path)
    s3 = open_storage("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Storage) and s3.uri == "s3://bucket/some/prefix"
    assert open_storage(s3) is s3
    with pytest.raises(ValueError, match="unsupported"):
        open_storage("gs://bucket/x")
    with pytest.raises(ValueError, match="bucket"):
        open_storage("s3:///x")
    with pytest.raises(ValueError, match=r"S3Config\.read_timeout"):
        S3Storage("bucket", read_timeout=0)


# ------------------------------------------------------------------------------------------- quant


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("magnitude", [1e-6, 1.0, 3e4, 1e30])
def test_int8_error_bound(seed: int, magnitude: float) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(df=2, size=(3, 4, 33)) * magnitude).astype(np.float32)  # heavy tails
    x[1, 2] = 0.0  # an all-zero row
    x[2, 0, :] = magnitude  # a constant row
    q, scale = quantize_int8(x)
    assert q.dtype == np.int8 and q.shape == x.shape
    assert scale.dtype == np.float32 and scale.shape == x.shape[:-1]
    assert np.abs(q.astype(np.int32)).max() <= 127
    absmax = np.abs(x).max(axis=-1)
    np.testing.assert_allclose(scale, absmax / 127, rtol=1e-6)
    deq = dequantize_int8(q, scale)
    err = np.abs(x - deq)
    bound = (scale / 2)[..., None] * (1 + 1e-5)
    assert (err <= bound).all(), float((err - bound).max())
    # the largest element of each non-zero row maps to +-127 exactly
    assert (np.abs(q).max(axis=-1)[absmax > 0] == 127).all()
    assert scale[1, 2] == 0 and (q[1, 2] == 0).all() and (deq[1, 2] == 0).all()


def test_int8_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="floating"):
        quantize_int8(np.ones((2, 3), np.int32))
    q, scale = quantize_int8(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="scale shape"):
        dequantize_int8(q, scale[:1])


# -------------------------------------------------------------------------------------------- spec


def test_spec_json_roundtrip_and_bytes() -> None:
    spec = make_spec("int8")
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.layers == (0, 4) and again.prompts == ("which objects?",)
    assert FeatureSpec.from_dict({**spec.to_dict(), "layers": [0, 4]}) == spec
    assert spec.shape == SHAPE
    assert spec.bytes_per_video() == 2 * 3 * 8 + 2 * 3 * 4
    assert make_spec().bytes_per_video() == 2 * 3 * 8 * 2
    with pytest.raises(ValueError, match="unknown field"):
        FeatureSpec.from_dict({**spec.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="hidden"):
        FeatureSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "hidden"})


@pytest.mark.parametrize(("field", "value"), [
    ("backbone", ""), ("layers", ()), ("layers", (4, 0)), ("layers", (0, 0)), ("layers", (-1,)),
    ("prompts", ("",)), ("num_frames", 0), ("frame_size", -1), ("tokens", 0), ("hidden", 1.5),
    ("dtype", "float32"), ("compression", ""),
])
def test_spec_validation_names_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"FeatureSpec\.{field}"):
        make_spec(**{field: value})


# ------------------------------------------------------------------------------------------ shards


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_roundtrip_and_lookup(tmp_path: Path, dtype: str) -> None:
    feats = video_features(IDS)
    writer = ShardWriter(tmp_path, make_spec(dtype), shard_size=3)
    run_extraction(writer, feats, failed={"v99": "VideoDecodeError: moov atom not found"})
    reader = FeatureReader(tmp_path)
    assert reader.spec == make_spec(dtype)
    assert reader.ids == IDS and len(reader) == len(IDS)
    assert "v03" in reader and "v99" not in reader and "nope" not in reader
    assert reader.failed == {"v99": "VideoDecodeError: moov atom not found"}
    assert reader.shards == (0, 1, 2)
    for vid in IDS:
        got = reader.get(vid)
        assert got.dtype == np.float32 and got.shape == SHAPE
        if dtype == "float16":
            np.testing.assert_array_equal(got, feats[vid].astype(np.float16).astype(np.float32))
        else:
            bound = np.abs(feats[vid]).max(axis=-1, keepdims=True) / 254 * (1 + 1e-5)
            assert (np.abs(got - feats[vid]) <= bound).all()
    # random access across shards, in the asked order, with repeats
    order = ["v06", "v00", "v04", "v00", "v02"]
    many = reader.get_many(order)
    assert many.shape == (5, *SHAPE)
    for row, vid in zip(many, order):
        np.testing.assert_array_equal(row, reader.get(vid))
    assert reader.verify() == 3 * (2 if dtype == "int8" else 1)


def test_local_shards_are_memory_mapped(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, make_spec(), shard_size=4)
    run_extraction(writer, video_features(IDS))
    reader = FeatureReader(tmp_path, cache_size=1)
    reader.get("v05")
    entry = reader._cache.get(1)
    assert entry is not None and isinstance(entry.data, np.memmap) and entry.nbytes == 0
    reader.get("v00")  # opens shard 0; the cache holds one shard
    assert list(reader._cache.entries) == [0]


def test_reader_pickles_for_worker_processes(tmp_path: Path) -> None:
    run_extraction(ShardWriter(tmp_path, make_spec(), shard_size=4), video_features(IDS))
    reader = FeatureReader(tmp_path)
    expected = reader.get_many(IDS)  # shards are open now; they are not sent along
    clone = pickle.loads(pickle.dumps(reader))
    assert len(clone._cache.entries) == 0
    np.testing.assert_array_equal(clone.get_many(IDS), expected)


def test_unknown_and_failed_ids_raise_keyerror(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, make_spec(), shard_size=4)
    run_extraction(writer, video_features(IDS[:2]), failed={"bad": "decode error"})
    reader = FeatureReader(tmp_path)
    with pytest.raises(KeyError, match="'missing'"):
        reader.get("missing")
    with pytest.raises(KeyError, match="'missing'"):
        reader.get_many(["v00", "missing"])
    with pytest.raises(KeyError, match=r"'bad'.*decode error"):
        reader.get("bad")


def test_shard_of_only_failed_videos(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, make_spec("int8"), shard_size=2)
    run_extraction(writer, video_features(["a", "b"]), failed={"c": "x", "d": "y"})
    reader = FeatureReader(tmp_path)
    assert reader.ids == ["a", "b"] and reader.failed == {"c": "x", "d": "y"}
    assert reader.manifest(1).shape == (0, *SHAPE)
    assert reader.verify() == 4


def test_not_a_feature_store(tmp_path: Path) -> None:
    with pytest.raises(ShardStoreError, match=rf"{tmp_path}.*spec\.json"):
        FeatureReader(tmp_path)


def test_spec_mismatch_refused(tmp_path: Path) -> None:
    ShardWriter(tmp_path, make_spec())
    ShardWriter(tmp_path, make_spec())  # same spec: fine
    with pytest.raises(ShardStoreError, match=r"tokens: 3 != 5"):
        ShardWriter(tmp_path, make_spec(tokens=5))
    with pytest.raises(ShardStoreError, match="dtype"):
        ShardWriter(tmp_path, make_spec("int8"))
    assert FeatureSpec.from_dict(json.loads((tmp_path / SPEC_KEY).read_text())["spec"]) == make_spec()


def test_write_shard_validation(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, make_spec(), shard_size=2)
    x = np.zeros((2, *SHAPE), np.float32)
    with pytest.raises(ValueError, match="shape"):
        writer.write_shard(0, ["a", "b"], np.zeros((2, 2, 3, 7), np.float32))
    with pytest.raises(ValueError, match="shard_size=2"):
        writer.write_shard(0, ["a", "b"], x, {"c": "failed"})
    bad = x.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\['b'\]"):
        writer.write_shard(0, ["a", "b"], bad)
    big = x.copy()
    big[0, 1, 1, 1] = 1e6
    with pytest.raises(ValueError, match=r"\['a'\].*float16 range"):
        writer.write_shard(0, ["a", "b"], big)
    with pytest.raises(ValueError, match="shard_index"):
        writer.write_shard(-1, ["a", "b"], x)
    assert writer.complete_shards() == []  # nothing was written by the refused calls
    # int8 takes values beyond the float16 range
    ShardWriter(tmp_path / "q", make_spec("int8"), shard_size=2).write_shard(0, ["a", "b"], big)
    np.testing.assert_allclose(FeatureReader(tmp_path / "q").get("a"), big[0], atol=1e6 / 254)


def test_duplicate_ids(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, make_spec(), shard_size=3)
    x = np.zeros((2, *SHAPE), np.float32)
    with pytest.raises(ValueError, match="duplicate"):
        writer.plan(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"duplicate.*'a'"):
        writer.write_shard(0, ["a", "a"], x)
    with pytest.raises(ValueError, match=r"duplicate.*'b'"):
        writer.write_shard(0, ["a", "b"], x, {"b": "also failed"})
    writer.write_shard(0, ["a", "b"], x)
    with pytest.raises(ShardStoreError, match=r"\('b', 0\)"):
        writer.write_shard(1, ["b", "c"], x)
    # another writer session (another process) does not know; finalize and the reader catch it
    ShardWriter(tmp_path, make_spec(), shard_size=3).write_shard(1, ["c"], x[:1], {"b": "oops"})
    with pytest.raises(ShardStoreError, match=r"'b'.*shard 0.*shard 1"):
        writer.finalize()
    with pytest.raises(ShardStoreError, match="'b'"):
        FeatureReader(tmp_path)


# ------------------------------------------------------------------------------ crash safety, resume


def test_resume_skips_complete_shards(tmp_path: Path) -> None:
    feats = video_features(IDS)
    calls: list[int] = []
    run_extraction(ShardWriter(tmp_path, make_spec(), shard_size=3), feats, on_extract=calls.append)
    assert calls == [0, 1, 2]
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    calls.clear()
    run_extraction(ShardWriter(tmp_path, make_spec(), shard_size=3), feats, on_extract=calls.append)
    assert calls == []
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == stamps
    # a plan that changed (a new video lands in the last shard) redoes only that shard
    feats["v07"] = video_features(["v07"], seed=3)["v07"]
    run_extraction(ShardWriter(tmp_path, make_spec(), shard_size=3), feats, on_extract=calls.append)
    assert calls == [2]
    np.testing.assert_array_equal(FeatureReader(tmp_path).get("v07"),
                                  feats["v07"].astype(np.float16).astype(np.float32))


def test_killed_write_without_manifest_is_ignored_and_redone(tmp_path: Path) -> None:
    feats = video_features(IDS)
    writer = ShardWriter(tmp_path, make_spec("int8"), shard_size=4)
    chunks = writer.plan(IDS)
    writer.write_shard(0, chunks[0], np.stack([feats[v] for v in chunks[0]]))
    # the run was killed while writing shard 1: its data file is there, its manifest is not
    (tmp_path / data_key(1)).write_bytes(b"\x93NUMPY half a shard")
    (tmp_path / "shards" / f".{Path(manifest_key(1)).name}.x1y2.tmp").write_bytes(b'{"ids": [')
    assert writer.is_complete(0) and not writer.is_complete(1)
    reader = FeatureReader(tmp_path)  # no index.json yet: built from the manifests
    assert reader.ids == chunks[0] and reader.shards == (0,)
    assert "v05" not in reader
    # the re-run redoes shard 1 only
    calls: list[int] = []
    run_extraction(ShardWriter(tmp_path, make_spec("int8"), shard_size=4), feats, on_extract=calls.append)
    assert calls == [1]
    reader = FeatureReader(tmp_path)
    assert reader.ids == IDS
    assert np.abs(reader.get("v05") - feats["v05"]).max() <= np.abs(feats["v05"]).max() / 254 * 1.0001
    assert reader.verify() == 4


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_scale"])
def test_damaged_shard_is_never_read_and_is_redone(tmp_path: Path, damage: str) -> None:
    feats = video_features(IDS)
    run_extraction(ShardWriter(tmp_path, make_spec("int8"), shard_size=4), feats)
    path = tmp_path / data_key(1)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))
    else:
        (tmp_path / scale_key(1)).unlink()
    writer = ShardWriter(tmp_path, make_spec("int8"), shard_size=4)
    assert writer.is_complete(0) and not writer.is_complete(1)
    assert writer.is_complete(1, verify="size") == (damage == "flip")  # same size: only the hash sees it
    with pytest.raises(ShardStoreError, match=r"shard-00001"):
        FeatureReader(tmp_path).verify()
    reader = FeatureReader(tmp_path, verify_on_open=True)
    assert reader.get("v00").shape == SHAPE  # an intact shard still reads
    with pytest.raises(ShardStoreError, match=r"shard-00001"):
        reader.get("v05")
    if damage != "flip":
        with pytest.raises(ShardStoreError, match=r"shard-00001"):
            FeatureReader(tmp_path).get("v05")  # sizes are always checked
        with pytest.raises(ShardStoreError, match="damaged"):
            writer.finalize()
    calls: list[int] = []
    run_extraction(writer, feats, on_extract=calls.append)
    assert calls == [1]
    assert FeatureReader(tmp_path).verify() == 4


def test_stale_or_missing_index_is_rebuilt(tmp_path: Path) -> None:
    feats = video_features(IDS)
    writer = ShardWriter(tmp_path, make_spec(), shard_size=3)
    run_extraction(writer, feats)
    index = json.loads((tmp_path / INDEX_KEY).read_text())
    assert index["locations"]["v04"] == [1, 1] and index["shards"] == [0, 1, 2]
    # a shard added after finalize: writing drops index.json, readers build the index from manifests
    extra = video_features(["w0"], seed=9)
    writer.write_shard(3, ["w0"], extra["w0"][None])
    assert not (tmp_path / INDEX_KEY).exists()
    reader = FeatureReader(tmp_path)
    assert "w0" in reader and reader.shards == (0, 1, 2, 3)
    # an index.json listing other shards than present (e.g. copied from elsewhere) is not trusted
    (tmp_path / INDEX_KEY).write_text(json.dumps(index))
    assert "w0" in FeatureReader(tmp_path)
    # a shard rewritten with other ids while a reader is open: detected when the shard is opened
    writer.finalize()
    reader = FeatureReader(tmp_path)
    new = video_features(["x0", "x1"], seed=5)
    writer.write_shard(1, ["x1", "x0"], np.stack([new["x1"], new["x0"]]))
    with pytest.raises(KeyError, match="'v04'"):
        reader.get("v04")  # the reader saw the change, rebuilt its index: v04 is gone
    np.testing.assert_array_equal(reader.get("x0"), new["x0"].astype(np.float16).astype(np.float32))
    # a malformed index.json is rebuilt too
    (tmp_path / INDEX_KEY).write_text("{not json")
    assert "x1" in FeatureReader(tmp_path)


# -------------------------------------------------------------------------------------------- info


def test_info_paper_setting() -> None:
    fp16 = storage_summary(FeatureSpec.paper("float16"), 19_738)
    assert fp16["bytes_per_video"] == 6 * 64 * 4096 * 2 == 3_145_728
    assert round(fp16["mb_per_video"], 2) == 3.15
    assert fp16["total_bytes"] == 62_090_379_264 and round(fp16["total_gb"], 2) == 62.09
    int8 = storage_summary(FeatureSpec.paper("int8"), 19_738)
    assert int8["data_bytes_per_video"] == 3_145_728 // 2
    assert int8["scale_bytes_per_video"] == 6 * 64 * 4
    assert int8["bytes_per_video"] == 1_574_400
    assert abs(int8["ratio_to_float16"] - 0.5005) < 1e-4
    text = format_info(int8)
    assert "1,574,400 B" in text and "1,536 B float32 scales" in text and "31.08 GB" in text
    assert "3,145,728 B = 3.15 MB" in format_info(fp16)
    with pytest.raises(ValueError, match="num_videos"):
        storage_summary(FeatureSpec.paper(), -1)


def test_info_from_store_counts_actual_bytes(tmp_path: Path) -> None:
    run_extraction(ShardWriter(tmp_path, make_spec("int8"), shard_size=4), video_features(IDS), failed={"z": "x"})
    info = info_from_store(FeatureReader(tmp_path))
    assert info["num_videos"] == 7 and info["num_shards"] == 2 and info["num_failed"] == 1
    npy = sum(p.stat().st_size for p in (tmp_path / "shards").glob("*.npy"))
    assert info["stored_shard_bytes"] == npy
    assert info["store_total_bytes"] == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert info["bytes_per_video"] == 2 * 3 * 8 + 2 * 3 * 4 and info["has_index"]
    assert str(tmp_path) in format_info(info)


# ------------------------------------------------------------------------------------------ verify


def test_verify_finds_an_id_in_two_shards_a_stale_index_and_uncovered_catalogue_videos(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from linkedout.cli import main
    from linkedout.shards.verify import verify_store

    run_extraction(ShardWriter(tmp_path, make_spec(), shard_size=3), video_features(IDS), failed={"z": "unreadable"})
    assert verify_store(tmp_path, catalog=[*IDS, "z"]).ok  # a failed video counts as covered
    # a second writer session (another process) writes "v01" again, in a new shard
    x = video_features(["v01"], seed=5)["v01"][None]
    ShardWriter(tmp_path, make_spec(), shard_size=3).write_shard(3, ["v01"], x)
    report = verify_store(tmp_path, catalog=[*IDS, "z", "new"])
    assert not report.ok and report.damaged_shards == [3]
    assert "video id 'v01' appears in shard 0 and in shard 3" in report.problems
    assert any("1 catalogue videos are in no shard (first: ['new'])" in p for p in report.problems)
    (tmp_path / manifest_key(3)).unlink()  # what `verify --repair` does; the data file is left as an orphan
    ShardWriter(tmp_path, make_spec(), shard_size=3).finalize()  # index.json again
    after_repair = verify_store(tmp_path)
    assert after_repair.ok and any("data files of shards [3] have no manifest" in w for w in after_repair.warnings)
    index = json.loads((tmp_path / INDEX_KEY).read_text())
    # an index.json that places a video in another row than its shard's manifest says
    text = (tmp_path / INDEX_KEY).read_text()
    (tmp_path / INDEX_KEY).write_text(text.replace('"v00"', '"tmp"').replace('"v01"', '"v00"').replace('"tmp"', '"v01"'))
    assert json.loads((tmp_path / INDEX_KEY).read_text()) != index
    assert any("index.json disagrees with the shard manifests about 2 videos" in p for p in verify_store(tmp_path).problems)
    assert main(["features", "verify", str(tmp_path)]) == 1
    assert "index.json disagrees" in capsys.readouterr().out
