"""Benchmark LinkedOut's Feast repository at MicroLens-100K scale, on SQLite and on Redis.

100,000 users with a 10-id history and 19,738 videos (d = 64, L = 6), random ids. For each online
store (SQLite; Redis when ``redis-server`` is installed, started on a free loopback port with no
persistence) and each of ``--repeats`` fresh repositories:

- ``apply``: registering the definitions and a FeatureService (in-process ``apply``);
- ``write``: ``write_histories`` (direct path: ``write_to_online_store`` in batches, with the
  newer-than-online check, then again without it: ``check_newer=False``) and ``write_videos``
  (meta + embeddings of one model version);
- ``materialize``: the same data written offline only, then ``materialize`` from the parquet files;
- online latency of ``HistoryReader.get`` and of Feast's own ``get_online_features`` for 1 user
  and for 64 users: p50/p99 over ``--calls`` random calls; on SQLite also of a reader without its
  held pages (``sqlite_cache_mb=0``) with the bytes its reads take from the file (Linux's rchar);
- the transformer's read under concurrency: 8 coroutines reading 2 users each for ``--seconds``,
  reads/s and this process's CPU per read, through ``HistoryReader.get`` on a pool of 4 threads and,
  on Redis, through ``HistoryReader.get_async`` on the event loop.

Medians over the repeats. ``--cli`` also times ``feast -c DIR apply`` in a fresh process (Feast's
import included), the figure DESIGN.md §2 quotes (13 s). Writes ``bench/results/feast.json``.

    python bench/feature_store.py                     # both stores, 3 repeats
    python bench/feature_store.py --stores sqlite --repeats 1 --users 20000
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import linkedout.featurestore as lf
from linkedout.featurestore.local_redis import LocalRedis, redis_server_binary

_HERE = Path(__file__).resolve().parent
PAPER_MS = 5.964  # the paper's end-to-end latency per query on one H100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--videos", type=int, default=19_738)
    p.add_argument("--dim", type=int, default=64, help="embedding width d")
    p.add_argument("--layers", type=int, default=6, help="gate width L")
    p.add_argument("--repeats", type=int, default=3, help="fresh repositories per store (medians reported)")
    p.add_argument("--calls", type=int, default=2000, help="timed online calls per batch size")
    p.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis")
    p.add_argument("--cli", action="store_true", help="also time `feast -c DIR apply` in a fresh process")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of each concurrent-read measure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=_HERE / "results" / "feast.json")
    return p.parse_args(argv)


def make_data(args: argparse.Namespace) -> tuple[pd.DataFrame, lf.Videos]:
    rng = np.random.default_rng(args.seed)
    now_ms = int(time.time() * 1000)
    histories = pd.DataFrame({
        "user_id": [str(u) for u in range(args.users)],
        "watched": list(rng.integers(0, args.videos, size=(args.users, 10), dtype=np.int64)),
        "last_watch": now_ms - rng.integers(0, 86_400_000, size=args.users),
    })
    histories["event_timestamp"] = pd.to_datetime(histories["last_watch"], unit="ms", utc=True)
    gate = rng.dirichlet(np.ones(args.layers), size=args.videos).astype(np.float32)
    videos = lf.Videos(ids=np.arange(args.videos), embeddings=rng.normal(size=(args.videos, args.dim)).astype(np.float32),
                       gate=gate, contributions=gate, popularity=rng.integers(0, 1000, args.videos),
                       published=now_ms - rng.integers(0, 10**10, args.videos),
                       titles=tuple(f"video {i}" for i in range(args.videos)))
    return histories, videos


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def latency(fn: Callable[[list[str]], Any], users: int, batch: int, calls: int, seed: int) -> dict[str, float]:
    """p50/p99 (ms) of ``fn`` over ``calls`` random batches of ``batch`` users, after a warm-up."""
    rng = np.random.default_rng(seed)
    batches = [[str(u) for u in rng.integers(0, users, batch)] for _ in range(calls + 50)]
    for b in batches[:50]:
        fn(b)
    times = []
    for b in batches[50:]:
        t = time.perf_counter()
        fn(b)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def file_bytes_per_read(fn: Callable[[list[str]], Any], users: int, calls: int, seed: int) -> float:
    """Bytes this thread's read calls returned (Linux's rchar) per call of ``fn`` on 4 random users."""
    io = Path("/proc/thread-self/io")
    if not io.exists():
        return float("nan")
    rng = np.random.default_rng(seed)
    before = int(io.read_text().split()[1])
    for _ in range(calls):
        fn([str(u) for u in rng.integers(0, users, 4)])
    return (int(io.read_text().split()[1]) - before) / calls


def concurrent_reads(read: Callable[[list[str]], Any], users: int, seconds: float, seed: int,
                     clients: int = 8, batch: int = 2) -> dict[str, float]:
    """``clients`` coroutines awaiting ``read(users)`` for ``seconds``: reads/s and CPU (us) per read."""
    rng = np.random.default_rng(seed)

    async def run() -> tuple[int, float]:
        done = 0
        stop = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await read([str(u) for u in rng.integers(0, users, batch)])
                done += 1

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return done, time.perf_counter() - t

    cpu = time.process_time()
    done, elapsed = asyncio.run(run())
    return {"reads_per_s": done / elapsed, "cpu_us_per_read": 1e6 * (time.process_time() - cpu) / max(1, done)}


def settings_for(store: str, root: Path, redis: LocalRedis | None, project: str) -> lf.FeastSettings:
    if store == "sqlite":
        return lf.FeastSettings(project=project)
    assert redis is not None
    return lf.FeastSettings(environment="production", offline_root=str(root / "offline"),
                            registry=str(root / "repo" / "data" / "registry.db"), redis_address=redis.address,
                            project=project)


def one_round(store: str, root: Path, redis: LocalRedis | None, histories: pd.DataFrame, videos: lf.Videos,
              args: argparse.Namespace, i: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    repo = lf.open_repo(lf.render_repo(root / "repo", settings_for(store, root, redis, f"bench{i}")))
    out["apply_s"] = timed(lambda: lf.register_model_version(repo, "linkedout", 1))
    out["write_histories_s"] = timed(lambda: lf.write_histories(repo, histories))
    out["write_histories_unchecked_s"] = timed(lambda: lf.write_histories(repo, histories, check_newer=False))
    out["write_videos_s"] = timed(lambda: lf.write_videos(repo, videos, model_version="linkedout_v1"))
    reader = lf.HistoryReader(repo.path)
    assert reader.get(["0"]) == [list(histories["watched"].iloc[0])], "the benchmark's data did not land online"
    raw = reader.repo.store

    def feast_alone(users: list[str]) -> Any:
        return raw.get_online_features(["user_history:watched"], entity_rows={"user_id": users}).to_dict()

    for batch in (1, 64):
        calls = args.calls if batch == 1 else max(args.calls // 4, 100)
        out[f"reader_{batch}"] = latency(reader.get, args.users, batch, calls, args.seed + i)
        out[f"feast_{batch}"] = latency(feast_alone, args.users, batch, calls, args.seed + i)
    if store == "sqlite":  # the reader without its held pages: reads go to the file
        plain = lf.HistoryReader(repo.path, sqlite_cache_mb=0)
        out["reader_uncached_1"] = latency(plain.get, args.users, 1, args.calls, args.seed + i)
        out["file_bytes_per_read"] = {"held": file_bytes_per_read(reader.get, args.users, 500, args.seed),
                                      "uncached": file_bytes_per_read(plain.get, args.users, 500, args.seed)}
    pool = concurrent.futures.ThreadPoolExecutor(4)

    async def on_a_thread(users: list[str]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, reader.get, users)

    out["concurrent_thread"] = concurrent_reads(on_a_thread, args.users, args.seconds, args.seed + i)
    pool.shutdown()
    if reader.reads_async:
        out["concurrent_asyncio"] = concurrent_reads(reader.get_async, args.users, args.seconds, args.seed + i)
    # materialisation: a second repository, written offline only, then materialised
    mat_root = root / "mat"
    mat = lf.open_repo(lf.render_repo(mat_root / "repo", settings_for(store, mat_root, redis, f"mat{i}")))
    lf.apply(mat)
    out["offline_write_s"] = timed(lambda: (lf.write_histories(mat, histories, online="none"),
                                            lf.write_videos(mat, videos, model_version="linkedout_v1", online="none")))
    out["materialize_s"] = timed(lambda: lf.materialize(mat))
    assert lf.HistoryReader(mat).get(["1"]) == [list(histories["watched"].iloc[1])]
    if redis is not None:  # the next round starts from an empty server
        import redis as redis_client

        redis_client.Redis(host=redis.host, port=redis.port).flushall()
    return out


def cli_apply(root: Path) -> float:
    repo = lf.render_repo(root / "cli", lf.FeastSettings())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_HERE.parent), os.environ.get("PYTHONPATH", "")])}
    feast = Path(sys.executable).with_name("feast")
    t = time.perf_counter()
    subprocess.run([str(feast), "-c", str(repo), "apply"], check=True, capture_output=True, env=env, timeout=600)
    return time.perf_counter() - t


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rounds[0].items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in rounds) for k in value}
        else:
            out[key] = statistics.median(r[key] for r in rounds)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")
    histories, videos = make_data(args)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "paper_end_to_end_ms": PAPER_MS, "design_md_sqlite": {"apply_cli_s": 13, "materialize_s": 38,
                                                             "feast_1_p50_ms": 0.34, "feast_64_ms": 5.2},
        "stores": {},
    }
    for store in stores:
        if store == "redis" and redis_server_binary() is None:
            print("redis-server not installed: skipping Redis (apt-get install -y redis-server)")
            results["stores"]["redis"] = "skipped: redis-server not installed"
            continue
        if store not in ("sqlite", "redis"):
            raise SystemExit(f"unknown store {store!r}: expected sqlite or redis")
        server = LocalRedis().start() if store == "redis" else None
        rounds = []
        try:
            for i in range(args.repeats):
                with tempfile.TemporaryDirectory(prefix=f"bench-feast-{store}-") as tmp:
                    rounds.append(one_round(store, Path(tmp), server, histories, videos, args, i))
                print(f"{store} round {i + 1}/{args.repeats}: " + ", ".join(
                    f"{k}={v:.2f}" for k, v in rounds[-1].items() if not isinstance(v, dict)), flush=True)
        finally:
            if server is not None:
                server.stop()
        results["stores"][store] = {"median": summarise(rounds), "rounds": rounds}
    if args.cli:
        with tempfile.TemporaryDirectory(prefix="bench-feast-cli-") as tmp:
            results["feast_cli_apply_s"] = cli_apply(Path(tmp))

    print(f"\nFeast at {args.users:,} users x 10 ids, {args.videos:,} videos (median of {args.repeats}):")
    print(f"{'store':8} {'apply':>7} {'hist->online':>13} {'(unchecked)':>12} {'videos->online':>15} {'materialize':>12} "
          f"{'get 1 p50/p99 ms':>18} {'get 64 p50/p99 ms':>19} {'feast 1 p50':>12}")
    for store, res in results["stores"].items():
        if isinstance(res, str):
            print(f"{store:8} {res}")
            continue
        m = res["median"]
        print(f"{store:8} {m['apply_s']:6.2f}s {m['write_histories_s']:12.1f}s {m['write_histories_unchecked_s']:11.1f}s "
              f"{m['write_videos_s']:14.1f}s "
              f"{m['materialize_s']:11.1f}s {m['reader_1']['p50_ms']:8.3f}/{m['reader_1']['p99_ms']:<8.3f} "
              f"{m['reader_64']['p50_ms']:9.3f}/{m['reader_64']['p99_ms']:<8.3f} {m['feast_1']['p50_ms']:11.3f}")
    print("the transformer's read, 8 concurrent readers of 2 users (reads/s, CPU per read):")
    for store, res in results["stores"].items():
        if isinstance(res, str):
            continue
        m = res["median"]
        line = (f"  {store:8} on a thread pool {m['concurrent_thread']['reads_per_s']:7.0f}/s "
                f"{m['concurrent_thread']['cpu_us_per_read']:5.0f} us")
        if "concurrent_asyncio" in m:
            line += (f" | asyncio client {m['concurrent_asyncio']['reads_per_s']:7.0f}/s "
                     f"{m['concurrent_asyncio']['cpu_us_per_read']:5.0f} us")
        if "reader_uncached_1" in m:
            line += (f" | 1 user p50 held pages {m['reader_1']['p50_ms']:.3f} ms, without "
                     f"{m['reader_uncached_1']['p50_ms']:.3f} ms; bytes from the file per 4-user read "
                     f"{m['file_bytes_per_read']['held']:.0f} vs {m['file_bytes_per_read']['uncached']:.0f}")
        print(line)
    if "feast_cli_apply_s" in results:
        print(f"feast -c DIR apply (fresh process, import included): {results['feast_cli_apply_s']:.1f} s")
    print(f"DESIGN.md §2 (SQLite): feast apply 13 s, materialize 38 s, get 1 user p50 0.34 ms, 64 users 5.2 ms; "
          f"the paper's end-to-end latency: {PAPER_MS} ms per query")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
