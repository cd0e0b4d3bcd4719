"""Where the served request's CPU goes: the transformer profiled under load, and what that bounds.

    python bench/profile_serve.py [--runs 3] [--seconds 20] [--requests 2000] [--clients 8]
                                  [--online-store sqlite|redis] [--event-loop auto|asyncio|uvloop]

Builds (or reuses) ``bench/serve.py``'s work directory (19,738 videos, 100,000 users by default),
starts the local stack (the real ``tritonserver``, the KServe transformer, Feast) on 127.0.0.1, and
measures, with ``bench/serve.py``'s client (``tritonclient``'s gRPC stubs):

- **CPU per request** of each server process (the transformer, Triton with its backend stubs, the
  redis-server when there is one) and of each of the transformer's threads (named as Python names
  them, from ``py-spy dump``), from ``/proc``: for ``--requests`` one-client requests, then for
  ``--clients`` clients in flight for ``--seconds`` s;
- **the GIL profile** of the transformer under that load (``py-spy record --gil --threads
  --nonblocking``: a sample only where a thread holds the GIL, the process never paused): the share
  of each thread, and the main thread's top functions, inclusive and self;
- both phases ``--runs`` times, one after the other: the figures are their medians, the GIL profile
  all runs' samples together;
- **the bounds those figures set** on this machine: requests/s if the servers and the client could use
  every core (cores / CPU per request of all of them), and if the transformer's main thread were the
  only limit (1 s / its CPU per request) — the event loop serves every request on one thread.

Prints the tables and writes ``bench/results/profile_serve.json``. Every server listens on 127.0.0.1;
the load is bounded in count and time. Needs ``py-spy`` (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import (  # noqa: E402
    add_stack_args,
    build_for,
    concurrent_load,
    cpu_seconds,
    default_workdir,
    host_state,
    one_client,
    warm_up,
)

TICK = os.sysconf("SC_CLK_TCK")


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name of ``pid`` (``py-spy dump --json``); native threads are absent."""
    out = subprocess.run([_py_spy(), "dump", "--pid", str(pid), "--json", "--nonblocking"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return {int(t["os_thread_id"]): str(t["thread_name"]) for t in json.loads(out) if t.get("os_thread_id")}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """OS thread id -> (its ``comm``, CPU seconds so far) for every thread of ``pid``."""
    found: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        found[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / TICK)
    return found


class Meter:
    """CPU of the server processes (descendants included) and of the transformer's threads over one phase."""

    def __init__(self, servers: dict[str, int], transformer: int) -> None:
        self.servers, self.transformer = servers, transformer

    def __enter__(self) -> Meter:
        self.t0 = time.perf_counter()
        self.client0 = time.process_time()
        self.proc0 = {name: cpu_seconds([pid]) for name, pid in self.servers.items()}
        self.threads0 = thread_cpu(self.transformer)
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0
        self.client = time.process_time() - self.client0
        self.proc = {name: cpu_seconds([pid]) - self.proc0[name] for name, pid in self.servers.items()}
        after = thread_cpu(self.transformer)
        names = thread_names(self.transformer)  # after the phase: pools start their threads when first used
        self.threads: dict[str, float] = collections.Counter()
        for tid, (comm, cpu) in after.items():
            label = names.get(tid) or f"native: {comm}"
            self.threads[label] += cpu - self.threads0.get(tid, (comm, 0.0))[1]

    def per_request(self, done: int) -> dict[str, Any]:
        ms = 1000.0 / max(1, done)
        return {"requests": done, "seconds": self.elapsed, "requests_per_s": done / self.elapsed,
                "cpu_ms_per_request": {**{k: v * ms for k, v in self.proc.items()}, "client": self.client * ms},
                "transformer_threads_cpu_ms_per_request": {k: v * ms for k, v in
                                                           sorted(self.threads.items(), key=lambda kv: -kv[1])
                                                           if v * ms >= 0.005}}


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).is_file():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return found


#: the event loop's own frames, under every sample of the main thread: left out of the inclusive list
LOOP_FRAMES = ("_run_module_as_main", "_run_code", "<module>", "main", "BoundModelServer.start", "run",
               "Runner.run", "BaseEventLoop.run_until_complete", "BaseEventLoop.run_forever",
               "BaseEventLoop._run_once")
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _function(frame: str) -> str:
    """``func (path/file.py:line)`` -> ``func (file.py)``."""
    m = FRAME.match(frame)
    return f"{m['func']} ({Path(m['file']).name})" if m else frame


def gil_profile(raw: Path, top: int) -> dict[str, Any]:
    """Shares of a ``py-spy record --gil --threads -f raw`` file: by thread, and the main thread's functions
    (inclusive: the samples under a function; self: where it runs). A coroutine resumed by a Cython
    callback (grpc.aio) is sampled from that callback up, without the loop's frames below it."""
    by_thread: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    main_total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = re.sub(r"^thread \(0x[0-9A-Fa-f]+\): ", "", re.sub(r"^thread \(\d+\): ", "", frames[0]))
        n = int(count)
        by_thread[thread] += n
        if thread != "MainThread":
            continue
        main_total += n
        functions = [_function(f) for f in frames[1:]]
        for f in set(functions):
            if f.split(" (")[0] not in LOOP_FRAMES:
                inclusive[f] += n
        if functions:
            own[functions[-1]] += n
    total = sum(by_thread.values()) or 1

    def shares(counter: collections.Counter[str], of: int) -> list[tuple[str, float]]:
        return [(k, v / max(1, of)) for k, v in counter.most_common(top)]

    return {"samples": total, "by_thread": shares(by_thread, total), "main_thread_samples": main_total,
            "main_inclusive": shares(inclusive, total), "main_self": shares(own, total)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stack_args(p)
    p.add_argument("--requests", type=int, default=2000, help="one-client requests")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of load, profiled")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25, help="functions listed")
    p.add_argument("--runs", type=int, default=3, help="runs of both phases (figures: their medians)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "profile_serve.json")
    p.add_argument("--raw", type=Path, default=ROOT / "bench" / "results" / "profile_serve.gil.txt",
                   help="where the GIL profile's collapsed stacks are kept (flamegraph.pl or speedscope read them)")
    args = p.parse_args()
    args.workdir = args.workdir or default_workdir(args.online_store)
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")
    _py_spy()

    from linkedout.serving.local import LocalStack, StackSettings
    from linkedout.utils import configure_logging

    configure_logging("WARNING")
    with contextlib.ExitStack() as running:
        _, store_pid = build_for(args, running)
        stack = running.enter_context(LocalStack(StackSettings(workdir=args.workdir, event_loop=args.event_loop)))
        transformer = int(stack.info["transformer"]["pid"])
        servers = {"transformer": transformer, "triton": int(stack.info["model_server"]["pid"]),
                   **({"redis": store_pid} if store_pid else {})}
        url = stack.info["transformer"]["grpc"]
        rng = np.random.default_rng(7)
        warm_up(url, args.users, rng)
        results: dict[str, Any] = {"setup": {"videos": args.videos, "users": args.users, "clients": args.clients,
                                             "online_store": args.online_store, "event_loop": args.event_loop, **host_state()}}
        one_runs, load_runs = [], []
        with tempfile.TemporaryDirectory() as tmp:
            raws = []
            for r in range(args.runs):  # one client, then the load (profiled), run after run
                print(f"run {r + 1}/{args.runs}: one client, {args.requests} requests; then {args.clients} clients "
                      f"for {args.seconds:.0f} s, profiled", flush=True)
                with Meter(servers, transformer) as m:
                    times = one_client(url, args.users, args.requests, rng)
                one_runs.append({**m.per_request(len(times)), "p50_ms": float(np.median(times))})
                raws.append(Path(tmp) / f"gil-{r}.txt")
                load_runs.append(profiled_load(url, servers, transformer, raws[-1], args, seed=r))
            results["one_client"], results["load"] = medians(one_runs), medians(load_runs)
            results["per_run"] = {"one_client": one_runs, "load": load_runs}
            merged = "".join(f.read_text() for f in raws if f.is_file())
            if merged:
                args.raw.parent.mkdir(parents=True, exist_ok=True)
                args.raw.write_text(merged)
                results["gil_profile"] = gil_profile(args.raw, args.top)
            else:
                results["gil_profile"] = None
    results["bounds"] = bounds(results["load"], os.cpu_count() or 1)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def profiled_load(url: str, servers: dict[str, int], transformer: int, raw: Path, args: argparse.Namespace,
                  seed: int) -> dict[str, Any]:
    """``args.clients`` clients for ``args.seconds`` s under ``py-spy record --gil`` (to ``raw``): CPU per request."""
    spy = subprocess.Popen([_py_spy(), "record", "--pid", str(transformer), "--gil", "--threads", "--nonblocking",
                            "--rate", str(args.rate), "--duration", str(int(args.seconds)), "--format", "raw",
                            "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Meter(servers, transformer) as m:
            done, _, lat, failed = asyncio.run(concurrent_load(url, args.users, args.clients, args.seconds, seed))
        spy.wait(timeout=args.seconds + 60)
    finally:
        if spy.poll() is None:
            spy.terminate()
            spy.wait(timeout=10)
    return {**m.per_request(done), "p50_ms": float(np.median(lat)) if lat else float("nan"),
            "failed": sum(failed.values())}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over runs (nested dicts of figures; a figure a run lacks counts as 0)."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for run in runs for k in run):
        values = [run.get(key, 0.0) for run in runs]
        out[key] = medians(values) if isinstance(values[0], dict) else float(statistics.median(values))
    return out


def bounds(load: dict[str, Any], cpus: int) -> dict[str, float]:
    """Requests/s that the CPU per request under load allows: every process on every core, or the main thread alone."""
    cpu = load["cpu_ms_per_request"]
    main_thread = load["transformer_threads_cpu_ms_per_request"].get("MainThread", float("nan"))
    return {"all_cores_requests_per_s": 1000.0 * cpus / sum(cpu.values()),
            "servers_only_requests_per_s": 1000.0 * cpus / sum(v for k, v in cpu.items() if k != "client"),
            "transformer_main_thread_requests_per_s": 1000.0 / main_thread,
            "transformer_process_requests_per_s": 1000.0 / cpu["transformer"]}


def report(r: dict[str, Any]) -> None:
    one, load = r["one_client"], r["load"]
    s = r["setup"]
    print(f"\n== CPU per request (ms, medians of {len(r['per_run']['load'])} runs), {s['videos']:,} videos, {s['users']:,} users, Feast {s['online_store']}, "
          f"{s['cpus']} CPUs")
    print(f"{'':>28} {'1 client':>10} {str(s['clients']) + ' clients':>11}")
    print(f"{'requests/s':>28} {one['requests_per_s']:>10.0f} {load['requests_per_s']:>11.0f}")
    for k in load["cpu_ms_per_request"]:
        print(f"{k:>28} {one['cpu_ms_per_request'][k]:>10.2f} {load['cpu_ms_per_request'][k]:>11.2f}")
    print("transformer threads:")
    for k, v in load["transformer_threads_cpu_ms_per_request"].items():
        print(f"{k[:28]:>28} {one['transformer_threads_cpu_ms_per_request'].get(k, 0.0):>10.2f} {v:>11.2f}")
    g = r["gil_profile"]
    if g:
        print(f"\n== the transformer's GIL under load ({g['samples']} samples): by thread")
        for k, v in g["by_thread"]:
            print(f"{100 * v:6.1f}%  {k}")
        print("main thread, inclusive (share of all GIL samples)")
        for k, v in g["main_inclusive"]:
            print(f"{100 * v:6.1f}%  {k}")
        print("main thread, self")
        for k, v in g["main_self"][:15]:
            print(f"{100 * v:6.1f}%  {k}")
    b = r["bounds"]
    print(f"\n== bounds at this CPU per request: every process on every core {b['all_cores_requests_per_s']:.0f} req/s "
          f"(servers alone {b['servers_only_requests_per_s']:.0f}); the transformer's main thread alone "
          f"{b['transformer_main_thread_requests_per_s']:.0f} req/s, its process "
          f"{b['transformer_process_requests_per_s']:.0f}; measured {load['requests_per_s']:.0f}")


if __name__ == "__main__":
    sys.exit(main())
