"""The user simulator of the local A/B run, offline.

Two checks that need no serving stack:
- the simulator against an in-process fake transformer (the routing rule of linkedout.ab.routing,
  two "models" that differ in a known way, a request log in the documented format): ``ab analyze``
  must find the difference the simulator knows, inside its interval;
- the gRPC client path (``tritonclient.grpc``, Open Inference Protocol v2) against a loopback
  **stand-in** of the transformer's gRPC endpoint built from tritonclient's own service
  definitions: it checks what the client sends and how it reads the answer (docs/serving.md §3),
  not what the real transformer computes. The real run is ``bench/ab_local.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linkedout.ab.analysis import analyze
from linkedout.ab.experiment import Experiment, experiment_from_dict
from linkedout.ab.logs import read_interaction_log, read_request_log, write_jsonl
from linkedout.ab.routing import assign_arm
from linkedout.ab.simulate import ClickModel, Served, SimulatedUsers, load_simulated_users, run_users

EXP = experiment_from_dict({
    "name": "local-ab", "salt": "local",
    "variants": [{"name": "control", "model": "popular", "weight": 50},
                 {"name": "treatment", "model": "topical", "weight": 50}],
    "min_sample_size": 100, "duration": "1m",
})


def toy_users(n_users: int = 600, n_topics: int = 5, n_videos: int = 500, seed: int = 0) -> SimulatedUsers:
    rng = np.random.default_rng(seed)
    aff = rng.dirichlet(np.full(n_topics, 0.3), size=n_users)  # (U, T) sparse-ish preferences
    return SimulatedUsers([f"u{i}" for i in range(n_users)], aff,
                          {v: int(rng.integers(n_topics)) for v in range(1, n_videos + 1)})


class FakeTransformer:
    """Routes by the documented rule and logs like the transformer; 'popular' ignores the user,
    'topical' puts the user's favourite topic first: the two differ in a known way."""

    def __init__(self, exp: Experiment, users: SimulatedUsers, log_path: Path) -> None:
        self.exp, self.users, self.log_path = exp, users, log_path
        self.by_topic: dict[int, list[int]] = {}
        for v, t in sorted(users.video_topic.items()):
            self.by_topic.setdefault(t, []).append(v)
        self.index = {u: i for i, u in enumerate(users.user_ids)}
        self.lock = threading.Lock()
        self.n = 0

    def __call__(self, user_id: str, k: int) -> Served:
        v = assign_arm(user_id, self.exp.salt, self.exp.arms)
        if v.model == "topical":
            fav = int(np.argmax(self.users.affinity[self.index[user_id]]))
            items = self.by_topic[fav][:k]
        else:
            items = list(range(1, k + 1))
        with self.lock:
            self.n += 1
            rid = f"r{self.n}"
        ts = int(time.time() * 1000)
        write_jsonl(self.log_path, [{"request_id": rid, "ts": ts, "user_id": user_id, "experiment": self.exp.name,
                                     "variant": v.name, "model": v.model, "model_version": f"{v.model}_ranker:1",
                                     "items": items, "scores": [0.0] * len(items), "cold_start": False,
                                     "latency_ms": 2.5}])
        return Served(rid, ts, tuple(items), v.name, f"{v.model}_ranker:1")


def test_simulated_users_find_the_known_difference(tmp_path: Path) -> None:
    users = toy_users()
    fake = FakeTransformer(EXP, users, tmp_path / "requests.jsonl")
    truth = run_users(fake, users, tmp_path / "interactions.jsonl", click_model=ClickModel(), duration_s=30,
                      max_requests=3000, concurrency=2, seed=1)
    assert truth.requests == 3000 and truth.failures == 0
    diff = truth.ctr_difference("control")["treatment"]
    assert diff > 0.05  # topical answers are clicked more, by construction
    a = analyze(EXP, read_request_log(tmp_path / "requests.jsonl"), read_interaction_log(tmp_path / "interactions.jsonl"))
    c = a.comparison("treatment")
    assert c.difference.ci[0] <= diff <= c.difference.ci[1], (c.difference, diff)
    assert a.joined["unattributed_interactions"] == 0
    assert sum(v.users for v in a.arms) > 500


def test_failed_calls_are_counted_and_the_run_is_bounded(tmp_path: Path) -> None:
    users = toy_users(50)

    def down(user_id: str, k: int) -> Served:
        raise ConnectionError("transformer down")

    t0 = time.monotonic()
    truth = run_users(down, users, tmp_path / "i.jsonl", duration_s=0.5, max_requests=10**9, concurrency=2)
    assert time.monotonic() - t0 < 10
    assert truth.requests == 0 and truth.failures > 0 and "transformer down" in truth.failure_examples[0]


def test_users_come_from_a_synthetic_dataset(tmp_path: Path) -> None:
    from linkedout.data.synth import SynthConfig, generate

    generate(tmp_path / "data", SynthConfig.preset("toy"), write_videos=False)
    users = load_simulated_users(tmp_path / "data")
    assert len(users.user_ids) > 50
    assert np.allclose(users.affinity.sum(axis=1), 1)
    assert len(users.video_topic) == 50
    with pytest.raises(FileNotFoundError, match="synth_topics"):
        load_simulated_users(tmp_path)


def test_click_model() -> None:
    cm = ClickModel(p_hit=0.4, p_miss=0.0, position_decay=0.5)
    p = cm.probabilities(np.array([1.0, 0.0]), np.array([0, 1, 0, -1]))
    assert np.allclose(p, [0.4, 0.0, 0.1, 0.0])
    with pytest.raises(ValueError, match="p_miss"):
        ClickModel(p_hit=0.1, p_miss=0.2)


# ------------------------------------------------------------------ gRPC client against a stand-in


@pytest.fixture
def grpc_stand_in() -> Iterator[tuple[str, list[Any]]]:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    seen: list[Any] = []

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request: Any, context: Any) -> Any:
            seen.append(request)
            # tritonclient sends the tensors as raw_input_contents, in the order of `inputs`
            raw = {i.name: request.raw_input_contents[n] for n, i in enumerate(request.inputs)}
            n_bytes = int.from_bytes(raw["user_id"][:4], "little")  # BYTES: 4-byte length, then the bytes
            uid = raw["user_id"][4:4 + n_bytes].decode()
            k = int(np.frombuffer(raw["k"], dtype="<i8")[0])
            variant = assign_arm(uid, EXP.salt, EXP.arms)
            resp = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
            items = resp.outputs.add(name="items", datatype="INT64", shape=[1, k])
            items.contents.int64_contents.extend([*range(100, 100 + k - 1), -1])  # one pad
            out = resp.outputs.add(name="variant", datatype="BYTES", shape=[1])
            out.contents.bytes_contents.append(variant.name.encode())
            ver = resp.outputs.add(name="model_version", datatype="BYTES", shape=[1])
            ver.contents.bytes_contents.append(f"{variant.model}_ranker:3".encode())
            return resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(grace=None)


def test_grpc_recommender_speaks_the_documented_interface(grpc_stand_in: tuple[str, list[Any]]) -> None:
    from linkedout.ab.simulate import grpc_recommender

    url, seen = grpc_stand_in
    recommend = grpc_recommender(url, model_name="linkedout")
    served = recommend("u7", 5)
    req = seen[-1]
    assert req.model_name == "linkedout" and req.id == served.request_id and len(served.request_id) == 32
    inputs = {i.name: i for i in req.inputs}
    assert inputs["user_id"].datatype == "BYTES" and list(inputs["user_id"].shape) == [1]
    assert inputs["k"].datatype == "INT64" and list(inputs["k"].shape) == [1]
    assert {o.name for o in req.outputs} == {"items", "variant", "model_version"}
    assert served.items == (100, 101, 102, 103)  # -1 padding dropped
    assert served.arm == assign_arm("u7", EXP.salt, EXP.arms).name
    assert served.model_version.endswith("_ranker:3")
    assert abs(served.ts - time.time() * 1000) < 60_000


def test_ab_simulate_cli_against_the_stand_in(grpc_stand_in: tuple[str, list[Any]], tmp_path: Path) -> None:
    import yaml

    from linkedout.cli import main
    from linkedout.data.synth import SynthConfig, generate

    url, seen = grpc_stand_in
    generate(tmp_path / "data", SynthConfig.preset("toy"), write_videos=False)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "local-ab", "salt": "local",
                                   "variants": [{"name": "control", "model": "popular"},
                                                {"name": "treatment", "model": "topical"}]}))
    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps({"transformer": {"grpc": url}}))
    assert main(["ab", "simulate", str(exp), "--stack", str(stack), "--data", str(tmp_path / "data"),
                 "--duration", "5", "--max-requests", "40", "--concurrency", "2", "--out", str(tmp_path / "out")]) == 0
    truth = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert truth["requests"] == 40 == len(seen)
    assert set(truth["impressions"]) <= {"control", "treatment"}
