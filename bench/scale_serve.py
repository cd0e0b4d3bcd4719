"""End to end at catalogue scale: the local serving stack over synthetic catalogues of 20 k to 10 M videos.

For each size (bench/scale.py's synthetic catalogue, d = 64, the default model's architecture with
seeded random weights), in a child process: ``export_ranker`` writes the ranker (its user-state
graph) and the catalogue with its retrieval index (``IndexSettings`` defaults: exact below
``exact_below`` videos, ANN from there), timed, with the artefacts' sizes. Then the local stack
(``LocalStack``: Triton, or KServe's predictor where Triton cannot run, and the KServe transformer; no
Feast: the requests carry their 10-video histories, so what is measured is what grows with the
catalogue: the history's embeddings, the Triton call, the retrieval) serves it on loopback and this
process measures, with tritonclient's gRPC client:

- one client, ``--requests`` sequential requests of one user: p50, p99 (ms);
- ``--clients`` requests in flight for ``--seconds`` s: requests/s, p50, p99;
- one video added in place (``append_videos``: the catalogue-level write of ``linkedout catalog add``,
  after the encoder), its embedding 10x the best answer's for a probe history: the time until the
  transformer answers that history with it first, and the bytes written (median of 3);
- the transformer's resident memory (VmRSS) once serving, and its growth over the 20 k run (the
  catalogue and index it holds), against the float32 table's size.

Every figure is the median of ``--runs`` runs (runs interleave sizes: 20k, 100k, 1M, 10M, 20k, ...
when ``--interleave``; by default each size's runs follow each other on one stack). Writes the
``end_to_end`` block of ``bench/results/scale.json`` (the in-process figures stay bench/scale.py's)
and redraws ``bench/results/scale.png`` with the end-to-end p50. Servers listen on 127.0.0.1; every
load loop is bounded in count and time.

    nice -n 10 python bench/scale_serve.py                   # 20k, 100k, 1M, 10M (about 20 min, 2 cores)
    python bench/scale_serve.py --sizes 20000 100000          # quick
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench/scale.py

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
SIZES = (20_000, 100_000, 1_000_000, 10_000_000)
T = 10  # history length of the default model


def build(n: int, workdir: Path) -> dict[str, Any]:
    """The model repository of an ``n``-video catalogue (run in a child process); its figures."""
    import torch
    from scale import catalogue

    from linkedout.export import Catalog, ExportConfig, ModelRepository, export_ranker
    from linkedout.job.defaults import default_model_config
    from linkedout.model import build_model

    t0 = time.perf_counter()
    table, _ = catalogue(n)
    rng = np.random.default_rng(0)
    cfg = default_model_config()
    n_layers = cfg.fusion.num_layers
    gate = rng.dirichlet(np.ones(n_layers), size=n).astype(np.float32)
    catalog = Catalog(ids=np.arange(1, n + 1, dtype=np.int64) * 7 + 100_000, embeddings=table, gate=gate,
                      contributions=gate, popularity=rng.zipf(1.3, size=n).clip(0, 10**6),
                      published=1_700_000_000_000 + rng.integers(0, 86_400_000 * 90, size=n),
                      layers=[f"L{4 * i}" for i in range(n_layers)])
    generate_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(cfg, n, np.ones(n + 1, dtype=np.int64)).eval()
    t0 = time.perf_counter()
    export_ranker(model, catalog, ModelRepository(workdir / "model_repository"), ExportConfig(name="linkedout"))
    export_s = time.perf_counter() - t0
    vdir = workdir / "model_repository" / "linkedout_ranker" / "1"
    files = {p.relative_to(vdir).as_posix(): p.stat().st_size for p in vdir.rglob("*") if p.is_file()}
    meta = json.loads((vdir / "catalog.json").read_text())
    return {"n": n, "table_bytes": n * table.shape[1] * 4, "generate_s": generate_s, "export_s": export_s,
            "index_kind": meta["index"]["kind"], "checks": meta["checks"], "artefact_bytes": files,
            "ranker_graph_bytes": files["model.onnx"], "artefact_total_bytes": sum(files.values())}


def histories(ids: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ids[rng.integers(0, len(ids), size=(count, T))]


def _inputs(g: Any, hist: np.ndarray, k: int = 10) -> list[Any]:
    h = g.InferInput("history", [1, T], "INT64")
    h.set_data_from_numpy(hist.reshape(1, T).astype(np.int64))
    uid = g.InferInput("user_id", [1], "INT64")
    uid.set_data_from_numpy(np.array([1], dtype=np.int64))
    kk = g.InferInput("k", [1], "INT64")
    kk.set_data_from_numpy(np.array([k], dtype=np.int64))
    return [uid, kk, h]


def one_client(url: str, hists: np.ndarray) -> list[float]:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    times = []
    deadline = time.monotonic() + 120
    for h in hists:
        t0 = time.perf_counter()
        client.infer("linkedout", _inputs(g, h))
        times.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() > deadline:
            break
    client.close()
    return times


async def _many(url: str, hists: np.ndarray, clients: int, seconds: float) -> tuple[int, float, list[float]]:
    import tritonclient.grpc.aio as ga

    client = ga.InferenceServerClient(url)
    times: list[float] = []
    stop = time.monotonic() + seconds
    done = 0

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await client.infer("linkedout", _inputs(ga, hists[i % len(hists)]))
            times.append((time.perf_counter() - t0) * 1000)
            done += 1
            i += clients

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return done, elapsed, times


def top_items(url: str, hist: np.ndarray, k: int = 10) -> list[int]:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url)
    try:
        res = client.infer("linkedout", _inputs(g, hist, k), outputs=[g.InferRequestedOutput("items")])
        return [int(v) for v in res.as_numpy("items")[0]]
    finally:
        client.close()


def add_visible(url: str, vdir: Path, hist: np.ndarray, new_id: int) -> dict[str, float]:
    """Append one video that becomes ``hist``'s best answer; seconds until the transformer says so."""
    from scale import bytes_written

    from linkedout.export.catalog import append_videos
    from linkedout.export.index import RetrievalIndex

    best = top_items(url, hist)[0]
    ids = np.load(vdir / "catalog.npz")["ids"]
    pos = np.flatnonzero(ids == best)
    index = RetrievalIndex.load(vdir / "index")
    emb = index.vectors(pos + 1 if pos.size else [index.num_rows]) * 10.0
    w0 = bytes_written()
    t0 = time.perf_counter()
    append_videos(vdir, {"ids": [new_id], "embeddings": emb})
    add_s = time.perf_counter() - t0
    written = bytes_written() - w0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if top_items(url, hist)[0] == new_id:
            return {"add_s": add_s, "visible_s": time.perf_counter() - t0, "bytes_written": written}
        time.sleep(0.02)
    return {"add_s": add_s, "visible_s": float("inf"), "bytes_written": written}


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def serve(n: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack over the built repository and measure (see the module docstring)."""
    from linkedout.serving.local import LocalStack, StackSettings

    ids = np.load(workdir / "model_repository" / "linkedout_ranker" / "1" / "catalog.npz")["ids"]
    vdir = workdir / "model_repository" / "linkedout_ranker" / "1"
    out: dict[str, Any] = {"runs": []}
    t0 = time.perf_counter()
    with LocalStack(StackSettings(workdir=workdir, use_feast=False, sync_interval=args.poll,
                                  startup_timeout=900)) as stack:
        out["start_s"] = time.perf_counter() - t0
        out["model_server"] = stack.info["model_server"]["kind"]
        url = stack.info["transformer"]["grpc"]
        pid = stack.transformer.pid if stack.transformer is not None else 0
        one_client(url, histories(ids, 50, seed=99))  # warm-up
        for r in range(args.runs):
            one = one_client(url, histories(ids, args.requests, seed=r))
            done, elapsed, times = asyncio.run(_many(url, histories(ids, 4096, seed=100 + r), args.clients,
                                                     args.seconds))
            add = add_visible(url, vdir, histories(ids, 1, seed=200 + r)[0], new_id=10**12 + r)
            out["runs"].append({"one_client_p50_ms": pct(one, 50), "one_client_p99_ms": pct(one, 99),
                                "rps": done / elapsed, "many_p50_ms": pct(times, 50), "many_p99_ms": pct(times, 99),
                                **{f"add_{k}": v for k, v in add.items()}})
            print(f"  {n:>10,} run {r + 1}: one client p50 {pct(one, 50):.2f} ms p99 {pct(one, 99):.2f}; "
                  f"{args.clients} clients {done / elapsed:.0f} req/s p99 {pct(times, 99):.1f} ms; "
                  f"add visible in {add['visible_s'] * 1000:.0f} ms ({add['bytes_written']:,} B written)", flush=True)
        out["transformer_rss_bytes"] = vm_rss(pid)
    for key in out["runs"][0]:
        out[key] = statistics.median(run[key] for run in out["runs"])
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, e2e = doc.get("sizes", {}), doc["end_to_end"]["sizes"]
    fig, (lat, rec) = plt.subplots(1, 2, figsize=(11, 4))
    if sizes:
        ns = [s["n"] for s in sizes.values()]
        for key, label in (("ann_b1", "ANN search, 1 user"), ("exact_b1", "exact search, 1 user")):
            lat.plot(ns, [s[key]["p50_ms"] for s in sizes.values()], marker="o", label=f"{label} p50 (in process)")
        rec.plot(ns, [s["recall_at_10"] for s in sizes.values()], marker="o", label="ANN recall@10 vs exact")
    if e2e:
        ns = [s["n"] for s in e2e.values()]
        lat.plot(ns, [s["one_client_p50_ms"] for s in e2e.values()], marker="s", label="end to end p50, one client")
        lat.plot(ns, [s["many_p99_ms"] for s in e2e.values()], marker="s", ls="--", label="end to end p99, 8 clients")
    lat.set(xscale="log", yscale="log", xlabel="catalogue size (videos)", ylabel="latency (ms)",
            title="latency against catalogue size")
    lat.legend(fontsize=8)
    rec.axhline(0.98, ls="--", c="grey", lw=0.8)
    rec.axhline(0.95, ls=":", c="grey", lw=0.8)
    rec.set(xscale="log", xlabel="catalogue size (videos)", ylabel="recall@10", title="ANN recall@10", ylim=(0.9, 1.0))
    rec.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--runs", type=int, default=3, help="runs per size (medians)")
    parser.add_argument("--requests", type=int, default=500, help="one-client requests per run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of concurrent load per run")
    parser.add_argument("--poll", type=float, default=0.5, help="the transformer's catalogue poll (s)")
    parser.add_argument("--workdir", type=Path, default=None, help="where repositories are built (default: temp)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be >= 3 (figures are medians of at least 3 runs)")
    if args.child is not None:
        assert args.workdir is not None
        (args.workdir / "built.json").write_text(json.dumps(build(args.child, args.workdir)))
        return
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    e2e: dict[str, Any] = {}
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix=f"scale-serve-{n}-") as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--child", str(n), "--workdir", str(work)], check=True)
            built = json.loads((work / "built.json").read_text())
            print(f"{n:,} videos: built ({built['index_kind']}) in {time.perf_counter() - t0:.0f} s, "
                  f"export {built['export_s']:.1f} s", flush=True)
            e2e[str(n)] = {**built, **serve(n, work, args)}
    base = e2e.get(str(min(args.sizes)))
    for s in e2e.values():
        if base is not None:
            s["p50_vs_smallest"] = s["one_client_p50_ms"] / base["one_client_p50_ms"]
            s["resident_growth_bytes"] = s["transformer_rss_bytes"] - base["transformer_rss_bytes"]
            s["resident_growth_vs_table"] = s["resident_growth_bytes"] / s["table_bytes"]
    doc["end_to_end"] = {"note": __doc__.split("\n\n")[1], "runs": args.runs, "requests": args.requests,
                         "clients": args.clients, "seconds": args.seconds, "poll_s": args.poll, "sizes": e2e}
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(" | ".join(("N", "index", "export s", "p50 ms", "p99 ms", "p50 / smallest", "8-client req/s", "8-client p99",
                      "add visible ms", "add B", "RSS growth / table")))
    for s in e2e.values():
        print(" | ".join([f"{s['n']:,}", s["index_kind"], f"{s['export_s']:.1f}", f"{s['one_client_p50_ms']:.2f}",
                          f"{s['one_client_p99_ms']:.2f}", f"{s.get('p50_vs_smallest', 1):.2f}", f"{s['rps']:.0f}",
                          f"{s['many_p99_ms']:.1f}", f"{s['add_visible_s'] * 1000:.0f}", f"{s['add_bytes_written']:,.0f}",
                          f"{s.get('resident_growth_vs_table', 0):.2f}"]))
    plot(doc, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
