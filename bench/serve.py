"""Serving latency and throughput at MicroLens-100K scale, through the real local stack.

    python bench/serve.py [--videos 19738] [--users 100000] [--runs 5] [--requests 1000] [--seconds 10]

Builds, in ``--workdir`` (default ``runs/bench-serve``): the embedded default's ranker (the model
``linkedout run`` serves, random weights: latency does not depend on them) over a catalogue of
``--videos`` videos, and a Feast store (SQLite) with ``--users`` users holding a 10-video history each.
Starts the local stack (the real ``tritonserver`` + the KServe transformer, on loopback) and measures,
``--runs`` times each (medians of the per-run figures are reported):

- end to end, one client: p50 / p99 of a ``tritonclient.grpc`` request for one user (a Feast read,
  the Triton ranker, the answer);
- throughput with 8 concurrent clients (``tritonclient.grpc.aio``, 8 requests in flight) for
  ``--seconds`` seconds: requests/s, and p50 / p99 under that load;
- the predictor alone: the same ranker called on Triton directly;
- Feast alone: the transformer's history read for one user, in process;
- the ranker alone (onnxruntime in process, 1 user and 8 users) at catalogue sizes 20 k, 100 k and
  1 M (the same graph with a bigger table: ``swap_catalog_table``);
- where the time goes: the transformer's own Prometheus histograms (Feast read, Triton call, whole
  request inside the transformer), the rest being the client and KServe's gRPC hop.

Prints the targets (end to end p50 <= 4 ms, p99 <= 12 ms, >= 300 requests/s) and the paper's
5.964 ms per query on one H100 beside the figures, and writes ``bench/results/serve.json``. Every
server listens on 127.0.0.1; every load loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_MS = 5.964
TARGETS = {"p50_ms": 4.0, "p99_ms": 12.0, "rps": 300.0}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def med(values: list[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------------------------- setup


def build(workdir: Path, videos: int, users: int, seed: int = 0) -> dict[str, Any]:
    """The model repository (encoder-less: only the ranker is on the request path) and the Feast store."""
    import pandas as pd
    import torch

    from linkedout.export import Catalog, ExportConfig, ModelRepository, export_ranker
    from linkedout.featurestore import FeastSettings, apply, open_repo, render_repo, write_histories
    from linkedout.job.defaults import default_model_config
    from linkedout.model import build_model

    repo_dir = workdir / "model_repository"
    feast_dir = workdir / "feast"
    stamp = workdir / "built.json"
    want = {"videos": videos, "users": users, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        print(f"reusing {workdir} ({videos:,} videos, {users:,} users)", flush=True)
        return want
    import shutil

    for d in (repo_dir, feast_dir):
        shutil.rmtree(d, ignore_errors=True)
    rng = np.random.default_rng(seed)
    cfg = default_model_config()
    torch.manual_seed(seed)
    model = build_model(cfg, videos, np.ones(videos + 1, dtype=np.int64)).eval()
    ids = np.arange(1, videos + 1, dtype=np.int64) * 7 + 100_000  # arbitrary, not row numbers
    emb = rng.standard_normal((videos, cfg.d_model)).astype(np.float32) * 0.1
    n_layers = cfg.fusion.num_layers
    gate = rng.dirichlet(np.ones(n_layers), size=videos).astype(np.float32)
    catalog = Catalog(ids=ids, embeddings=emb, gate=gate, contributions=gate,
                      popularity=rng.zipf(1.3, size=videos).clip(0, 10**6),
                      published=1_700_000_000_000 + rng.integers(0, 86_400_000 * 90, size=videos),
                      layers=[f"L{4 * i}" for i in range(n_layers)])
    t0 = time.perf_counter()
    export_ranker(model, catalog, ModelRepository(repo_dir), ExportConfig(name="linkedout"))
    print(f"ranker over {videos:,} videos exported in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    render_repo(feast_dir, FeastSettings(environment="local"))
    frepo = open_repo(feast_dir)
    apply(frepo)
    watched = [ids[rng.integers(0, videos, size=10)] for _ in range(users)]
    last = 1_710_000_000_000 + rng.integers(0, 86_400_000, size=users)
    histories = pd.DataFrame({"user_id": [str(u) for u in range(users)], "watched": watched,
                              "last_watch": last.astype(np.int64),
                              "event_timestamp": pd.to_datetime(last, unit="ms", utc=True)})
    write_histories(frepo, histories, check_newer=False)
    print(f"feast: {users:,} histories written in {time.perf_counter() - t0:.1f} s", flush=True)
    stamp.write_text(json.dumps(want))
    return want


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


async def _concurrent(url: str, users: int, clients: int, seconds: float, seed: int) -> tuple[int, float, list[float]]:
    import tritonclient.grpc.aio as ga

    rng = np.random.default_rng(seed)
    client = ga.InferenceServerClient(url)
    k = ga.InferInput("k", [1], "INT64")
    k.set_data_from_numpy(np.array([10], dtype=np.int64))
    times: list[float] = []
    stop = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            uid = ga.InferInput("user_id", [1], "INT64")
            uid.set_data_from_numpy(np.array([rng.integers(0, users)], dtype=np.int64))
            t0 = time.perf_counter()
            await client.infer("linkedout", [uid, k])
            times.append((time.perf_counter() - t0) * 1000)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return done, elapsed, times


def predictor_alone(url: str, videos: int, n: int, rng: np.random.Generator) -> list[float]:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    hist = g.InferInput("history", [1, 10], "INT64")
    out = [g.InferRequestedOutput("rows"), g.InferRequestedOutput("scores")]
    times = []
    for _ in range(n):
        hist.set_data_from_numpy(rng.integers(1, videos + 1, size=(1, 10)).astype(np.int64))
        t0 = time.perf_counter()
        client.infer("linkedout_ranker", [hist], outputs=out)
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


def ranker_sizes(repo_dir: Path, sizes: list[int], n: int, runs: int) -> dict[str, Any]:
    """onnxruntime in process: the served ranker graph with tables of each size."""
    import onnx
    import onnxruntime as ort

    from linkedout.export import Catalog
    from linkedout.export.update import swap_catalog_table

    base = repo_dir / "linkedout_ranker" / "1"
    out: dict[str, Any] = {}
    rng = np.random.default_rng(3)
    for size in sizes:
        d = 64
        cat = Catalog(ids=np.arange(size), embeddings=rng.standard_normal((size, d)).astype(np.float32) * 0.1,
                      gate=np.zeros((size, 0)), contributions=np.zeros((size, 0)),
                      popularity=np.zeros(size), published=np.zeros(size))
        proto = swap_catalog_table(onnx.load(str(base / "model.onnx")), cat)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 3
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        del proto
        row: dict[str, Any] = {}
        for batch in (1, 8):
            p50s = []
            for _ in range(runs):
                times = []
                for _ in range(n):
                    h = rng.integers(1, size + 1, size=(batch, 10)).astype(np.int64)
                    t0 = time.perf_counter()
                    sess.run(["rows", "scores"], {"history": h})
                    times.append((time.perf_counter() - t0) * 1000)
                p50s.append(pct(times, 50))
            row[f"batch{batch}_p50_ms"] = med(p50s)
        out[str(size)] = row
        print(f"  ranker alone, {size:>9,} videos: 1 user {row['batch1_p50_ms']:.2f} ms, "
              f"8 users {row['batch8_p50_ms']:.2f} ms (p50, onnxruntime, 2 threads)", flush=True)
        del sess
    return out


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the transformer's latency histograms."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for name in ("linkedout_request_latency_seconds", "linkedout_feast_latency_seconds",
                 "linkedout_triton_latency_seconds"):
        for kind in ("sum", "count"):
            vals = [float(m.group(1)) for m in re.finditer(rf"^{name}_{kind}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)]
            out[f"{name}_{kind}"] = sum(vals)
    return out


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-serve")
    p.add_argument("--videos", type=int, default=19_738)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--requests", type=int, default=1000, help="requests per single-client run")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per throughput run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--sizes", default="20000,100000,1000000", help="catalogue sizes for the ranker alone")
    p.add_argument("--prefer", choices=("triton", "kserve"), default="triton")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = p.parse_args()
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")

    from linkedout.serving.local import LocalStack, StackSettings
    from linkedout.utils import configure_logging

    configure_logging("WARNING")
    built = build(args.workdir, args.videos, args.users)
    rng = np.random.default_rng(42)
    results: dict[str, Any] = {"setup": {**built, "runs": args.runs, "requests_per_run": args.requests,
                                         "throughput_seconds": args.seconds, "clients": args.clients,
                                         "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}}
    stack = LocalStack(StackSettings(workdir=args.workdir, prefer=args.prefer))
    t0 = time.perf_counter()
    stack.start()
    results["setup"]["stack_start_s"] = time.perf_counter() - t0
    results["setup"]["model_server"] = stack.info["model_server"]["kind"]
    url = stack.info["transformer"]["grpc"]
    metrics_url = stack.info["transformer"]["metrics"]
    triton_url = stack.info["model_server"]["grpc"].split("://")[-1]
    print(f"stack up in {results['setup']['stack_start_s']:.1f} s ({results['setup']['model_server']})", flush=True)
    try:
        one_client(url, args.users, 200, rng)  # warm-up: connections, catalogue, caches
        e2e = {"p50": [], "p99": []}
        breakdown = []
        for r in range(args.runs):
            before = scrape(metrics_url)
            times = one_client(url, args.users, args.requests, rng)
            after = scrape(metrics_url)
            e2e["p50"].append(pct(times, 50))
            e2e["p99"].append(pct(times, 99))
            d = {k: after[k] - before[k] for k in after}
            n = max(1.0, d["linkedout_request_latency_seconds_count"])
            breakdown.append({
                "transformer_ms": 1000 * d["linkedout_request_latency_seconds_sum"] / n,
                "feast_ms": 1000 * d["linkedout_feast_latency_seconds_sum"] / max(1.0, d["linkedout_feast_latency_seconds_count"]),
                "triton_ms": 1000 * d["linkedout_triton_latency_seconds_sum"] / max(1.0, d["linkedout_triton_latency_seconds_count"]),
                "client_mean_ms": float(np.mean(times)),
            })
            print(f"  run {r + 1}: end to end p50 {e2e['p50'][-1]:.2f} ms, p99 {e2e['p99'][-1]:.2f} ms", flush=True)
        parts = {k: med([b[k] for b in breakdown]) for k in breakdown[0]}
        parts["kserve_hop_and_client_ms"] = parts["client_mean_ms"] - parts["transformer_ms"]
        parts["transformer_own_code_ms"] = parts["transformer_ms"] - parts["feast_ms"] - parts["triton_ms"]
        results["end_to_end_one_client"] = {"p50_ms": med(e2e["p50"]), "p99_ms": med(e2e["p99"]),
                                            "per_run_p50_ms": e2e["p50"], "per_run_p99_ms": e2e["p99"]}
        results["where_the_time_goes_ms"] = parts

        thr = {"rps": [], "p50": [], "p99": []}
        for r in range(args.runs):
            done, elapsed, times = asyncio.run(_concurrent(url, args.users, args.clients, args.seconds, seed=r))
            thr["rps"].append(done / elapsed)
            thr["p50"].append(pct(times, 50))
            thr["p99"].append(pct(times, 99))
            print(f"  run {r + 1}: {args.clients} clients {thr['rps'][-1]:.0f} requests/s "
                  f"(p50 {thr['p50'][-1]:.2f} ms, p99 {thr['p99'][-1]:.2f} ms)", flush=True)
        results["throughput"] = {"clients": args.clients, "requests_per_s": med(thr["rps"]),
                                 "p50_ms": med(thr["p50"]), "p99_ms": med(thr["p99"]), "per_run_rps": thr["rps"]}

        pred = {"p50": [], "p99": []}
        feast = {"p50": [], "p99": []}
        for _ in range(args.runs):
            times = predictor_alone(triton_url, args.videos, args.requests, rng)
            pred["p50"].append(pct(times, 50))
            pred["p99"].append(pct(times, 99))
            times = feast_alone(args.workdir / "feast", args.users, args.requests, rng)
            feast["p50"].append(pct(times, 50))
            feast["p99"].append(pct(times, 99))
        results["predictor_alone"] = {"p50_ms": med(pred["p50"]), "p99_ms": med(pred["p99"])}
        results["feast_alone"] = {"p50_ms": med(feast["p50"]), "p99_ms": med(feast["p99"])}
    finally:
        stack.stop()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results["ranker_alone"] = ranker_sizes(args.workdir / "model_repository", sizes, n=200, runs=min(args.runs, 3))

    e = results["end_to_end_one_client"]
    t = results["throughput"]
    w = results["where_the_time_goes_ms"]
    verdict = {"p50": e["p50_ms"] <= TARGETS["p50_ms"], "p99": e["p99_ms"] <= TARGETS["p99_ms"],
               "rps": t["requests_per_s"] >= TARGETS["rps"]}
    results["targets"] = {**TARGETS, "met": verdict, "paper_ms_per_query_h100": PAPER_MS}
    print(f"\n== serving at {args.videos:,} videos, {args.users:,} users ({results['setup']['model_server']}, "
          f"{os.cpu_count()} CPUs, no GPU; medians of {args.runs} runs)")
    print(f"end to end, 1 client:  p50 {e['p50_ms']:.2f} ms (target <= 4)  p99 {e['p99_ms']:.2f} ms (target <= 12)  "
          f"[paper: {PAPER_MS} ms per query on one H100]")
    print(f"{args.clients} clients:             {t['requests_per_s']:.0f} requests/s (target >= 300)  "
          f"p50 {t['p50_ms']:.2f} ms  p99 {t['p99_ms']:.2f} ms")
    print(f"predictor alone:       p50 {results['predictor_alone']['p50_ms']:.2f} ms  p99 {results['predictor_alone']['p99_ms']:.2f} ms")
    print(f"feast alone:           p50 {results['feast_alone']['p50_ms']:.3f} ms  p99 {results['feast_alone']['p99_ms']:.3f} ms")
    print(f"where a request's {w['client_mean_ms']:.2f} ms (mean) go: Feast {w['feast_ms']:.2f}, Triton call "
          f"{w['triton_ms']:.2f}, transformer's own code {w['transformer_own_code_ms']:.2f}, KServe gRPC hop + client "
          f"{w['kserve_hop_and_client_ms']:.2f}")
    print("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in verdict.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
