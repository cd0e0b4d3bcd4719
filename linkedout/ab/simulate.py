"""Simulated users for A/B experiments: against the running transformer, or entirely offline.

**Against the local stack** (:func:`run_users`): simulated users ask the transformer for
recommendations over gRPC (Open Inference Protocol v2, ``tritonclient.grpc``: docs/serving.md §3),
look at the answer and click with the probabilities of a known :class:`ClickModel`, and the
interactions are written to an interaction log (``linkedout.ab.logs``). The transformer writes the
request log itself. The click model scores each served video by how well its synthetic topic
(``{prefix}_synth_topics.csv`` of a ``linkedout data synth`` dataset) matches the user's watched
topics, so two models that rank differently get different click-through rates; the simulator also
records the exact expected clicks of every answer, so the true difference between the arms is
known and ``ab analyze``'s interval can be checked against it (:class:`SimulationTruth`).

**Offline** (:func:`synthetic_logs`): both logs generated with given per-arm click
probabilities, latencies and error rates, and the routing rule of ``linkedout.ab.routing`` (or a
deliberately skewed split), for tests and for trying ``ab analyze`` without a stack.

``tritonclient`` is imported only inside :func:`grpc_recommender` (it cannot share a process with
``kserve``: kserve#3099).
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.ab.experiment import Experiment
from linkedout.ab.logs import write_jsonl
from linkedout.ab.routing import assign_arm
from linkedout.utils import atomic_write_text, get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Served:
    """One answer of the recommender to one user."""

    request_id: str
    ts: int  # ms since the epoch
    items: tuple[int, ...]  # video ids, best first (padding removed)
    arm: str  # the experiment arm that answered (the transformer's ``variant`` output)
    model_version: str = ""


#: ``recommend(user_id, k) -> Served``: the transformer, a stand-in, or an in-process fake.
Recommender = Callable[[str, int], Served]


@dataclass(frozen=True)
class ClickModel:
    """P(click) of the video at rank r (0 = first) for user u:
    ``(p_miss + (p_hit - p_miss) * affinity_u[topic(video)]) * position_decay ** r``."""

    p_hit: float = 0.35  # a video of the user's only topic, at rank 0
    p_miss: float = 0.02  # a video of a topic the user never watched
    position_decay: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.p_miss <= self.p_hit <= 1:
            raise ValueError(f"ClickModel needs 0 <= p_miss <= p_hit <= 1, got p_miss={self.p_miss}, p_hit={self.p_hit}")
        if not 0 < self.position_decay <= 1:
            raise ValueError(f"ClickModel.position_decay must be in (0, 1], got {self.position_decay}")

    def probabilities(self, affinity: np.ndarray, item_topics: np.ndarray) -> np.ndarray:
        """(k,) click probabilities. ``affinity`` (T,) the user's topic shares; ``item_topics`` (k,), -1 = unknown."""
        a = np.where(item_topics >= 0, affinity[np.clip(item_topics, 0, None)], 0.0)  # (k,)
        ranks = np.arange(len(item_topics))
        return (self.p_miss + (self.p_hit - self.p_miss) * a) * self.position_decay ** ranks


@dataclass
class SimulatedUsers:
    """Users of a synthetic dataset with their topic affinities, and the videos' topics."""

    user_ids: list[str]
    affinity: np.ndarray  # (U, T) rows sum to 1
    video_topic: dict[int, int]

    def topics_of(self, items: Sequence[int]) -> np.ndarray:
        return np.array([self.video_topic.get(int(i), -1) for i in items], dtype=np.int64)


def load_simulated_users(data_dir: str | Path, max_users: int | None = None, seed: int = 0) -> SimulatedUsers:
    """Users and topics from a ``linkedout data synth`` dataset (its pairs and its topic ground truth)."""
    data_dir = Path(data_dir)
    topics_files = sorted(data_dir.glob("*_synth_topics.csv"))
    if not topics_files:
        raise FileNotFoundError(f"{data_dir}: no *_synth_topics.csv (the simulator needs a synthetic dataset "
                                "written by `linkedout data synth`)")
    prefix = topics_files[0].name[: -len("_synth_topics.csv")]
    pairs = data_dir / f"{prefix}_pairs.csv"
    if not pairs.is_file():
        raise FileNotFoundError(f"{data_dir}: {pairs.name} missing")
    with topics_files[0].open(newline="") as f:
        video_topic = {int(r["item"]): int(r["topic"]) for r in csv.DictReader(f)}
    n_topics = max(video_topic.values()) + 1
    counts: dict[str, np.ndarray] = {}
    with pairs.open(newline="") as f:
        for r in csv.DictReader(f):
            t = video_topic.get(int(r["item"]))
            if t is None:
                continue
            counts.setdefault(str(r["user"]), np.zeros(n_topics))[t] += 1
    users = sorted(counts)
    if max_users is not None and len(users) > max_users:
        rng = np.random.default_rng(seed)
        users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
    aff = np.stack([counts[u] / counts[u].sum() for u in users]) if users else np.zeros((0, n_topics))
    return SimulatedUsers(users, aff, video_topic)


@dataclass
class SimulationTruth:
    """What the simulator knows exactly: per arm, impressions and expected clicks of what was served."""

    impressions: dict[str, int] = field(default_factory=dict)
    expected_clicks: dict[str, float] = field(default_factory=dict)
    clicks: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    failures: int = 0
    failure_examples: list[str] = field(default_factory=list)

    def ctr(self) -> dict[str, float]:
        return {v: self.expected_clicks[v] / n for v, n in self.impressions.items() if n}

    def ctr_difference(self, control: str) -> dict[str, float]:
        c = self.ctr()
        return {v: x - c[control] for v, x in c.items() if v != control and control in c}

    def to_dict(self, control: str | None = None) -> dict[str, Any]:
        d = asdict(self)
        d["ctr"] = self.ctr()
        if control is not None:
            d["ctr_difference"] = self.ctr_difference(control)
        return d


def run_users(recommend: Recommender, users: SimulatedUsers, interaction_log: str | Path, *,
              click_model: ClickModel | None = None, k: int = 10, duration_s: float = 60.0,
              max_requests: int = 10_000, concurrency: int = 4, with_request_id: bool = True,
              seed: int = 0) -> SimulationTruth:
    """Simulated users request, look and click for at most ``duration_s`` and ``max_requests``.

    Each of ``concurrency`` threads repeatedly picks a user at random, calls ``recommend`` and
    draws a click for every served video from ``click_model``; clicks are appended to
    ``interaction_log`` (a few hundred ms after the answer, with the response's ``request_id``
    when ``with_request_id``). Failed calls are counted, never retried.
    """
    if not users.user_ids:
        raise ValueError("no simulated users")
    cm = click_model or ClickModel()
    truth = SimulationTruth()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    issued = 0
    index = {u: i for i, u in enumerate(users.user_ids)}

    def worker(wid: int) -> None:
        nonlocal issued
        rng = np.random.default_rng([seed, wid])
        while time.monotonic() < deadline:
            with lock:
                if issued >= max_requests:
                    return
                issued += 1
            uid = users.user_ids[int(rng.integers(len(users.user_ids)))]
            try:
                served = recommend(uid, k)
            except Exception as e:  # the stack's error: counted, the run goes on
                with lock:
                    truth.failures += 1
                    if len(truth.failure_examples) < 5:
                        truth.failure_examples.append(f"{type(e).__name__}: {e}")
                continue
            p = cm.probabilities(users.affinity[index[uid]], users.topics_of(served.items))  # (k,)
            clicked = rng.random(len(p)) < p
            records = [{"user_id": uid, "video_id": int(v), "ts": served.ts + 200 + 150 * r, "event": "click",
                        **({"request_id": served.request_id} if with_request_id else {})}
                       for r, (v, c) in enumerate(zip(served.items, clicked)) if c]
            with lock:
                truth.requests += 1
                a = served.arm
                truth.impressions[a] = truth.impressions.get(a, 0) + len(served.items)
                truth.expected_clicks[a] = truth.expected_clicks.get(a, 0.0) + float(p.sum())
                truth.clicks[a] = truth.clicks.get(a, 0) + int(clicked.sum())
                if records:
                    write_jsonl(interaction_log, records)

    Path(interaction_log).parent.mkdir(parents=True, exist_ok=True)
    Path(interaction_log).touch()
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 60)
    log.info("simulated %d requests (%d failed) in at most %.0f s", truth.requests, truth.failures, duration_s)
    return truth


def grpc_recommender(url: str, model_name: str = "linkedout", timeout_s: float = 2.0) -> Recommender:
    """``recommend(user_id, k)`` through the transformer's gRPC endpoint (``host:port``), one client per thread.

    Sends ``user_id`` BYTES [1] and ``k`` INT64 [1] with a fresh ``request_id``; reads ``items``,
    ``variant`` and ``model_version`` (docs/serving.md §3).
    """
    import tritonclient.grpc as grpcclient

    local = threading.local()

    def client() -> Any:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url=url)
        return local.client

    outputs = [grpcclient.InferRequestedOutput(n) for n in ("items", "variant", "model_version")]

    def recommend(user_id: str, k: int) -> Served:
        uid = grpcclient.InferInput("user_id", [1], "BYTES")
        uid.set_data_from_numpy(np.array([user_id.encode()], dtype=np.object_))
        kin = grpcclient.InferInput("k", [1], "INT64")
        kin.set_data_from_numpy(np.array([k], dtype=np.int64))
        rid = uuid.uuid4().hex
        ts = int(time.time() * 1000)
        res = client().infer(model_name, [uid, kin], outputs=outputs, request_id=rid, client_timeout=timeout_s)
        items = _output(res, "items")  # (1, k) INT64, -1 pads
        arm = _output(res, "variant")  # (1,) BYTES: the arm that answered
        version = _output(res, "model_version")
        if items is None or arm is None:
            raise RuntimeError("transformer answer without items or variant (docs/serving.md §3)")

        def text(x: Any) -> str:
            return x.decode() if isinstance(x, bytes) else str(x)

        return Served(rid, ts, tuple(int(i) for i in items[0] if i >= 0), text(arm[0]),
                      text(version[0]) if version is not None else "")

    return recommend


def _output(res: Any, name: str) -> np.ndarray | None:
    """An output tensor of a tritonclient gRPC result, from raw_output_contents or the typed contents.

    ``InferResult.as_numpy`` reads raw contents and ``bytes_contents`` only; a server that answers
    INT64/FP32 in ``int64_contents`` / ``fp32_contents`` (allowed by the protocol) is read here too.
    """
    try:
        arr = res.as_numpy(name)
    except ValueError:  # typed contents: as_numpy found no raw bytes and failed to reshape
        arr = None
    if arr is not None:
        return arr
    out = res.get_output(name)
    if out is None:
        return None
    c = out.contents
    for field_name, dtype in (("int64_contents", np.int64), ("fp32_contents", np.float32),
                              ("int_contents", np.int32), ("bool_contents", np.bool_)):
        values = getattr(c, field_name)
        if len(values):
            return np.asarray(values, dtype=dtype).reshape(list(out.shape))
    if len(c.bytes_contents):
        return np.array(list(c.bytes_contents), dtype=np.object_).reshape(list(out.shape))
    return np.empty([0 if d < 0 else d for d in out.shape])


def synthetic_logs(exp: Experiment, out_dir: str | Path, *, users: int = 4000,
                   ctr: dict[str, float] | None = None, latency_ms: dict[str, float] | None = None,
                   error_rate: dict[str, float] | None = None, sessions_per_user: float = 3.0, k: int = 10,
                   duration_s: float | None = None, shares: dict[str, float] | None = None,
                   heterogeneity: float = 0.5, with_request_id: bool = True, start_ms: int = 1_767_225_600_000,
                   seed: int = 0) -> dict[str, Any]:
    """Write ``requests.jsonl`` and ``interactions.jsonl`` of a simulated experiment into ``out_dir``.

    Users are assigned by the experiment's routing rule, or drawn with ``shares`` (to simulate a
    broken split). A user's click probability is the arm's ``ctr`` times a per-user factor
    (lognormal, mean 1, spread ``heterogeneity``: users differ, as real ones do); requests arrive
    uniformly over ``duration_s`` (default: the experiment's ``duration``); latencies are
    lognormal around ``latency_ms``; a share ``error_rate`` of requests fail. Returns the truth:
    the expected CTR of each arm and the differences to the control.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [a.name for a in exp.arms]
    ctr = ctr or dict.fromkeys(names, 0.05)
    latency_ms = latency_ms or dict.fromkeys(names, 4.0)
    error_rate = error_rate or dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(seed)
    span_ms = (duration_s if duration_s is not None else exp.duration_s) * 1000.0
    sigma = heterogeneity
    requests: list[dict[str, Any]] = []
    interactions: list[dict[str, Any]] = []
    expected = dict.fromkeys(names, 0.0)
    imps = dict.fromkeys(names, 0)
    for u in range(users):
        uid = f"u{u}"
        if shares is None:
            v = assign_arm(uid, exp.salt, exp.arms).name
        else:
            v = str(rng.choice(list(shares), p=np.array(list(shares.values())) / sum(shares.values())))
        factor = rng.lognormal(-sigma * sigma / 2, sigma) if sigma > 0 else 1.0
        p = min(1.0, ctr[v] * factor)
        n_sessions = 1 + rng.poisson(max(0.0, sessions_per_user - 1))
        for ts in np.sort(start_ms + rng.random(n_sessions) * span_ms).astype(np.int64):
            rid = uuid.UUID(int=int(rng.integers(2**63)) << 64 | int(rng.integers(2**63))).hex
            items = rng.integers(0, 1_000_000, size=k)  # (k,) distinct ids (resampled on a rare repeat)
            while len(np.unique(items)) < k:
                items = rng.integers(0, 1_000_000, size=k)
            items = items.tolist()
            failed = rng.random() < error_rate[v]
            lat = float(rng.lognormal(math.log(latency_ms[v]), 0.35))
            rec: dict[str, Any] = {"request_id": rid, "ts": int(ts), "user_id": uid, "experiment": exp.name,
                                   "variant": v, "model": exp.arm(v).model, "model_version": "",
                                   "items": [] if failed else items, "scores": [], "cold_start": False,
                                   "latency_ms": round(lat, 3)}
            if failed:
                rec["error"] = "UNAVAILABLE: predictor timeout"
                requests.append(rec)
                continue
            requests.append(rec)
            expected[v] += p * k
            imps[v] += k
            for r in np.flatnonzero(rng.random(k) < p):
                inter: dict[str, Any] = {"user_id": uid, "video_id": int(items[r]), "ts": int(ts) + 500 + 100 * int(r)}
                if with_request_id:
                    inter["request_id"] = rid
                interactions.append(inter)
    requests.sort(key=lambda r: r["ts"])
    interactions.sort(key=lambda r: r["ts"])
    write_jsonl(out_dir / "requests.jsonl", requests, append=False)
    write_jsonl(out_dir / "interactions.jsonl", interactions, append=False)
    control = exp.control_arm.name
    realised = {v: expected[v] / imps[v] for v in names if imps[v]}
    truth = {"ctr": dict(ctr), "realised_expected_ctr": realised,
             "difference": {v: ctr[v] - ctr[control] for v in names if v != control}}
    atomic_write_text(out_dir / "truth.json", json.dumps(truth, indent=2))
    return truth
