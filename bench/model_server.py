"""Benchmark one ranker query: local Triton vs the KServe fallback predictor vs onnxruntime in-process.

A ranker-shaped ONNX model (docs/serving.md §1: an item table of ``--items`` x ``--dim`` as an
initializer, ``history`` INT64 ``[1, 10]`` -> top ``--k`` ``rows`` and ``scores``) is served
from one production-style model repository by

- the local Triton (``tritonserver`` 2.51 of nvidia-pytriton, the generated Python-backend model
  running the ONNX file with onnxruntime), queried with ``tritonclient.grpc``;
- the KServe fallback predictor (``python -m linkedout.serving.local.predictor``), same client;
- onnxruntime in this process (the floor: no RPC, no server).

One client, sequential requests: ``--requests`` timed requests per run after ``--warmup``, the three
interleaved run by run (``--repeats`` runs), so drifts in machine load hit them alike. Reported:
the median over runs of each run's p50 and p99, in ms, plus start-up times. onnxruntime gets
``--threads`` intra-op threads everywhere.

    nice -n 10 python bench/triton.py                 # MicroLens-100K catalogue: 19,738 x 64, top 100

Writes ``bench/results/triton.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from linkedout.serving.local.model_server import LocalPredictor
from linkedout.serving.local.triton import LocalTriton
from linkedout.serving.local.triton_repo import LocalRepository

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import serving_toy as toy  # the toy models live with the tests

MODEL = "bench_ranker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=19_738, help="catalogue size (MicroLens-100K: 19,738)")
    p.add_argument("--dim", type=int, default=64, help="item embedding size")
    p.add_argument("--k", type=int, default=100, help="top-K returned")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (all three)")
    p.add_argument("--requests", type=int, default=400, help="timed requests per run")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5, help="runs per contender (medians reported)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "triton.json")
    return p.parse_args(argv)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def time_calls(call: Callable[[], Any], requests: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def grpc_call(url: str, history: np.ndarray, check: np.ndarray) -> Callable[[], Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("history", list(history.shape), "INT64")
    tensor.set_data_from_numpy(history)
    outputs = [grpcclient.InferRequestedOutput("rows"), grpcclient.InferRequestedOutput("scores")]
    first = client.infer(MODEL, [tensor], outputs=outputs, client_timeout=30)
    if not np.array_equal(first.as_numpy("rows"), check):
        raise AssertionError(f"{url} answered other rows than onnxruntime in-process")
    return lambda: client.infer(MODEL, [tensor], outputs=outputs, client_timeout=30)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    history = np.random.default_rng(0).integers(1, args.items + 1, size=(1, 10)).astype(np.int64)  # (1, T)
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        root = Path(tmp)
        repo = root / "model_repository"
        toy.write_model(repo, MODEL, toy.ranker_config(MODEL, k=args.k))
        toy.publish_version(repo / MODEL, 1, lambda p: toy.export_ranker(p, num_items=args.items, dim=args.dim,
                                                                          k=args.k, seed=0))
        onnx_path = repo / MODEL / "1" / "model.onnx"
        onnx_mb = onnx_path.stat().st_size / 1e6
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        reference = session.run(["rows"], {"history": history})[0]

        t0 = time.perf_counter()
        triton = LocalTriton(LocalRepository(repo, root / "triton_repository", threads=args.threads),
                             models=[MODEL], log_path=root / "triton.log").start()
        triton_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        predictor = LocalPredictor(repo, models=[MODEL], threads=args.threads, poll_interval=0,
                                   log_path=root / "predictor.log").start()
        predictor_start = time.perf_counter() - t0
        try:
            contenders: dict[str, Callable[[], Any]] = {
                "onnxruntime_in_process": lambda: session.run(None, {"history": history}),
                "triton_grpc": grpc_call(triton.grpc_url, history, reference),
                "kserve_predictor_grpc": grpc_call(predictor.grpc_url, history, reference),
            }
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
            for _ in range(args.repeats):
                for name, call in contenders.items():
                    runs[name].append(percentiles(time_calls(call, args.requests, args.warmup)))
        finally:
            triton.stop()
            predictor.stop()

    results = {name: {"p50_ms": statistics.median(r["p50"] for r in rs),
                      "p99_ms": statistics.median(r["p99"] for r in rs),
                      "mean_ms": statistics.median(r["mean"] for r in rs), "runs": rs}
               for name, rs in runs.items()}
    report: dict[str, Any] = {
        "model": {"items": args.items, "dim": args.dim, "k": args.k, "history": 10,
                  "onnx_mb": onnx_mb, "threads": args.threads},
        "requests_per_run": args.requests, "repeats": args.repeats, "warmup": args.warmup,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average": os.getloadavg()},
        "startup_s": {"triton": triton_start, "kserve_predictor": predictor_start},
        "triton_version": "2.51.0",
        "results": results,
    }
    print(f"ranker {args.items:,} x {args.dim} -> top {args.k}, history [1, 10], onnxruntime {args.threads} "
          f"threads; {args.repeats} runs x {args.requests} requests, one client (load average "
          f"{report['machine']['load_average'][0]:.1f} on {os.cpu_count()} CPUs)")
    for name, r in results.items():
        print(f"  {name:24s} p50 {r['p50_ms']:7.3f} ms   p99 {r['p99_ms']:7.3f} ms")
    base = results["onnxruntime_in_process"]["p50_ms"]
    print(f"  serving overhead over in-process p50: Triton {results['triton_grpc']['p50_ms'] - base:+.3f} ms, "
          f"KServe predictor {results['kserve_predictor_grpc']['p50_ms'] - base:+.3f} ms")
    print(f"  start-up: Triton {triton_start:.1f} s (sync + validate + start + load), "
          f"KServe predictor {predictor_start:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
