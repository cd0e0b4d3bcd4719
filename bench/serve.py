"""Serving against its floors: the LinkedOut stack, a bare KServe model and a two-hop chain, in one run.

    python bench/serve.py [--videos 19738] [--users 100000] [--runs 3] [--requests 1000] [--seconds 10]
                          [--online-store sqlite|redis] [--event-loop auto|asyncio|uvloop]

Builds, in ``--workdir`` (default ``runs/bench-serve``): the embedded default's ranker (the model
``linkedout run`` serves, random weights: latency does not depend on them) over a catalogue of
``--videos`` videos, and a Feast store (SQLite) with ``--users`` users holding a 10-video history each
(MicroLens-100K scale by default; ``--videos 400 --users 1000`` is the size of ``linkedout run``'s demo).
With ``--online-store redis`` the store is production's instead: Feast's Redis online store on a
``redis-server`` this bench starts on 127.0.0.1 (in ``runs/bench-serve-redis``; its CPU counted with
the stack's), read by the transformer with Feast's asyncio client; figures to ``serve_redis.json``.
Starts, all on loopback:

- (a) the local stack (the real ``tritonserver`` + the KServe transformer + Feast): one user id in,
  ten videos out;
- (b) ``bench/floor.py bare``: a bare ``kserve.Model`` answering ``k`` ids from arithmetic (one hop);
- (c) ``bench/floor.py two-hop``: a KServe transformer forwarding to a second local Triton serving
  an ONNX identity model (the architecture's floor: no Feast, no ranker);

and measures each with the same client (``tritonclient``'s gRPC stubs), runs interleaved (a, b, c,
a, b, c, ...): one client, ``--requests`` sequential requests (p50, p99); then ``--clients``
requests in flight (``tritonclient.grpc.aio``) for ``--seconds`` s (requests/s, p50, p99). Reports
the medians over ``--runs`` runs, the ratios (a)/(b) and (a)/(c) against issue 18's targets, and
beside them: the predictor alone (the ranker on Triton, directly), Feast alone (the transformer's
history read in process) and where one request's time goes (the transformer's Prometheus histograms:
Feast, Triton, retrieval); larger catalogues are bench/scale.py's. Writes
``bench/results/serve.json``. Every server listens on 127.0.0.1; every load loop is bounded in count
and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = "identity"  # the two-hop floor's Triton model (bench/floor.py)
sys.path.insert(0, str(ROOT))
from linkedout.serving import EVENT_LOOPS  # noqa: E402  (the package's __init__ alone: no kserve, no tritonclient)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def med(values: list[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------------------------- setup


def host_state() -> dict[str, Any]:
    """When and on what a bench ran, for its JSON: the host's speed drifts, so figures compare only within a
    run, and a run is found again by its time and commit (``-dirty``: uncommitted changes; None outside a git checkout)."""
    from linkedout.utils import utc_now

    try:
        commit: str | None = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"started_at": utc_now(),
            "commit": commit, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}


def build(workdir: Path, videos: int, users: int, seed: int = 0, redis_address: str | None = None) -> dict[str, Any]:
    """The model repository (encoder-less: only the ranker is on the request path) and the Feast store:
    SQLite in ``workdir/feast`` (kept between runs), or with ``redis_address`` Feast's production
    Redis store at that address (written again each run: the bench's redis-server keeps nothing)."""
    import torch

    from linkedout.export import Catalog, ExportConfig, ModelRepository, export_ranker
    from linkedout.job.defaults import default_model_config
    from linkedout.model import build_model

    repo_dir = workdir / "model_repository"
    stamp = workdir / "built.json"
    want = {"videos": videos, "users": users, "seed": seed, "catalogue_format": 2, "histories": 2}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        print(f"reusing {workdir} ({videos:,} videos, {users:,} users)", flush=True)
        if redis_address is not None:
            write_store(workdir / "feast", videos, users, seed, redis_address)
        return want
    import shutil

    shutil.rmtree(repo_dir, ignore_errors=True)
    rng = np.random.default_rng(seed)
    cfg = default_model_config()
    torch.manual_seed(seed)
    model = build_model(cfg, videos, np.ones(videos + 1, dtype=np.int64)).eval()
    emb = rng.standard_normal((videos, cfg.d_model)).astype(np.float32) * 0.1
    n_layers = cfg.fusion.num_layers
    gate = rng.dirichlet(np.ones(n_layers), size=videos).astype(np.float32)
    catalog = Catalog(ids=video_ids(videos), embeddings=emb, gate=gate, contributions=gate,
                      popularity=rng.zipf(1.3, size=videos).clip(0, 10**6),
                      published=1_700_000_000_000 + rng.integers(0, 86_400_000 * 90, size=videos),
                      layers=[f"L{4 * i}" for i in range(n_layers)])
    t0 = time.perf_counter()
    export_ranker(model, catalog, ModelRepository(repo_dir), ExportConfig(name="linkedout"))
    print(f"ranker over {videos:,} videos exported in {time.perf_counter() - t0:.1f} s", flush=True)
    write_store(workdir / "feast", videos, users, seed, redis_address)
    stamp.write_text(json.dumps(want))
    return want


def default_workdir(online_store: str) -> Path:
    return ROOT / "runs" / ("bench-serve-redis" if online_store == "redis" else "bench-serve")


def build_for(args: argparse.Namespace, servers: contextlib.ExitStack) -> tuple[dict[str, Any], int | None]:
    """``build`` for ``args.online_store`` (``args.workdir``, ``args.videos``, ``args.users``); with Redis, a
    redis-server started first and left on ``servers``. (What was built, the redis-server's PID or None.)"""
    if args.online_store != "redis":
        return build(args.workdir, args.videos, args.users), None
    from linkedout.featurestore.local_redis import LocalRedis

    server = servers.enter_context(LocalRedis())
    return build(args.workdir, args.videos, args.users, redis_address=server.address), server.pid


def video_ids(videos: int) -> np.ndarray:
    return np.arange(1, videos + 1, dtype=np.int64) * 7 + 100_000  # arbitrary, not row numbers


def write_store(feast_dir: Path, videos: int, users: int, seed: int, redis_address: str | None) -> None:
    """``users`` 10-video histories (the same for either store) in a Feast repository at ``feast_dir``."""
    import shutil

    import pandas as pd

    from linkedout.featurestore import FeastSettings, apply, open_repo, render_repo, write_histories

    shutil.rmtree(feast_dir, ignore_errors=True)
    t0 = time.perf_counter()
    if redis_address is None:
        settings = FeastSettings(environment="local")
    else:  # the production store: Redis online, parquet offline (a local directory here, S3 in a cluster)
        settings = FeastSettings(environment="production", redis_address=redis_address,
                                 offline_root=str(feast_dir / "offline"), registry=str(feast_dir / "registry.db"))
    render_repo(feast_dir, settings)
    frepo = open_repo(feast_dir)
    apply(frepo)
    rng = np.random.default_rng(seed + 1)
    ids = video_ids(videos)
    watched = [ids[rng.integers(0, videos, size=10)] for _ in range(users)]
    last = 1_710_000_000_000 + rng.integers(0, 86_400_000, size=users)
    histories = pd.DataFrame({"user_id": [str(u) for u in range(users)], "watched": watched,
                              "last_watch": last.astype(np.int64),
                              "event_timestamp": pd.to_datetime(last, unit="ms", utc=True)})
    write_histories(frepo, histories, check_newer=False)
    store = "SQLite" if redis_address is None else f"Redis at {redis_address}"
    print(f"feast ({store}): {users:,} histories written in {time.perf_counter() - t0:.1f} s", flush=True)


# --------------------------------------------------------------------------------------------- measures


def one_client(url: str, users: int, n: int, rng: np.random.Generator, model: str = "linkedout") -> list[float]:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    uid = g.InferInput("user_id", [1], "INT64")
    k = g.InferInput("k", [1], "INT64")
    k.set_data_from_numpy(np.array([10], dtype=np.int64))
    times = []
    deadline = time.monotonic() + 120
    for u in rng.integers(0, users, size=n):
        uid.set_data_from_numpy(np.array([u], dtype=np.int64))
        t0 = time.perf_counter()
        client.infer(model, [uid, k])
        times.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() > deadline:
            break
    client.close()
    return times


async def concurrent_load(url: str, users: int, clients: int, seconds: float,
                      seed: int) -> tuple[int, float, list[float], dict[str, int]]:
    """``clients`` loops of requests for ``seconds``: answered, elapsed s, their latencies (ms), failures by reason
    (counted, not fatal: a failed request is a figure of the run)."""
    import tritonclient.grpc.aio as ga
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(seed)
    client = ga.InferenceServerClient(url)
    k = ga.InferInput("k", [1], "INT64")
    k.set_data_from_numpy(np.array([10], dtype=np.int64))
    times: list[float] = []
    stop = time.monotonic() + seconds
    done = 0
    failed: dict[str, int] = {}

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            uid = ga.InferInput("user_id", [1], "INT64")
            uid.set_data_from_numpy(np.array([rng.integers(0, users)], dtype=np.int64))
            t0 = time.perf_counter()
            try:
                await client.infer("linkedout", [uid, k])
            except InferenceServerException as e:
                reason = f"{e.status()}: {e.message()}"[:120]
                failed[reason] = failed.get(reason, 0) + 1
                continue
            times.append((time.perf_counter() - t0) * 1000)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return done, elapsed, times, failed


def predictor_alone(url: str, videos: int, n: int, rng: np.random.Generator) -> list[float]:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    hist = g.InferInput("history", [1, 10], "INT64")
    emb = g.InferInput("history_emb", [1, 10, 64], "FP32")
    out = [g.InferRequestedOutput("user")]
    times = []
    for _ in range(n):
        hist.set_data_from_numpy(rng.integers(1, videos + 1, size=(1, 10)).astype(np.int64))
        emb.set_data_from_numpy(rng.standard_normal((1, 10, 64)).astype(np.float32))
        t0 = time.perf_counter()
        client.infer("linkedout_ranker", [hist, emb], outputs=out)
        times.append((time.perf_counter() - t0) * 1000)
    client.close()
    return times


def feast_alone(feast_dir: Path, users: int, n: int, rng: np.random.Generator) -> list[float]:
    from linkedout.featurestore import HistoryReader

    reader = HistoryReader(feast_dir)
    reader.get(["0"])
    times = []
    for u in rng.integers(0, users, size=n):
        t0 = time.perf_counter()
        reader.get([str(u)])
        times.append((time.perf_counter() - t0) * 1000)
    reader.close()
    return times


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the transformer's latency histograms."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for name in ("linkedout_request_latency_seconds", "linkedout_feast_latency_seconds",
                 "linkedout_triton_latency_seconds", "linkedout_retrieval_latency_seconds"):
        for kind in ("sum", "count"):
            vals = [float(m.group(1)) for m in re.finditer(rf"^{name}_{kind}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)]
            out[f"{name}_{kind}"] = sum(vals)
    for call in ("feast", "triton"):  # requests per coalesced call (linkedout.serving.batching)
        for kind in ("sum", "count"):
            m = re.search(rf'^linkedout_coalesced_batch_size_{kind}{{call="{call}"}} ([0-9.e+-]+)$', text, re.M)
            out[f"coalesced_{call}_{kind}"] = float(m.group(1)) if m else 0.0
    return out


# --------------------------------------------------------------------------------------------- floors


class Floor:
    """A floor server of ``bench/floor.py`` in a child process, on free loopback ports (retried on a clash)."""

    def __init__(self, kind: str, log_dir: Path, *extra: str) -> None:
        self.kind = kind
        self.log = log_dir / f"floor-{kind}.log"
        for _attempt in range(3):
            if self._start(extra):
                return
            self.stop()
        raise RuntimeError(f"floor {kind} did not start (log {self.log})")

    def _start(self, extra: tuple[str, ...]) -> bool:
        import tritonclient.grpc as g

        from linkedout.serving.local import process

        http, grpc_port = process.free_port(), process.free_port()
        self.url = f"127.0.0.1:{grpc_port}"
        self.proc = process.spawn([sys.executable, str(ROOT / "bench" / "floor.py"), self.kind, "--http_port",
                                   str(http), "--grpc_port", str(grpc_port), *extra],
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, log_path=self.log)
        client = g.InferenceServerClient(self.url)
        deadline = time.monotonic() + 60
        try:
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.is_model_ready("linkedout"):
                        return True
                except Exception:
                    pass
                time.sleep(0.2)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        from linkedout.serving.local import process

        process.stop(self.proc)


def write_identity_repository(directory: Path) -> Path:
    """The model repository of ``bench/floor.py two-hop``'s Triton: ``identity``, ``history`` -> ``rows`` [B, 10]."""
    import onnx
    from onnx import TensorProto, helper

    from linkedout.export.graphs import GraphSpec, TensorSpec
    from linkedout.export.repository import TritonConfig, config_pbtxt

    model_dir = directory / IDENTITY
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph([helper.make_node("Identity", ["history"], ["rows"])], IDENTITY,
                              [helper.make_tensor_value_info("history", TensorProto.INT64, ["B", 10])],
                              [helper.make_tensor_value_info("rows", TensorProto.INT64, ["B", 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              str(model_dir / "1" / "model.onnx"))
    spec = GraphSpec((TensorSpec("history", "INT64", (-1, 10)),), (TensorSpec("rows", "INT64", (-1, 10)),))
    (model_dir / "config.pbtxt").write_text(config_pbtxt(IDENTITY, spec, TritonConfig(max_batch_size=64,
                                                                                      max_queue_delay_us=100)))
    return directory


def start_floors(workdir: Path, event_loop: str = "auto") -> tuple[dict[str, Floor], Any]:
    """(b) the bare KServe model; (c) the two-hop chain and the local Triton serving ``identity``."""
    from linkedout.serving.local.triton import LocalTriton
    from linkedout.serving.local.triton_repo import LocalRepository

    logs = workdir.resolve() / "floors"
    source = write_identity_repository(logs / "identity_repository")
    triton = LocalTriton(LocalRepository(source, logs / "identity_triton"), models=[IDENTITY],
                         log_path=logs / "identity_triton.log").start()
    try:
        loop = ("--event-loop", event_loop)
        floors = {"bare_kserve": Floor("bare", logs, *loop),
                  "two_hop": Floor("two-hop", logs, "--predictor_host", triton.grpc_url.split("://")[-1], *loop)}
    except BaseException:
        triton.stop()
        raise
    return floors, triton


# --------------------------------------------------------------------------------------------- main


def warm_up(url: str, users: int, rng: np.random.Generator, attempts: int = 5) -> None:
    """200 requests (connections, catalogue, caches), retried while the server still starts."""
    for attempt in range(attempts):
        try:
            one_client(url, users, 200, rng)
            return
        except Exception as e:
            if attempt == attempts - 1:
                raise
            print(f"  warm-up of {url}: {e}; again in 1 s", flush=True)
            time.sleep(1)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of ``pids`` and all their descendants (Triton's backend stubs), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    mine = set(pids)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in mine} - mine
        grew = bool(more)
        mine |= more
    return sum(times.get(pid, 0.0) for pid in mine)


def measure(url: str, pids: list[int], args: argparse.Namespace, rng: np.random.Generator, seed: int,
            metrics_url: str | None = None) -> dict[str, float]:
    """One run against one server: one client (p50, p99), then ``--clients`` in flight (rps, p50, p99, the
    CPU per request of the servers ``pids`` and of this client process, and with ``metrics_url`` the
    transformer's requests per coalesced Feast read and Triton call)."""
    times = one_client(url, args.users, args.requests, rng)
    before = scrape(metrics_url) if metrics_url else {}
    server0, front0, client0 = cpu_seconds(pids), cpu_seconds(pids[:1]), time.process_time()
    done, elapsed, loaded, failed = asyncio.run(concurrent_load(url, args.users, args.clients, args.seconds, seed=seed))
    if failed:
        print(f"  failed requests under load: {failed}", flush=True)
    server_cpu, client_cpu = cpu_seconds(pids) - server0, time.process_time() - client0
    front_cpu = cpu_seconds(pids[:1]) - front0
    coalesced = {}
    if metrics_url:
        after = scrape(metrics_url)
        for call in ("feast", "triton"):
            n = after[f"coalesced_{call}_count"] - before[f"coalesced_{call}_count"]
            coalesced[f"requests_per_{call}_call"] = (after[f"coalesced_{call}_sum"]
                                                      - before[f"coalesced_{call}_sum"]) / max(1.0, n)
    return {**coalesced, "one_client_p50_ms": pct(times, 50), "one_client_p99_ms": pct(times, 99),
            "rps": done / elapsed, "p50_ms": pct(loaded, 50), "p99_ms": pct(loaded, 99),
            "server_cpu_ms_per_request": 1000 * server_cpu / max(1, done),
            "front_server_cpu_ms_per_request": 1000 * front_cpu / max(1, done),
            "client_cpu_ms_per_request": 1000 * client_cpu / max(1, done),
            "failed_requests": float(sum(failed.values()))}


def where_time_goes(url: str, metrics_url: str, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, float]:
    """The transformer's own histograms over one client's requests: Feast, Triton, the rest."""
    before = scrape(metrics_url)
    times = one_client(url, args.users, args.requests, rng)
    after = scrape(metrics_url)
    d = {k: after[k] - before[k] for k in after}
    n = max(1.0, d["linkedout_request_latency_seconds_count"])
    parts = {"client_mean_ms": float(np.mean(times)),
             "transformer_ms": 1000 * d["linkedout_request_latency_seconds_sum"] / n,
             "feast_ms": 1000 * d["linkedout_feast_latency_seconds_sum"] / max(1.0, d["linkedout_feast_latency_seconds_count"]),
             "triton_ms": 1000 * d["linkedout_triton_latency_seconds_sum"] / max(1.0, d["linkedout_triton_latency_seconds_count"]),
             "retrieval_ms": 1000 * d["linkedout_retrieval_latency_seconds_sum"]
             / max(1.0, d["linkedout_retrieval_latency_seconds_count"])}
    parts["kserve_hop_and_client_ms"] = parts["client_mean_ms"] - parts["transformer_ms"]
    parts["transformer_own_code_ms"] = (parts["transformer_ms"] - parts["feast_ms"] - parts["triton_ms"]
                                        - parts["retrieval_ms"])
    return parts


#: issue 18's targets: ratios to the floors (8 clients unless said) and absolute figures at MicroLens-100K scale
TARGETS = {"rps_vs_bare": 0.6, "rps_vs_two_hop": 0.9, "p99_vs_bare": 2.5, "one_client_p50_vs_bare": 3.0,
           "rps": 600.0, "one_client_p50_ms": 3.5}


def verdict(figures: dict[str, dict[str, float]]) -> dict[str, Any]:
    a, b, c = figures["linkedout"], figures["bare_kserve"], figures["two_hop"]
    ratios = {"rps_vs_bare": a["rps"] / b["rps"], "rps_vs_two_hop": a["rps"] / c["rps"],
              "p99_vs_bare": a["p99_ms"] / b["p99_ms"], "p99_vs_two_hop": a["p99_ms"] / c["p99_ms"],
              "one_client_p50_vs_bare": a["one_client_p50_ms"] / b["one_client_p50_ms"],
              "one_client_p50_vs_two_hop": a["one_client_p50_ms"] / c["one_client_p50_ms"]}
    # the most requests/s the stack's CPU per request (its servers' and the client's) allows if every
    # process could use every core: what parallelism alone could reach, against the floors' measured figures
    ceiling = 1000.0 * (os.cpu_count() or 1) / (a["server_cpu_ms_per_request"] + a["client_cpu_ms_per_request"])
    ratios.update({"cpu_ceiling_rps": ceiling, "cpu_ceiling_vs_bare": ceiling / b["rps"],
                   "cpu_ceiling_vs_two_hop": ceiling / c["rps"]})
    # ... and what the KServe process the client calls allows on one core: its threads' Python takes turns
    # on one GIL (bench/profile_serve.py: 90 % of the transformer's GIL samples on its event loop)
    front = 1000.0 / a["front_server_cpu_ms_per_request"]
    ratios.update({"front_process_rps": front, "front_process_vs_two_hop": front / c["rps"]})
    met = {"rps_vs_bare": ratios["rps_vs_bare"] >= TARGETS["rps_vs_bare"],
           "rps_vs_two_hop": ratios["rps_vs_two_hop"] >= TARGETS["rps_vs_two_hop"],
           "p99_vs_bare": ratios["p99_vs_bare"] <= TARGETS["p99_vs_bare"],
           "one_client_p50_vs_bare": ratios["one_client_p50_vs_bare"] <= TARGETS["one_client_p50_vs_bare"],
           "rps": a["rps"] >= TARGETS["rps"], "one_client_p50_ms": a["one_client_p50_ms"] <= TARGETS["one_client_p50_ms"]}
    return {"ratios": ratios, "met": met}


def add_stack_args(p: argparse.ArgumentParser) -> None:
    """The flags of what ``build_for`` builds and the stack it serves (this bench's and profile_serve.py's):
    ``--workdir`` (then ``args.workdir or default_workdir(args.online_store)``), ``--videos``,
    ``--users``, ``--online-store``, ``--event-loop``."""
    p.add_argument("--workdir", type=Path, default=None,
                   help="default runs/bench-serve (SQLite), runs/bench-serve-redis (--online-store redis)")
    p.add_argument("--videos", type=int, default=19_738)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite",
                   help="the transformer's Feast online store: the local default's SQLite file, or production's "
                        "Redis (a redis-server this bench starts on 127.0.0.1, read with Feast's asyncio client)")
    p.add_argument("--event-loop", dest="event_loop", choices=EVENT_LOOPS, default="auto",
                   help="every server's event loop (KServe's --event-loop; auto: uvloop where installed)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stack_args(p)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=1000, help="requests per single-client run")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per throughput run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--prefer", choices=("triton", "kserve"), default="triton")
    p.add_argument("--out", type=Path, default=None,
                   help="default bench/results/serve.json (serve_redis.json with --online-store redis)")
    args = p.parse_args()
    redis = args.online_store == "redis"
    args.workdir = args.workdir or default_workdir(args.online_store)
    args.out = args.out or ROOT / "bench" / "results" / ("serve_redis.json" if redis else "serve.json")
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")
    sys.path.insert(0, str(ROOT / "bench"))

    from linkedout.utils import configure_logging

    configure_logging("WARNING")
    with contextlib.ExitStack() as servers:
        built, store_pid = build_for(args, servers)
        results = run(args, built, store_pid=store_pid)
    results["setup"]["online_store"] = args.online_store
    report(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace, built: dict[str, Any], store_pid: int | None = None) -> dict[str, Any]:
    """The stack and the floors started, measured interleaved, stopped; the figures (``store_pid``: a
    server of the stack's own, the redis-server, whose CPU counts as the stack's)."""
    from linkedout.serving.local import LocalStack, StackSettings

    rng = np.random.default_rng(42)
    results: dict[str, Any] = {"setup": {**built, "runs": args.runs, "requests_per_run": args.requests,
                                         "throughput_seconds": args.seconds, "clients": args.clients,
                                         "event_loop": args.event_loop, **host_state()}}
    stack = LocalStack(StackSettings(workdir=args.workdir, prefer=args.prefer, event_loop=args.event_loop))
    t0 = time.perf_counter()
    stack.start()
    results["setup"]["stack_start_s"] = time.perf_counter() - t0
    results["setup"]["model_server"] = stack.info["model_server"]["kind"]
    triton_url = stack.info["model_server"]["grpc"].split("://")[-1]
    urls = {"linkedout": stack.info["transformer"]["grpc"]}
    pids = {"linkedout": [stack.info["transformer"]["pid"], stack.info["model_server"]["pid"],
                          *([store_pid] if store_pid else [])]}
    floors: dict[str, Floor] = {}
    identity_triton = None
    print(f"stack up in {results['setup']['stack_start_s']:.1f} s ({results['setup']['model_server']})", flush=True)
    try:
        floors, identity_triton = start_floors(args.workdir, args.event_loop)
        urls.update({name: f.url for name, f in floors.items()})
        pids.update({"bare_kserve": [floors["bare_kserve"].proc.pid],
                     "two_hop": [floors["two_hop"].proc.pid, identity_triton.pid]})
        for url in urls.values():
            warm_up(url, args.users, rng)
        per_run: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        for r in range(args.runs):  # interleaved: drifts in the machine's load hit all three alike
            for name, url in urls.items():
                per_run[name].append(measure(url, pids[name], args, rng, seed=r, metrics_url=(
                    stack.info["transformer"]["metrics"] if name == "linkedout" else None)))
                m = per_run[name][-1]
                print(f"  run {r + 1} {name:>11}: 1 client p50 {m['one_client_p50_ms']:.2f} ms p99 "
                      f"{m['one_client_p99_ms']:.2f} ms | {args.clients} clients {m['rps']:.0f} req/s "
                      f"p50 {m['p50_ms']:.2f} ms p99 {m['p99_ms']:.2f} ms | CPU per request: server "
                      f"{m['server_cpu_ms_per_request']:.2f} ms, client {m['client_cpu_ms_per_request']:.2f} ms",
                      flush=True)
        figures = {name: {k: med([run[k] for run in runs]) for k in runs[0]} for name, runs in per_run.items()}
        results["figures"] = figures
        results["per_run"] = per_run
        results["per_run_ratios"] = [verdict({n: per_run[n][r] for n in per_run})["ratios"] for r in range(args.runs)]
        results["where_the_time_goes_ms"] = where_time_goes(urls["linkedout"], stack.info["transformer"]["metrics"],
                                                            args, rng)
        pred = [pct(predictor_alone(triton_url, args.videos, args.requests, rng), 50) for _ in range(args.runs)]
        feast = [pct(feast_alone(args.workdir / "feast", args.users, args.requests, rng), 50) for _ in range(args.runs)]
        results["predictor_alone"] = {"p50_ms": med(pred)}
        results["feast_alone"] = {"p50_ms": med(feast)}
    finally:
        for f in floors.values():
            f.stop()
        if identity_triton is not None:
            identity_triton.stop()
        stack.stop()
    results["targets"] = {**TARGETS, **verdict(results["figures"])}
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    f = results["figures"]
    t = results["targets"]
    w = results["where_the_time_goes_ms"]
    print(f"\n== serving at {args.videos:,} videos, {args.users:,} users ({results['setup']['model_server']}, "
          f"Feast online store {args.online_store}, "
          f"{os.cpu_count()} CPUs, no GPU; medians of {args.runs} interleaved runs; {args.clients} clients for "
          f"{args.seconds:.0f} s, {args.requests} one-client requests per run)")
    print(f"{'':>12} {'1 client p50':>13} {'p99':>8} {'req/s':>8} {'p50':>8} {'p99':>8} {'CPU/req server':>15} "
          f"{'client':>7}")
    for name in ("linkedout", "bare_kserve", "two_hop"):
        m = f[name]
        print(f"{name:>12} {m['one_client_p50_ms']:>10.2f} ms {m['one_client_p99_ms']:>5.2f} ms {m['rps']:>8.0f} "
              f"{m['p50_ms']:>5.2f} ms {m['p99_ms']:>5.2f} ms {m['server_cpu_ms_per_request']:>12.2f} ms "
              f"{m['client_cpu_ms_per_request']:>4.2f} ms")
    failed = {n: sum(r.get("failed_requests", 0.0) for r in results["per_run"][n]) for n in f}
    print("requests failed under load (all runs): " + ", ".join(f"{n} {v:.0f}" for n, v in failed.items()))
    a = f["linkedout"]
    print("of the servers' CPU per request, the KServe process the client calls: " + ", ".join(
        f"{n} {f[n]['front_server_cpu_ms_per_request']:.2f} ms" for n in ("linkedout", "bare_kserve", "two_hop")))
    print(f"under load, requests per call: {a['requests_per_triton_call']:.2f} per Triton call, "
          f"{a['requests_per_feast_call']:.2f} per Feast read")
    r = t["ratios"]
    print(f"ratios: throughput {r['rps_vs_bare']:.2f}x bare (target >= {TARGETS['rps_vs_bare']}), "
          f"{r['rps_vs_two_hop']:.2f}x two-hop (>= {TARGETS['rps_vs_two_hop']}); p99 {r['p99_vs_bare']:.2f}x bare "
          f"(<= {TARGETS['p99_vs_bare']}); one-client p50 {r['one_client_p50_vs_bare']:.2f}x bare "
          f"(<= {TARGETS['one_client_p50_vs_bare']})")
    print(f"the stack's CPU per request (servers and client) allows at most {r['cpu_ceiling_rps']:.0f} req/s on "
          f"{os.cpu_count()} CPUs if every process used every core: {r['cpu_ceiling_vs_bare']:.2f}x bare, "
          f"{r['cpu_ceiling_vs_two_hop']:.2f}x two-hop as measured; the KServe process the client calls, on one core "
          f"(one GIL), at most {r['front_process_rps']:.0f} req/s ({r['front_process_vs_two_hop']:.2f}x two-hop)")
    print(f"predictor alone p50 {results['predictor_alone']['p50_ms']:.2f} ms; feast alone p50 "
          f"{results['feast_alone']['p50_ms']:.3f} ms")
    print(f"where one client's {w['client_mean_ms']:.2f} ms (mean) go: Feast {w['feast_ms']:.2f}, Triton call "
          f"{w['triton_ms']:.2f}, retrieval {w['retrieval_ms']:.2f}, transformer's own code {w['transformer_own_code_ms']:.2f}, KServe gRPC hop + client "
          f"{w['kserve_hop_and_client_ms']:.2f}")
    print("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in t["met"].items()))


if __name__ == "__main__":
    sys.exit(main())
