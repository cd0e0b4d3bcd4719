"""Retrieval at catalogue scale: exact brute force against the ANN index of ``linkedout.export.index``.

Synthetic catalogues of 20 k, 100 k, 1 M and 10 M videos at d = 64 (``--dim``: another width, e.g.
the paper's preset 256). Embeddings come from a mixture
of Gaussians, because real embeddings have topic structure: ``N / 1000`` topics (32 to 10,000) of
Zipf-like sizes, centres N(0, I/d), a video = s * (centre + 0.6 * N(0, I/d)) with a per-video scale
s ~ lognormal(0, 0.25) (norms vary, as popularity makes them, so inner-product search is not cosine
search). A user is the mean of a 20-video history drawn from 1 to 3 topics plus N(0, 0.3² I/d)
noise, and the history is excluded from the answers, as the transformer excludes watched videos.

Each size runs in its own process (so its peak memory is its own and everything is freed between
sizes): generate, build the index with the default ``IndexSettings`` (median of ``--runs`` builds),
save, load it memory-mapped, then measure recall@10 of the ANN search against exact scoring on
1,000 users, in-process latency (1 user, and batches of 8) of the ANN and of the exact search,
adding one video (time, bytes written, time until another process's index sees it after
``refresh``), artefact sizes and resident memory (RSS growth from loading the index to after the
searches: the table's touched pages plus the ANN index). Timings are medians of ``--runs`` runs.

    nice -n 10 python bench/scale.py                 # 20k, 100k, 1M, 10M (about 11 min on 2 cores)
    python bench/scale.py --quick                    # 20k, 100k
    nice -n 10 python bench/scale.py --compare-kinds # the ANN kinds at 1M: what chose ivf_sq8
    nice -n 10 python bench/scale.py --compare-kinds 10000000 --kinds ivf_sq8 --nlists 1024 2048 4096 \
        --nprobes 32 64 128 256 --candidates 100     # nlist and nprobe at 10M

Writes ``bench/results/scale.json`` and ``bench/results/scale.png`` (``--compare-kinds N``:
``bench/results/scale_kinds_N.json``), and prints the table and the exact/ANN threshold
(``threshold``: the default ``IndexSettings.exact_below``). The JSON's ``end_to_end`` block is
bench/scale_serve.py's (through the serving stack), kept when this script runs again.
"""

from __future__ import annotations

import os

# numpy's BLAS single-threaded, set before numpy loads: on 2 shared cores its threads and faiss's
# OpenMP threads oversubscribe (a 1M build took 18 s instead of 3.4 s). faiss builds on every core;
# searches run on one thread (``one_thread``), as one request does in a serving process.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.export.index import ANN_KINDS, IndexSettings, RetrievalIndex, auto_nlist

DIM = 64  # --dim changes it (the paper's preset item width is 256)
SIZES = (20_000, 100_000, 1_000_000, 10_000_000)
USERS = 1000
HISTORY = 20
K = 10
TARGETS = {"recall@10 at 1M": ">= 0.98", "recall@10 at 10M": ">= 0.95",
           "add one video visible": "<= 2 s, no full rewrite", "resident table+index": "<= 2x the float32 table"}
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------- data

def catalogue(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n, DIM) float32 of the mixture of Gaussians (module docstring) and each video's topic."""
    rng = np.random.default_rng(seed)
    topics = int(min(max(n // 1000, 32), 10_000))
    weights = 1.0 / np.arange(1, topics + 1) ** 0.7
    centres = rng.standard_normal((topics, DIM), dtype=np.float32) / np.sqrt(DIM)
    labels = rng.choice(topics, size=n, p=weights / weights.sum()).astype(np.int32)
    out = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 1 << 20):
        hi = min(n, lo + (1 << 20))
        noise = rng.standard_normal((hi - lo, DIM), dtype=np.float32) * np.float32(0.6 / np.sqrt(DIM))
        scale = rng.lognormal(0.0, 0.25, size=(hi - lo, 1)).astype(np.float32)
        out[lo:hi] = scale * (centres[labels[lo:hi]] + noise)
    return out, labels


def users_of(table: np.ndarray, labels: np.ndarray, count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """User states (count, DIM) and their histories (count, HISTORY) of rows (1-based), module docstring."""
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    hist = np.empty((count, HISTORY), dtype=np.int64)
    for u in range(count):
        picked = labels[rng.choice(labels.size, size=rng.integers(1, 4))]  # topics, by size
        t = picked[rng.integers(0, picked.size, size=HISTORY)]
        hist[u] = order[starts[t] + (rng.random(HISTORY) * (starts[t + 1] - starts[t])).astype(np.int64)] + 1
    states = table[hist - 1].mean(1)
    states += rng.standard_normal(states.shape, dtype=np.float32) * np.float32(0.3 / np.sqrt(DIM))
    return states.astype(np.float32), hist


# ---------------------------------------------------------------------------------- measuring

def rss() -> int:
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs`` 5); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bytes_written() -> int:
    """Bytes this process passed to write calls so far (``wchar`` of /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def threads(n: int | None) -> None:
    """faiss's OpenMP threads: ``n``, or every core when None (builds)."""
    import faiss

    faiss.omp_set_num_threads(n or os.cpu_count() or 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each user's true top-k among the found top-k."""
    return float(np.mean([np.intersect1d(f, t[t > 0]).size / max(1, (t > 0).sum()) for f, t in zip(found, truth)]))


def latency(index: RetrievalIndex, users: np.ndarray, hist: np.ndarray, batch: int, runs: int,
            budget_s: float) -> dict[str, float]:
    """p50 / p99 (ms) of ``search`` for ``batch`` users at a time: medians over ``runs`` passes of at
    most 200 queries each, fewer when a pass would exceed ``budget_s``."""
    t0 = time.perf_counter()
    index.search(users[:batch], K, exclude=hist[:batch])  # warm-up; also sizes the pass
    one = time.perf_counter() - t0
    count = int(min(200, max(5, budget_s / max(one, 1e-6))))
    p50, p99 = [], []
    for r in range(runs):
        times = []
        for q in range(count):
            lo = (r * count + q) * batch % (users.shape[0] - batch)
            t0 = time.perf_counter()
            index.search(users[lo:lo + batch], K, exclude=hist[lo:lo + batch])
            times.append((time.perf_counter() - t0) * 1000)
        p50.append(float(np.percentile(times, 50)))
        p99.append(float(np.percentile(times, 99)))
    return {"p50_ms": statistics.median(p50), "p99_ms": statistics.median(p99), "queries": count}


def search_all(index: RetrievalIndex, users: np.ndarray, hist: np.ndarray, batch: int = 100) -> np.ndarray:
    return np.concatenate([index.search(users[lo:lo + batch], K, exclude=hist[lo:lo + batch])[0]
                           for lo in range(0, users.shape[0], batch)])


def dir_sizes(d: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in sorted(d.iterdir()) if f.is_file() and not f.name.startswith(".")}


# ---------------------------------------------------------------------------------- one size

def measure_size(n: int, runs: int, workdir: Path) -> dict[str, Any]:
    """Every figure of one catalogue size (run in a child process)."""
    out: dict[str, Any] = {"n": n, "d": DIM, "table_bytes": n * DIM * 4}
    t0 = time.perf_counter()
    table, labels = catalogue(n)
    users, hist = users_of(table, labels, USERS)
    del labels
    out["generate_s"] = time.perf_counter() - t0
    settings = IndexSettings(kind=IndexSettings().ann_kind)
    builds, peaks = [], []
    for _ in range(runs):
        index = None  # the previous build is freed before the next
        before = rss()
        out["peak_reset"] = reset_peak()
        t0 = time.perf_counter()
        index = RetrievalIndex.build(table, settings)
        builds.append(time.perf_counter() - t0)
        peaks.append(peak_rss() - before)
    assert index is not None
    out.update(kind=index.kind, nlist=index.nlist, nprobe=settings.nprobe, candidates=settings.candidates,
               build_s=statistics.median(builds), build_s_runs=builds, build_peak_rss_delta_bytes=max(peaks))
    d = workdir / f"index-{n}"
    t0 = time.perf_counter()
    index.save(d)
    out["save_s"] = time.perf_counter() - t0
    out["artefact_bytes"] = dir_sizes(d)
    out["artefact_total_bytes"] = sum(out["artefact_bytes"].values())
    del index, table
    threads(1)
    before = rss()
    t0 = time.perf_counter()
    ann = RetrievalIndex.load(d)
    out["load_s"] = time.perf_counter() - t0
    exact = ann.exact()
    t0 = time.perf_counter()
    truth = search_all(exact, users, hist)
    out["exact_1000_users_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["recall_at_10"] = recall(search_all(ann, users, hist), truth)
    out["ann_1000_users_s"] = time.perf_counter() - t0
    for name, index in (("ann", ann), ("exact", exact)):
        for b in (1, 8):
            out[f"{name}_b{b}"] = latency(index, users, hist, b, runs, budget_s=8.0)
    out["resident_bytes"] = rss() - before
    out["resident_ratio"] = out["resident_bytes"] / out["table_bytes"]
    out["add_one"] = measure_add(ann, d, users, runs=max(runs, 5))
    out["peak_rss_bytes"] = peak_rss()
    return out


def measure_add(writer: RetrievalIndex, d: Path, users: np.ndarray, runs: int) -> dict[str, Any]:
    """Adding one video (a user's own state, scaled up so that it is that user's best): the time of
    ``add``, the bytes it writes, and the time until another index of the same directory, after
    ``refresh``, returns it."""
    reader = RetrievalIndex.load(d)
    adds, visible, written = [], [], []
    for i in range(runs):
        user = users[i:i + 1]
        video = user * np.float32(10.0 / max(float(np.linalg.norm(user)), 1e-6))
        w0 = bytes_written()
        t0 = time.perf_counter()
        row = int(writer.add(video)[0])
        adds.append(time.perf_counter() - t0)
        written.append(bytes_written() - w0)
        reader.refresh()
        found = row in reader.search(user, K)[0][0].tolist()
        visible.append(time.perf_counter() - t0 if found else float("inf"))
    return {"add_s": statistics.median(adds), "bytes_written": int(statistics.median(written)),
            "visible_s": statistics.median(visible), "runs": runs, "all_found": all(np.isfinite(visible))}


# ---------------------------------------------------------------------------------- kinds

def compare_kinds(n: int, workdir: Path, kinds: list[str], nlists: list[int] | None, nprobes: list[int],
                  candidates: list[int]) -> dict[str, Any]:
    """Each ANN kind at ``n`` rows: build time, index bytes, recall@10 and 1-user p50 over its search
    settings (IVF kinds: each of ``nlists``, default auto_nlist(n) and 4x that, x ``nprobes`` x ``candidates``)."""
    table, labels = catalogue(n)
    users, hist = users_of(table, labels, USERS)
    del labels
    truth = search_all(RetrievalIndex.build(table, IndexSettings(kind="exact")), users, hist)
    configs: list[tuple[str, dict[str, int], list[dict[str, int]]]] = [
        (kind, {"nlist": nlist}, [{"nprobe": p, "candidates": c} for p in nprobes for c in candidates])
        for kind in ("ivf_flat", "ivf_sq8", "ivf_pq") for nlist in (nlists or (auto_nlist(n), 4 * auto_nlist(n)))]
    configs.append(("hnsw", {}, [{"ef_search": e, "candidates": c} for e in (64, 128, 256) for c in candidates]))
    configs = [c for c in configs if c[0] in kinds]
    out: dict[str, Any] = {"n": n, "d": DIM, "results": []}
    for kind, build_settings, sweep in configs:
        threads(None)
        t0 = time.perf_counter()
        index = RetrievalIndex.build(table, IndexSettings(kind=kind, **build_settings))
        build_s = time.perf_counter() - t0
        d = workdir / f"kinds-{kind}"
        index.save(d)
        ann_bytes = sum(v for k, v in dir_sizes(d).items() if k.startswith("ann-"))
        threads(1)
        for search in sweep:
            index.tune(**search)
            row = {"kind": kind, **build_settings, **search, "build_s": build_s, "ann_bytes": ann_bytes,
                   "recall_at_10": recall(search_all(index, users, hist), truth),
                   "p50_ms": latency(index, users, hist, 1, 1, budget_s=5.0)["p50_ms"]}
            out["results"].append(row)
            print(json.dumps(row), flush=True)
        del index
    return out


# ---------------------------------------------------------------------------------- report

def threshold(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where exact search stops paying: the catalogue size at which the exact search's p99 per user
    exceeds the ANN search's by 1 ms, for 1 user and for batches of 8 (the exact search's time grows
    linearly with the rows: its median cost per row and user; the ANN's median p99 up to 1M rows)."""
    out: dict[str, Any] = {"rule": "exact while its p99 per user <= the ANN's + 1 ms"}
    if not any(s["n"] <= 1_000_000 for s in sizes.values()):  # e.g. --sizes 10000000 alone
        out["not_computed"] = "needs a size of at most 1,000,000 videos (the ANN's p99 is taken there)"
        return out
    for b in (1, 8):
        exact_per_row = statistics.median(s[f"exact_b{b}"]["p99_ms"] / b / s["n"] for s in sizes.values())
        ann = statistics.median(s[f"ann_b{b}"]["p99_ms"] / b for s in sizes.values() if s["n"] <= 1_000_000)
        out[f"batch_{b}"] = {"exact_p99_ms_per_user_per_row": exact_per_row, "ann_p99_ms_per_user": ann,
                             "crossover_rows": int((ann + 1.0) / exact_per_row)}
    out["recommended_exact_below"] = min(out[f"batch_{b}"]["crossover_rows"] for b in (1, 8)) // 10_000 * 10_000
    return out


def print_table(sizes: dict[str, dict[str, Any]]) -> None:
    head = ("N", "build s", "peak GB", "recall@10", "ANN p50/p99 ms", "ANN b8 p50/p99", "exact p50/p99 ms",
            "exact b8 p50/p99", "add ms", "add B", "visible ms", "disk MB", "resident x")
    print(" | ".join(head))
    for s in sizes.values():
        print(" | ".join([
            f"{s['n']:,}", f"{s['build_s']:.2f}", f"{s['peak_rss_bytes'] / 2**30:.2f}", f"{s['recall_at_10']:.4f}",
            f"{s['ann_b1']['p50_ms']:.2f}/{s['ann_b1']['p99_ms']:.2f}",
            f"{s['ann_b8']['p50_ms']:.2f}/{s['ann_b8']['p99_ms']:.2f}",
            f"{s['exact_b1']['p50_ms']:.2f}/{s['exact_b1']['p99_ms']:.2f}",
            f"{s['exact_b8']['p50_ms']:.2f}/{s['exact_b8']['p99_ms']:.2f}",
            f"{s['add_one']['add_s'] * 1000:.2f}", f"{s['add_one']['bytes_written']}",
            f"{s['add_one']['visible_s'] * 1000:.2f}", f"{s['artefact_total_bytes'] / 2**20:.0f}",
            f"{s['resident_ratio']:.2f}"]))


def plot(sizes: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [s["n"] for s in sizes.values()]
    fig, (lat, rec) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("ann_b1", "ANN, 1 user"), ("ann_b8", "ANN, 8 users"), ("exact_b1", "exact, 1 user"),
                       ("exact_b8", "exact, 8 users")):
        lat.plot(ns, [s[key]["p50_ms"] for s in sizes.values()], marker="o", label=f"{label} p50")
    lat.set(xscale="log", yscale="log", xlabel="catalogue size (videos)", ylabel="search latency (ms)",
            title="in-process search latency")
    lat.legend()
    rec.plot(ns, [s["recall_at_10"] for s in sizes.values()], marker="o", label="ANN recall@10 vs exact")
    rec.axhline(0.98, ls="--", c="grey", lw=0.8)
    rec.axhline(0.95, ls=":", c="grey", lw=0.8)
    rec.set(xscale="log", xlabel="catalogue size (videos)", ylabel="recall@10", title="ANN recall@10", ylim=(0.9, 1.0))
    rec.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    global DIM
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--quick", action="store_true", help="20k and 100k only")
    parser.add_argument("--runs", type=int, default=3, help="runs per timing (medians)")
    parser.add_argument("--compare-kinds", type=int, nargs="?", const=1_000_000, default=None, metavar="N",
                        help="compare the ANN kinds at N rows (default 1M) instead")
    parser.add_argument("--kinds", nargs="+", choices=ANN_KINDS, default=list(ANN_KINDS),
                        help="with --compare-kinds: the kinds to measure (rows of the same settings in the JSON are replaced)")
    parser.add_argument("--nlists", type=int, nargs="+", default=None, help="with --compare-kinds: IVF lists")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[8, 16, 32, 64], help="with --compare-kinds")
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 100, 200], help="with --compare-kinds")
    parser.add_argument("--workdir", type=Path, default=None, help="where indexes are written (default: a temp dir)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=DIM, help="embedding width d (the paper's preset: 256)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/scale.json (scale_d<dim>.json for another --dim)")
    args = parser.parse_args()
    DIM = args.dim
    if args.out is None:
        args.out = RESULTS / ("scale.json" if DIM == 64 else f"scale_d{DIM}.json")
    if args.runs < 3:
        parser.error("--runs must be >= 3 (timings are medians of at least 3 runs)")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.child is not None:
            args.out.write_text(json.dumps(measure_size(args.child, args.runs, work)))
            return
        RESULTS.mkdir(parents=True, exist_ok=True)
        if args.compare_kinds:
            doc = compare_kinds(args.compare_kinds, work, args.kinds, args.nlists, args.nprobes, args.candidates)
            path = RESULTS / f"scale_kinds_{args.compare_kinds}.json"
            if path.exists():  # the rows of settings not measured again are kept
                new = {_config(r) for r in doc["results"]}
                kept = [r for r in json.loads(path.read_text())["results"] if _config(r) not in new]
                doc["results"] = kept + doc["results"]
            path.write_text(json.dumps({**machine(), **doc}, indent=1))
            return
        sizes: dict[str, dict[str, Any]] = {}
        for n in ([20_000, 100_000] if args.quick else args.sizes):
            child_out = work / f"size-{n}.json"
            cmd = [sys.executable, __file__, "--child", str(n), "--runs", str(args.runs), "--out", str(child_out),
                   "--workdir", str(work), "--dim", str(DIM)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            sizes[str(n)] = json.loads(child_out.read_text())
            print(f"{n:,} videos: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    doc = {**machine(), "data": __doc__.split("\n\n")[1], "settings": asdict(IndexSettings()), "runs": args.runs,
           "dim": DIM, "targets": TARGETS, "sizes": sizes, "threshold": threshold(sizes)}
    if args.out.is_file():  # bench/scale_serve.py's figures through the stack stay
        doc["end_to_end"] = json.loads(args.out.read_text()).get("end_to_end", {})
    args.out.write_text(json.dumps(doc, indent=1))
    print_table(sizes)
    print(json.dumps(doc["threshold"], indent=1))
    plot(sizes, args.out.with_suffix(".png"))


def _config(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(k) for k in ("kind", "nlist", "nprobe", "candidates", "ef_search"))


def machine() -> dict[str, Any]:
    import faiss

    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                        "faiss": faiss.__version__, "nice": os.nice(0)}}


if __name__ == "__main__":
    main()
