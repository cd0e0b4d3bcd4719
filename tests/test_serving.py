"""The transformer's logic without its servers: request checks, A/B routing, the request log, the engine.

The engine runs the exported ONNX rankers in-process with the local Triton model's onnxruntime
runner (the same files Triton serves), so its answers are checked against the PyTorch models. The servers themselves (Triton, the KServe
transformer, Feast) are exercised in tests/test_serving_stack.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shutil
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ServingRepo

from linkedout.export import Catalog
from linkedout.export.catalog import CatalogError, append_videos
from linkedout.export.graphs import full_scores
from linkedout.export.model_config import CONFIG_NAME, config_to_dict, read_config
from linkedout.serving.catalog import ServedCatalogs
from linkedout.serving.engine import INLINE_ROWS, RecommendationEngine, ServingUnavailable, check_routable
from linkedout.serving.local.stack import StackSettings
from linkedout.serving.local.triton_model import OnnxRunner
from linkedout.serving.request import RawTensor, RecRequest, RequestError, parse_request
from linkedout.serving.request_log import RequestLog, read_request_log
from linkedout.serving.routing import BUCKETS, Router, RoutingConfig, RoutingError, bucket_of, load_routing
from linkedout.shards.storage import open_storage
from linkedout.utils import rotated_files


def i64(name: str, values: list[int] | np.ndarray, shape: tuple[int, ...] | None = None) -> RawTensor:
    arr = np.asarray(values, dtype=np.int64)
    return RawTensor(name, "INT64", shape if shape is not None else arr.shape, raw=arr.tobytes())


# ------------------------------------------------------------------------------------------ requests


def test_a_valid_request_parses() -> None:
    req = parse_request({"user_id": i64("user_id", [3, 4]), "k": i64("k", [5]),
                         "history": i64("history", [[-1, 7, 8], [-1, -1, 9]]),
                         "explain": RawTensor("explain", "BOOL", (1,), raw=b"\x01")}, max_batch_size=8, max_k=20)
    assert req == RecRequest(["3", "4"], 5, [[7, 8], [9]], True)
    strings = RawTensor("user_id", "BYTES", (2,), raw=struct.pack("<I", 2) + b"u1" + struct.pack("<I", 3) + b"abc")
    assert parse_request({"user_id": strings}, max_batch_size=8, max_k=20).user_ids == ["u1", "abc"]
    rest = RawTensor("user_id", "INT64", (2,), values=[1, 2])  # REST JSON carries values, not raw bytes
    assert parse_request({"user_id": rest}, max_batch_size=8, max_k=20).user_ids == ["1", "2"]


@pytest.mark.parametrize(("inputs", "field", "words"), [
    ({}, "user_id", "missing"),
    ({"user_id": RawTensor("user_id", "FP32", (1,), raw=b"\0" * 4)}, "user_id", "BYTES, INT64 or INT32"),
    ({"user_id": i64("user_id", [[1, 2]])}, "user_id", "shape [B]"),
    ({"user_id": i64("user_id", list(range(9)))}, "user_id", "maximum batch size 8"),
    ({"user_id": RawTensor("user_id", "INT64", (3,), raw=b"\0" * 16)}, "user_id", "16 bytes of data"),
    ({"user_id": RawTensor("user_id", "BYTES", (1,), raw=struct.pack("<I", 9) + b"abc")}, "user_id", "claims 9 bytes"),
    ({"user_id": i64("user_id", [1]), "k": i64("k", [0])}, "k", ">= 1"),
    ({"user_id": i64("user_id", [1]), "k": i64("k", [21])}, "k", "above what this server returns (20"),
    ({"user_id": i64("user_id", [1]), "k": i64("k", [1, 2])}, "k", "one value"),
    ({"user_id": i64("user_id", [1, 2]), "history": i64("history", [[1, 2]])}, "history", "[B=2, T]"),
    ({"user_id": i64("user_id", [1]), "history": i64("history", [[-5, 2]])}, "history", ">= 0"),
    ({"user_id": i64("user_id", [1]), "colour": i64("colour", [1])}, "colour", "unknown input"),
    # REST JSON data: nested lists must follow the shape, values must be of the datatype and in its range
    ({"user_id": RawTensor("user_id", "INT64", (2,), values=[[1], [2]])}, "user_id", "nested deeper than shape [2]"),
    ({"user_id": RawTensor("user_id", "INT64", (2,), values=[1, 2, 3])}, "user_id", "3 values for shape [2]"),
    ({"user_id": i64("user_id", [1, 2]), "history": RawTensor("history", "INT64", (2, 2), values=[[1, 2], [3]])},
     "history", "nested data does not follow shape [2, 2] (dimension 1)"),
    ({"user_id": i64("user_id", [1]), "k": RawTensor("k", "INT64", (1,), values=[2**70])}, "k", "out of the INT64 range"),
    ({"user_id": i64("user_id", [1]), "k": RawTensor("k", "INT32", (1,), values=[2**40])}, "k", "out of the INT32 range"),
    ({"user_id": i64("user_id", [1]), "k": RawTensor("k", "INT64", (1,), values=[1.5])}, "k", "not INT64: got floats"),
    ({"user_id": i64("user_id", [1]), "k": RawTensor("k", "INT64", (1,), values=[True])}, "k", "got booleans"),
    ({"user_id": i64("user_id", [1]), "explain": RawTensor("explain", "BOOL", (1,), values=["no"])}, "explain",
     "not BOOL: got strings"),
    ({"user_id": RawTensor("user_id", "BYTES", (1,), values=[7])}, "user_id", "BYTES values must be strings"),
    ({"user_id": i64("user_id", [1]), "k": i64("k", [5], shape=(2**32, 2**32))}, "k", "must hold one value"),
])
def test_bad_requests_name_the_input(inputs: dict[str, RawTensor], field: str, words: str) -> None:
    with pytest.raises(RequestError, match=f"input '{field}'") as err:
        parse_request(inputs, max_batch_size=8, max_k=20)
    assert words in str(err.value)


# ------------------------------------------------------------------------------------------ routing


def test_routing_is_sticky_and_splits_by_weight(tmp_path: Path) -> None:
    cfg = RoutingConfig.from_dict({"experiment": "e", "salt": "s1", "variants": [
        {"name": "a", "model": "linkedout", "weight": 70}, {"name": "b", "model": "sasrec_id", "weight": 30}]})
    users = [str(u) for u in range(20_000)]
    first = [cfg.assign(u).name for u in users]
    assert first == [cfg.assign(u).name for u in users]  # sticky
    share = first.count("a") / len(users)
    assert 0.68 < share < 0.72
    # the rule is a pure function of salt and id: a bucket below 7000 is variant a
    assert all((bucket_of("s1", u) < 0.7 * BUCKETS) == (n == "a") for u, n in zip(users[:500], first))
    other = RoutingConfig.from_dict({"experiment": "e", "salt": "s2", "variants": [
        {"name": "a", "model": "linkedout", "weight": 70}, {"name": "b", "model": "sasrec_id", "weight": 30}]})
    assert [other.assign(u).name for u in users] != first  # a new salt reshuffles


@pytest.mark.parametrize(("doc", "words"), [
    ({"salt": "x", "variants": []}, "at least one variant"),
    ({"variants": [{"name": "a", "model": "m"}]}, "routing.salt"),
    ({"salt": "x", "variants": [{"name": "a", "model": "m", "weight": -1}]}, "variants[0].weight"),
    ({"salt": "x", "variants": [{"name": "a", "model": "m", "version": 0}]}, "variants[0].version"),
    ({"salt": "x", "variants": [{"name": "a", "model": "m", "wieght": 5}]}, "unknown field(s) ['wieght']"),
    ({"salt": "x", "variants": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}, "duplicate"),
])
def test_bad_routing_configs_name_the_field(doc: dict, words: str) -> None:
    with pytest.raises(RoutingError, match=re.escape(words)):
        RoutingConfig.from_dict(doc)


def test_router_rereads_its_file_and_keeps_the_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("experiment: e\nsalt: s\nvariants:\n  - {name: a, model: linkedout}\n")
    router = Router(path, "linkedout", check_interval=0.0)
    assert router.current().assign("1").name == "a"
    time.sleep(0.01)
    path.write_text("experiment: e2\nsalt: s\nvariants:\n  - {name: b, model: sasrec_id, weight: 1}\n")
    assert router.current().assign("1").name == "b"
    path.write_text("experiment: [unclosed\n")
    assert router.current().assign("1").name == "b"  # a broken edit does not take serving down
    with pytest.raises(RoutingError, match="does not exist"):
        Router(tmp_path / "missing.yaml", "linkedout")


def test_a_routing_change_that_cannot_serve_is_refused_and_the_last_good_one_keeps_serving(
        serving_repo: ServingRepo, tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("experiment: e\nsalt: s\nvariants:\n  - {name: a, model: linkedout}\n")
    catalogs = ServedCatalogs(str(serving_repo.root))
    router = Router(path, "linkedout", check_interval=0.0, check=functools.partial(check_routable, catalogs))
    for bad in ("{name: b, model: nosuchmodel}", "{name: b, model: sasrec_id, version: 7}"):
        time.sleep(0.01)
        path.write_text(f"experiment: e2\nsalt: s\nvariants:\n  - {bad}\n")
        assert router.current().assign("1").name == "a"
    with pytest.raises(RoutingError, match=r"variant 'b': sasrec_id_ranker has no version 7 \(it has \[1\]\)"):
        check_routable(catalogs, load_routing(path))
    path.write_text("experiment: e3\nsalt: s\nvariants:\n  - {name: c, model: sasrec_id, version: 1}\n")
    assert router.current().assign("1").name == "c"  # a servable change is taken


def test_a_pinned_version_missing_from_the_repository_is_unavailable_not_internal(serving_repo: ServingRepo,
                                                                                  tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"  # read at start (not checked): the version may be on its way
    routing.write_text("experiment: e\nsalt: s\nvariants:\n  - {name: pinned, model: linkedout, version: 9}\n")
    engine = make_engine(serving_repo, routing=routing)
    with pytest.raises(ServingUnavailable, match="variant 'pinned': the catalogue of linkedout_ranker version 9 "
                                                 "cannot be read") as err:
        asyncio.run(engine.recommend(RecRequest(["1"], 5, [[1]], False)))
    assert err.value.dependency == "predictor"
    engine.close()


# ------------------------------------------------------------------------------------------ request log


def test_request_log_writes_jsonl_off_the_request_path(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "requests.jsonl", flush_interval=0.05)
    for i in range(500):
        log.write({"request_id": f"r{i}", "user_id": str(i)})
    log.close()
    rows = list(read_request_log(tmp_path / "requests.jsonl"))
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(500)]
    with open(tmp_path / "requests.jsonl", "a") as f:
        f.write('{"request_id": "torn')  # a writer killed mid-line
    assert len(list(read_request_log(tmp_path / "requests.jsonl"))) == 500


def _written(log: RequestLog, n: int) -> None:
    deadline = time.monotonic() + 10
    while log.written < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.written == n


def test_request_log_rotates_by_size_keeping_its_backups_in_order(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    line = len(json.dumps({"request_id": "r0000", "user_id": "0"}, separators=(",", ":"))) + 1
    log = RequestLog(path, flush_interval=0.05, max_bytes=40 * line, backups=2)  # full after two batches of 20
    for batch in range(12):
        for i in range(20):
            log.write({"request_id": f"r{batch * 20 + i:04d}", "user_id": str(i % 10)})
        _written(log, (batch + 1) * 20)  # one batch written (and checked for size) at a time
    log.close()
    assert log.rotations == 6
    files = rotated_files(path)
    assert files == [tmp_path / "requests.jsonl.2", tmp_path / "requests.jsonl.1", path]
    assert not (tmp_path / "requests.jsonl.3").exists()  # the oldest beyond the backups is gone
    assert [f.stat().st_size for f in files] == [40 * line, 40 * line, 0]
    ids = [int(r["request_id"][1:]) for f in files for r in read_request_log(f)]
    assert ids == list(range(160, 240))  # the newest 80, oldest first, none lost between the files


def test_request_log_never_rotates_what_is_not_a_regular_file(tmp_path: Path) -> None:
    log = RequestLog("/dev/null", flush_interval=0.05, max_bytes=1)  # as /dev/stdout in a pod
    for i in range(50):
        log.write({"request_id": f"r{i}"})
    _written(log, 50)
    log.close()
    assert log.rotations == 0 and not Path("/dev/null.1").exists()
    with pytest.raises(ValueError, match="backups must be >= 1"):
        RequestLog(tmp_path / "x.jsonl", max_bytes=10, backups=0)
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        RequestLog(tmp_path / "x.jsonl", max_bytes=-1)


# ------------------------------------------------------------------------------------------ the engine


class OnnxRanker:
    """The engine's ranker in-process: each ``NAME_ranker`` version run by ``OnnxRunner`` (no server hop)."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.runners: dict[tuple[str, int], OnnxRunner] = {}

    async def __call__(self, model: str, version: int, history: np.ndarray, history_emb: np.ndarray) -> np.ndarray:
        if (model, version) not in self.runners:
            model_dir = self.repository / f"{model}_ranker"
            config = config_to_dict(read_config(model_dir / CONFIG_NAME))
            self.runners[model, version] = OnnxRunner(str(model_dir / str(version) / "model.onnx"), config, threads=1)
        return self.runners[model, version].run({"history": history, "history_emb": history_emb})["user"]


class StoreHistories:
    """A history source over a dict: stands in for the Feast reader (tested against Feast elsewhere)."""

    def __init__(self, histories: dict[str, list[int]], delay: float = 0.0, fail: Exception | None = None) -> None:
        self.histories, self.delay, self.fail = histories, delay, fail

    def get(self, user_ids: list[str]) -> list[list[int]]:
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [list(self.histories.get(u, [])) for u in user_ids]


def make_engine(repo: ServingRepo, *, histories: StoreHistories | None = None, routing: Path | None = None,
                log: RequestLog | None = None, feast_timeout: float = 0.5) -> RecommendationEngine:
    engine = RecommendationEngine(router=Router(routing, "linkedout"), catalogs=ServedCatalogs(str(repo.root)),
                                  ranker=OnnxRanker(repo.root), histories=histories, request_log=log,
                                  feast_timeout=feast_timeout, max_k=20)
    engine.serving = {"linkedout": 1, "sasrec_id": 1}
    return engine


def torch_top_k(repo: ServingRepo, name: str, history_ids: list[int], k: int) -> list[int]:
    catalog = Catalog.load(repo.root / f"{name}_ranker" / "1")
    rows = catalog.rows_of(history_ids)[-10:]
    hist = np.zeros((1, 10), dtype=np.int64)
    hist[0, 10 - len(rows):] = rows
    with torch.no_grad():
        full, _ = full_scores(repo.models[name].eval(), torch.from_numpy(catalog.embeddings), torch.from_numpy(hist))
    top = torch.topk(full, 20, dim=1).indices
    return catalog.ids_of(top[0].numpy())[:k].tolist()


@pytest.mark.parametrize(("kind", "rows", "on_the_loop"), [("exact", 20_000, True), ("exact", INLINE_ROWS + 1, False),
                                                       ("ivf_sq8", 1_000, False)])
def test_small_exact_indexes_are_searched_on_the_event_loop_and_the_others_off_it(
        serving_repo: ServingRepo, kind: str, rows: int, on_the_loop: bool) -> None:
    engine = make_engine(serving_repo)
    view = SimpleNamespace(index=SimpleNamespace(kind=kind, num_rows=rows))

    async def where() -> bool:
        loop_thread = threading.get_ident()
        return await engine._on_index(view, lambda: threading.get_ident() == loop_thread)  # type: ignore[arg-type]

    try:
        assert asyncio.run(where()) is on_the_loop
    finally:
        engine.close()


def test_engine_answers_the_pytorch_top_k_without_watched_videos(serving_repo: ServingRepo) -> None:
    split = serving_repo.toy.split
    ids = [int(i) for i in split.item_ids[1:]]
    users = {str(u): [int(split.item_ids[r]) for r in h[h > 0]] for u, h in
             zip(split.test.user_ids[:12], split.test.histories[:12])}
    engine = make_engine(serving_repo, histories=StoreHistories(users))
    res = asyncio.run(engine.recommend(RecRequest(list(users), 10, None, False)))
    for i, hist in enumerate(users.values()):
        assert res.items[i].tolist() == torch_top_k(serving_repo, "linkedout", hist, 10)
        assert not set(hist) & set(res.items[i].tolist())
        assert set(res.items[i].tolist()) <= set(ids)
    assert res.variants == ["linkedout"] * 12 and set(res.model_versions) == {"linkedout_ranker:1"}
    assert not res.cold_start.any()
    assert (np.diff(res.scores, axis=1) <= 1e-6).all()  # best first
    engine.close()


def test_users_without_history_get_the_cold_start_answer_marked(serving_repo: ServingRepo) -> None:
    engine = make_engine(serving_repo, histories=StoreHistories({}))
    res = asyncio.run(engine.recommend(RecRequest(["nobody", "else"], 5, None, False)))
    assert res.cold_start.all()
    catalog = Catalog.load(serving_repo.root / "linkedout_ranker" / "1")
    most_popular = int(catalog.ids[int(np.argmax(catalog.popularity))])
    assert res.items[0, 0] == most_popular  # the toy catalogue's videos share one publish era
    assert res.items[0].tolist() == res.items[1].tolist()
    engine.close()


def test_explicit_histories_report_unknown_videos_and_explain_layers(serving_repo: ServingRepo) -> None:
    catalog = Catalog.load(serving_repo.root / "linkedout_ranker" / "1")
    known = [int(v) for v in catalog.ids[:3]]
    engine = make_engine(serving_repo)
    res = asyncio.run(engine.recommend(RecRequest(["7"], 5, [[*known, 99_999_999]], True)))
    assert res.unknown_items == [[99_999_999]]
    assert res.items[0].tolist() == torch_top_k(serving_repo, "linkedout", known, 5)
    assert res.layers == ["L0", "L4", "L8", "L12", "L16", "L20"]
    rows = catalog.rows_of(res.items[0].tolist())
    assert res.contributions is not None and res.gate is not None
    assert np.allclose(res.contributions[0], catalog.contributions[rows - 1])
    assert np.allclose(res.gate[0], catalog.gate[rows - 1])
    assert np.allclose(res.contributions[0].sum(-1), 1.0, atol=1e-5)
    engine.close()


def test_an_experiment_splits_users_between_two_models_and_logs_them(serving_repo: ServingRepo, tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text("experiment: ab1\nsalt: s\nvariants:\n  - {name: control, model: linkedout, weight: 50}\n"
                       "  - {name: treatment, model: sasrec_id, weight: 50}\n")
    catalog = Catalog.load(serving_repo.root / "linkedout_ranker" / "1")
    hist = [int(v) for v in catalog.ids[:4]]
    users = [str(u) for u in range(40)]
    log = RequestLog(tmp_path / "requests.jsonl")
    engine = make_engine(serving_repo, histories=StoreHistories(dict.fromkeys(users, hist)), routing=routing, log=log)
    res = asyncio.run(engine.recommend(RecRequest(users, 5, None, False), request_id="req-1"))
    cfg = RoutingConfig.from_dict({"salt": "s", "variants": [{"name": "control", "model": "linkedout", "weight": 50},
                                                              {"name": "treatment", "model": "sasrec_id", "weight": 50}]})
    assert res.variants == [cfg.assign(u).name for u in users]
    assert {"control", "treatment"} == set(res.variants)
    for i, v in enumerate(res.variants):
        model = "linkedout" if v == "control" else "sasrec_id"
        assert res.model_versions[i] == f"{model}_ranker:1"
        assert res.items[i].tolist() == torch_top_k(serving_repo, model, hist, 5)
    engine.close()
    rows = list(read_request_log(tmp_path / "requests.jsonl"))
    assert [r["user_id"] for r in rows] == users
    assert {r["request_id"] for r in rows} == {"req-1"} and {r["experiment"] for r in rows} == {"ab1"}
    assert rows[0]["items"] == res.items[0].tolist() and len(rows[0]["scores"]) == 5
    assert all(r["latency_ms"] > 0 and r["model"] in ("linkedout", "sasrec_id") for r in rows)


def test_a_store_outage_is_a_clear_error_within_its_timeout(serving_repo: ServingRepo) -> None:
    slow = make_engine(serving_repo, histories=StoreHistories({}, delay=2.0), feast_timeout=0.2)
    t0 = time.perf_counter()
    with pytest.raises(ServingUnavailable, match="did not answer within 200 ms") as err:
        asyncio.run(slow.recommend(RecRequest(["1"], 5, None, False)))
    assert time.perf_counter() - t0 < 1.0 and err.value.dependency == "feast"
    slow.close()
    down = make_engine(serving_repo, histories=StoreHistories({}, fail=ConnectionError("127.0.0.1:6379 refused")))
    with pytest.raises(ServingUnavailable, match=r"127\.0\.0\.1:6379 refused"):
        asyncio.run(down.recommend(RecRequest(["1"], 5, None, False)))
    down.histories = StoreHistories({"1": [int(Catalog.load(serving_repo.root / "linkedout_ranker" / "1").ids[0])]})
    assert not asyncio.run(down.recommend(RecRequest(["1"], 5, None, False))).cold_start[0]  # back: served again
    down.close()


def test_a_hung_store_never_delays_a_request_that_does_not_read_it(serving_repo: ServingRepo) -> None:
    """A store without an asyncio client, SQLite too, is read on a worker with the deadline: the event loop
    never waits for it."""
    engine = make_engine(serving_repo, histories=StoreHistories({}, delay=1.5), feast_timeout=0.2)
    hist = [[int(Catalog.load(serving_repo.root / "linkedout_ranker" / "1").ids[0])]]

    async def both() -> tuple[float, float, BaseException | None]:
        t0 = time.perf_counter()
        feast = asyncio.ensure_future(engine.recommend(RecRequest(["1"], 5, None, False)))
        await asyncio.sleep(0.01)
        await engine.recommend(RecRequest(["2"], 5, hist, False))  # an explicit history: no store read
        explicit = time.perf_counter() - t0
        error = (await asyncio.gather(feast, return_exceptions=True))[0]
        return explicit, time.perf_counter() - t0, error if isinstance(error, BaseException) else None

    explicit, feast, error = asyncio.run(both())
    assert explicit < 0.5 and feast < 0.6
    assert isinstance(error, ServingUnavailable) and "did not answer within 200 ms" in str(error)
    engine.close()


class AsyncStoreHistories(StoreHistories):
    """A store with an asyncio client (as Feast's Redis store through ``HistoryReader``): read on the loop."""

    reads_async = True

    def get(self, user_ids: list[str]) -> list[list[int]]:
        raise AssertionError("a store with an asyncio client is not read on a thread")

    async def get_async(self, user_ids: list[str]) -> list[list[int]]:
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [list(self.histories.get(u, [])) for u in user_ids]


def test_a_store_with_an_asyncio_client_is_read_on_the_loop_with_the_deadline(serving_repo: ServingRepo) -> None:
    hist = [int(i) for i in Catalog.load(serving_repo.root / "linkedout_ranker" / "1").ids[:3]]
    engine = make_engine(serving_repo, histories=AsyncStoreHistories({"1": hist}))
    res = asyncio.run(engine.recommend(RecRequest(["1", "nobody"], 5, None, False)))
    assert res.cold_start.tolist() == [False, True]
    assert res.items[0].tolist() == torch_top_k(serving_repo, "linkedout", hist, 5)
    assert not engine._pool._threads  # no worker thread was started for it
    engine.close()
    slow = make_engine(serving_repo, histories=AsyncStoreHistories({}, delay=2.0), feast_timeout=0.2)
    t0 = time.perf_counter()
    with pytest.raises(ServingUnavailable, match="did not answer within 200 ms"):
        asyncio.run(slow.recommend(RecRequest(["1"], 5, None, False)))
    assert time.perf_counter() - t0 < 1.0
    slow.close()
    down = make_engine(serving_repo, histories=AsyncStoreHistories({}, fail=ConnectionError("127.0.0.1:6379 refused")))
    with pytest.raises(ServingUnavailable, match=r"127\.0\.0\.1:6379 refused"):
        asyncio.run(down.recommend(RecRequest(["1"], 5, None, False)))
    down.close()


def test_no_ready_version_is_unavailable_not_a_crash(serving_repo: ServingRepo) -> None:
    engine = make_engine(serving_repo)
    engine.serving = {}
    with pytest.raises(ServingUnavailable, match="no version of model 'linkedout' is ready"):
        asyncio.run(engine.recommend(RecRequest(["1"], 5, [[1]], False)))
    engine.close()


def test_served_versions_follow_what_the_predictor_reports_ready(serving_repo: ServingRepo) -> None:
    engine = make_engine(serving_repo)
    engine.serving = {}
    ready = {("linkedout", 1)}

    async def is_ready(model: str, version: int) -> bool:
        return (model, version) in ready

    assert asyncio.run(engine.update_served_versions(is_ready)) == {"linkedout": 1}
    ready.clear()  # unloaded (or the predictor went down), and no older version to fall back to
    assert asyncio.run(engine.update_served_versions(is_ready)) == {}
    with pytest.raises(ServingUnavailable, match="is ready to serve any more: the predictor does not report "
                                                 "linkedout_ranker version 1 ready"):
        asyncio.run(engine.recommend(RecRequest(["1"], 5, [[1]], False)))
    ready.add(("linkedout", 1))  # back: served again, and the reason is gone with it
    assert asyncio.run(engine.update_served_versions(is_ready)) == {"linkedout": 1}
    assert asyncio.run(engine.recommend(RecRequest(["1"], 5, [[1]], False))).items.shape == (1, 5)
    engine.close()


def test_catalogue_versions_are_listed_and_loaded(serving_repo: ServingRepo) -> None:
    cats = ServedCatalogs(str(serving_repo.root))
    assert cats.cache_dir is None  # a local repository is read in place: no copies, no temporary directory
    assert cats.versions("linkedout") == [1] and cats.versions("nope") == []
    view = cats.view("linkedout", 1)
    assert view.num_items == serving_repo.toy.split.num_items and view.index.kind == "exact"
    assert sorted(view.cold_start_rows.tolist()) == list(range(1, view.num_items + 1))
    meta = json.loads((serving_repo.root / "linkedout_ranker" / "1" / "catalog.json").read_text())
    assert meta["max_history"] == 10


@pytest.mark.integration
def test_the_transformer_reads_catalogues_from_an_s3_model_repository(serving_repo: ServingRepo) -> None:
    """What a pod does: the repository uploaded to S3 (a moto server here), catalogues read from there."""
    from conftest import moto_s3, new_bucket

    from linkedout.export import ModelRepository

    with moto_s3() as endpoint:
        bucket = new_bucket(endpoint, "models")
        uri = f"s3://{bucket}/repo"
        keys = ModelRepository(serving_repo.root).upload(uri, endpoint_url=endpoint)
        assert "linkedout_ranker/1/model.onnx" in keys and keys[-1].endswith("config.pbtxt")
        commits = [f"{m}_ranker/1/{f}" for m in ("linkedout", "sasrec_id") for f in (
            "index/added-0.f32", "index/payload-0.bin", "index/removed-0.i64", "index/manifest.json", "catalog.json")]
        assert sorted(ModelRepository(serving_repo.root).upload(uri, endpoint_url=endpoint)) == sorted([
            "linkedout_encoder/config.pbtxt", "linkedout_ranker/config.pbtxt", "sasrec_id_encoder/config.pbtxt",
            "sasrec_id_ranker/config.pbtxt", *commits])  # unchanged version files are not sent again
        cats = ServedCatalogs(uri, s3_endpoint=endpoint)
        assert cats.versions("linkedout") == [1]
        view = cats.view("linkedout", 1)
        local = Catalog.load(serving_repo.root / "linkedout_ranker" / "1")
        rows = np.arange(1, local.num_items + 1)
        assert np.array_equal(view.ids_of(rows), local.ids)
        assert np.allclose(view.vectors(rows), local.embeddings)
        # a video added in place to a copy of the repository, uploaded: the S3 view takes it on refresh
        copy = serving_repo.root.parent / "s3-copy"
        shutil.copytree(serving_repo.root, copy)
        append_videos(copy / "linkedout_ranker" / "1", {"ids": [777_000_001], "embeddings": local.embeddings[:1]})
        # the manifest there before the rows it names (an upload under way): nothing is taken, no harm done
        open_storage(uri, endpoint_url=endpoint).write_bytes(
            "linkedout_ranker/1/index/manifest.json", (copy / "linkedout_ranker/1/index/manifest.json").read_bytes())
        with pytest.raises(CatalogError, match="an upload under way"):
            cats.refresh("linkedout", 1)
        assert view.num_items == local.num_items
        sent = ModelRepository(copy).upload(uri, endpoint_url=endpoint)
        assert "linkedout_ranker/1/index/added-0.f32" in sent and "linkedout_ranker/1/index/payload-0.bin" in sent
        assert sent.index("linkedout_ranker/1/index/manifest.json") > sent.index("linkedout_ranker/1/index/added-0.f32")
        assert cats.refresh("linkedout", 1) and view.num_items == local.num_items + 1
        assert view.rows_of([777_000_001]).tolist() == [local.num_items + 1]
        cache = cats.cache_dir
        assert cache is not None and (cache / "linkedout_ranker" / "1" / "catalog.json").is_file()
        cats.close()  # the transformer's stop: its copies go with it
        assert not cache.exists()


def test_stack_settings_resolve_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`linkedout serve --workdir runs/demo`: Triton and the transformer run in other directories, so
    the work directory and the routing config they are given must be absolute."""
    monkeypatch.chdir(tmp_path)
    s = StackSettings(workdir=Path("runs/demo"), routing=Path("routing.yaml"))
    assert s.workdir == tmp_path / "runs" / "demo" and s.workdir.is_absolute()
    assert s.routing == tmp_path / "routing.yaml"


def test_stack_settings_refuse_an_unknown_event_loop_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="event_loop must be one of auto, asyncio, uvloop, got 'trio'"):
        StackSettings(workdir=tmp_path, event_loop="trio")


def test_a_history_longer_than_the_ranker_reads_never_shortens_the_answer(serving_repo: ServingRepo) -> None:
    """The ranker reads the last T videos; the answer skips every watched one and still holds k videos."""
    split = serving_repo.toy.split
    history = [int(i) for i in split.item_ids[1:16]]  # 15 watched videos, T = 10
    engine = make_engine(serving_repo, histories=StoreHistories({"long": history}))
    try:
        res = asyncio.run(engine.recommend(RecRequest(["long"], 20, None, False)))  # k = max_k
    finally:
        engine.close()
    items = res.items[0].tolist()
    assert -1 not in items and len(set(items)) == 20 and not set(items) & set(history)
    assert (np.diff(res.scores[0]) <= 1e-6).all()
