"""The transformer's recommendation logic alone: CPU per request with no server and no Triton hop.

    python bench/engine.py [--runs 3] [--requests 3200] [--clients 8] [--online-store sqlite|redis]

Over ``bench/serve.py``'s work directory (built or reused: 19,738 videos, 100,000 users by default),
runs the ``RecommendationEngine`` in this process on the event loop the transformer uses
(``--event-loop``), with the real Feast history reader (its SQLite file or Redis store) and the
request log on, and the ranker run in-process by onnxruntime over the same ``model.onnx`` Triton
serves (``tests/test_serving.py``'s ``OnnxRanker``). ``--clients`` concurrent callers send
``--requests`` one-user requests in all. Prints, per run and as medians: requests/s, this process's
CPU per request, and users per ranker call; writes ``bench/results/engine.json``.

Set beside ``bench/serve.py``'s ``front_server_cpu_ms_per_request`` (the transformer process), the
difference is what KServe's request path, the gRPC call to Triton and the v2 conversions cost on
top of this project's logic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from serve import add_stack_args, build_for, default_workdir, host_state  # noqa: E402


async def one_run(workdir: Path, users: int, requests: int, clients: int, log_path: Path,
                  seed: int) -> dict[str, float]:
    from test_serving import OnnxRanker  # the in-process ranker the engine's tests use

    from linkedout.featurestore.online import HistoryReader
    from linkedout.serving.catalog import ServedCatalogs
    from linkedout.serving.engine import RecommendationEngine
    from linkedout.serving.request import RecRequest
    from linkedout.serving.request_log import RequestLog
    from linkedout.serving.routing import Router

    repo = workdir / "model_repository"
    histories = HistoryReader(str(workdir / "feast"))
    histories.get(["warm-up"])
    ranker = OnnxRanker(repo)
    calls = 0

    async def counted(*a: Any) -> np.ndarray:
        nonlocal calls
        calls += 1
        return await ranker(*a)

    engine = RecommendationEngine(router=Router(None, "linkedout"), catalogs=ServedCatalogs(str(repo)),
                                  ranker=counted, histories=histories, request_log=RequestLog(log_path),
                                  retrieval_threads=1)  # the transformer's --retrieval_threads default

    async def ready(model: str, version: int) -> bool:
        return True

    await engine.update_served_versions(ready)
    rng = np.random.default_rng(seed)

    async def caller(n: int) -> None:
        for _ in range(n):
            await engine.recommend(RecRequest([str(int(rng.integers(0, users)))], 10, None, False))

    await asyncio.gather(*[caller(50) for _ in range(clients)])  # warm: caches, threads, first calls
    calls = 0
    per = max(1, requests // clients)
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*[caller(per) for _ in range(clients)])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    engine.close()
    done = per * clients
    return {"requests": done, "requests_per_s": done / elapsed, "cpu_ms_per_request": 1000 * cpu / done,
            "requests_per_ranker_call": done / max(1, calls)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stack_args(p)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=3200, help="requests per run, over all callers")
    p.add_argument("--clients", type=int, default=8, help="concurrent callers")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    args = p.parse_args()
    args.workdir = args.workdir or default_workdir(args.online_store)
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")

    from linkedout.serving.kserve_server import event_loop_factory
    from linkedout.utils import configure_logging

    configure_logging("WARNING")
    runs = []
    with contextlib.ExitStack() as servers, tempfile.TemporaryDirectory() as tmp:
        built, _ = build_for(args, servers)
        for r in range(args.runs):
            with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
                runs.append(runner.run(one_run(args.workdir, args.users, args.requests, args.clients,
                                               Path(tmp) / f"requests-{r}.jsonl", seed=r)))
            m = runs[-1]
            print(f"run {r + 1}/{args.runs}: {m['requests_per_s']:.0f} requests/s, {m['cpu_ms_per_request']:.3f} ms "
                  f"CPU per request, {m['requests_per_ranker_call']:.1f} requests per ranker call", flush=True)
    medians = {k: float(statistics.median(run[k] for run in runs)) for k in runs[0]}
    print(f"medians of {args.runs} runs ({built['videos']:,} videos, {built['users']:,} users, Feast "
          f"{args.online_store}, {args.clients} callers): {medians['requests_per_s']:.0f} requests/s, "
          f"{medians['cpu_ms_per_request']:.3f} ms CPU per request")
    result = {"setup": {**built, "online_store": args.online_store, "event_loop": args.event_loop, "runs": args.runs,
                        "requests_per_run": args.requests, "clients": args.clients, **host_state()},
              "figures": medians, "per_run": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
