"""The recommendation logic of the transformer, with no server in it, in KServe's three phases.

``RecommendationEngine`` answers a checked ``RecRequest``:

- :meth:`~RecommendationEngine.prepare` (the transformer's ``preprocess``): route every user to a
  variant (``Router``: salted hash, sticky); read the histories of the users without an explicit
  one from the online feature store (``HistorySource``, e.g. Feast's ``user_history:watched``),
  bounded by ``feast_timeout``; per variant's model, take the catalogue version it serves (the
  newest one the predictor has ready, or the version a variant pins), map history video ids to
  catalogue rows (ids not in the catalogue are reported as ``unknown_items``), keep the last ``T``
  rows;
- :meth:`~RecommendationEngine.rank` (``predict``): the users with a history get one ranker call
  per catalogue version (``Ranker``, Triton's ``NAME_ranker`` in the transformer): their history
  rows and those rows' embeddings in, their user states out; then the catalogue's retrieval index
  (``CatalogView.search``: exact below a measured size, ANN above, re-scored exactly) gives each
  user's best rows with the history masked (as many as the answer may need: ``k``, the known
  history, the rows the catalogue state does not know yet), on the retrieval thread or, for a small
  exact index, on the event loop;

Concurrent requests share their calls to the store and the ranker (``linkedout.serving.batching``):
a request that arrives while a Feast read (or a call to the same ranker version) is in flight goes
out with the others that arrived meanwhile, as one read (one call), when it returns; a lone
request goes out at once.
- :meth:`~RecommendationEngine.finish` (``postprocess``): the users without one get the
  catalogue's cold-start list (popular and recent), marked; drop every video of the user's known
  history from the results, keep ``k``, attach the layer gate weights and contributions behind
  each result on request; log one record per user (``RequestLog``) and count the Prometheus
  metrics.

:meth:`~RecommendationEngine.recommend` runs the three in a row. Which catalogue version serves
each model follows the repository (:meth:`~RecommendationEngine.update_served_versions`, the
transformer's background loop).

Failures: a store or predictor outage (or no served version) raises ``ServingUnavailable`` with
what was unreachable; the engine holds no state that an outage breaks, so the next request after
they are back is served normally. The KServe transformer (``linkedout.serving.transformer``)
plugs in the Triton ranker (``linkedout.serving.ranker``) and turns these errors into gRPC / HTTP
statuses; tests plug in an onnxruntime ranker over the same ONNX files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
import threadpoolctl

from linkedout.export.index_kinds import faiss_module
from linkedout.serving import metrics
from linkedout.serving.answer import RecResult, explain, fill, log_records
from linkedout.serving.batching import Coalescer
from linkedout.serving.catalog import CatalogView, ServedCatalogs
from linkedout.serving.request import RecRequest
from linkedout.serving.request_log import RequestLog
from linkedout.serving.routing import Router, RoutingConfig, RoutingError, RoutingVariant
from linkedout.utils import get_logger

log = get_logger(__name__)

__all__ = ["INLINE_ROWS", "HistorySource", "Ranker", "RecPlan", "RecResult", "RecommendationEngine",
           "ServingUnavailable", "VersionReady", "check_routable"]


#: an exact index of at most this many rows is searched on the event loop: its brute-force pass (0.1 ms
#: for one user, 0.6 ms for 4, at 20k rows and d = 64) costs less than a round trip to a thread (a
#: retrieval of 1.18 ms per request on the thread, one client, bench/serve.py) and holds the loop less
#: than that trip's wake-ups under load
INLINE_ROWS = 50_000
_T = TypeVar("_T")


class ServingUnavailable(RuntimeError):
    """A dependency (feature store, predictor) is down or no model version is ready; says which."""

    def __init__(self, reason: str, dependency: str) -> None:
        super().__init__(reason)
        self.dependency = dependency


class HistorySource(Protocol):
    """Users' recent watches: ``get(user_ids) -> [[video id, ...] oldest first, ...]`` ([] = unknown user).

    A source whose ``reads_async`` is true (Feast's Redis store: ``HistoryReader``) is read with its
    ``get_async`` on the event loop instead of ``get`` on a worker thread."""

    def get(self, user_ids: Sequence[str]) -> list[list[int]]: ...


#: ``rank(model, version, history rows (B, T) int64, their embeddings (B, T, d) float32) -> user states (B, d)``.
Ranker = Callable[[str, int, np.ndarray, np.ndarray], Awaitable[np.ndarray]]
#: ``ready(model, version) -> bool``: whether the predictor serves that ranker version now.
VersionReady = Callable[[str, int], Awaitable[bool]]


@dataclass
class _Group:
    """The users of one request served by one catalogue version, and the ranker's answer for them."""

    variant: RoutingVariant
    view: CatalogView
    users: list[int]  # positions in the request
    history_rows: np.ndarray | None = None  # (len(users), T) catalogue rows, left-padded with 0
    warm: list[int] = field(default_factory=list)  # indices into users of those with a known history
    rows: np.ndarray | None = None  # (len(warm), n) the rows the search returned, after rank()
    scores: np.ndarray | None = None  # (len(warm), n) their scores


@dataclass(eq=False)  # compared and hashed by identity (the engine keeps a weak set of them)
class RecPlan:
    """A request between the phases: users routed, histories read and mapped, then ranked."""

    request_id: str
    request: RecRequest
    experiment: str
    variants: list[RoutingVariant]  # per user
    groups: list[_Group]
    seen: list[set[int]]  # per user, the catalogue rows of the known history (never recommended)
    unknown: list[list[int]]  # per user, history video ids not in the catalogue
    cold: np.ndarray  # (B,) bool: no known history
    versions: list[str]  # per user, "NAME_ranker:v"
    started: float  # time.perf_counter() when prepare began


class RecommendationEngine:
    """Everything between a checked request and its answer; see the module docstring."""

    def __init__(self, *, router: Router, catalogs: ServedCatalogs, ranker: Ranker,
                 histories: HistorySource | None = None, request_log: RequestLog | None = None,
                 feast_timeout: float = 0.2, max_k: int = 100, max_ranker_batch: int = 64,
                 batch_window: float = 0.002, retrieval_threads: int | None = None) -> None:
        self.router = router
        self.catalogs = catalogs
        self.ranker = ranker
        self.histories = histories
        self.request_log = request_log
        self.feast_timeout = feast_timeout
        self.max_k = max_k
        #: model -> the catalogue version served by default (set by update_served_versions)
        self.serving: dict[str, int] = {}
        #: model -> why it serves no version any more (the version it served stopped being ready)
        self._lost: dict[str, str] = {}
        # a store without an asyncio client is read on a worker with the deadline, never on the event
        # loop: a local SQLite file hangs too (a lock held on it: ~10 s of busy timeout), and a request
        # that does not read the store (an explicit history, the readiness probe) must not wait behind one
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="feast")
        # ... except a store with an asyncio client (Redis), read on the loop with the same deadline:
        # no thread hop (under 8 concurrent readers a third of the CPU per read: HistoryReader.get_async)
        self._read_async: Callable[[list[str]], Awaitable[list[list[int]]]] | None = (
            getattr(histories, "get_async", None) if getattr(histories, "reads_async", False) else None)
        # retrieval (faiss, which releases the GIL) and the index's refreshes run on one thread of their
        # own, never a refresh during a search; small exact indexes on the loop itself (``_on_index``).
        # ``retrieval_threads`` limits the BLAS and OpenMP threads of a search in both threads that search:
        # idle pool threads spin (2 BLAS threads on 2 cores: 3.7 ms of transformer CPU per request; faiss's
        # OpenMP pool, whose limit holds per calling thread: 4.2 ms), and the concurrency comes from requests
        limit = functools.partial(_limit_threads, retrieval_threads) if retrieval_threads else faiss_module
        limit()  # this thread: the event loop's when the engine is made where it serves (the transformer's load)
        self._retrieval = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval",
                                                                initializer=limit)
        # the thread started, its limits set and faiss loaded here: that holds the GIL ~0.2 s, which on a
        # user's first request ran out the Feast read's deadline (200 ms)
        self._retrieval.submit(lambda: None).result()
        # catalogue loads and rebuilds (O(catalogue)) on a thread of their own, so searches never wait for them
        self._catalogue = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalogue")
        self.max_ranker_batch = max_ranker_batch
        self.batch_window = batch_window
        # requests on their way to the ranker: reading Feast, or prepared and not yet ranked (a plan
        # whose request was dropped leaves the weak set with it)
        self._reading = 0
        self._unranked: weakref.WeakSet[RecPlan] = weakref.WeakSet()
        self._feast_reads: Coalescer[list[str], list[list[int]]] = Coalescer(
            self._read_batch, name="feast", max_size=1024, size=len)
        self._ranker_calls: dict[tuple[str, int], Coalescer[tuple[CatalogView, np.ndarray, int],
                                                            tuple[np.ndarray, np.ndarray]]] = {}
        self._largest_k = max_k
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:12] + "-"

    # -------------------------------------------------------------------------------------- versions

    def view_for(self, variant: RoutingVariant) -> CatalogView:
        version = variant.version if variant.version is not None else self.serving.get(variant.model)
        if version is None:
            why = self._lost.get(variant.model, "yet")
            raise ServingUnavailable(f"no version of model {variant.model!r} is ready to serve {why}", "predictor")
        try:
            return self.catalogs.view(variant.model, version)
        except Exception as e:  # a pinned version that is not (any more) in the repository, an unreadable file
            raise ServingUnavailable(f"variant {variant.name!r}: the catalogue of {variant.model}_ranker version "
                                     f"{version} cannot be read: {type(e).__name__}: {e}", "predictor") from e

    def largest_k(self) -> int:
        """The largest k a request may ask for now: ``max_k`` capped by the smallest served catalogue
        (worked out when the served versions change)."""
        return self._largest_k

    def _set_largest_k(self) -> None:
        sizes = [self.catalogs.view(m, v).num_items for m, v in self.serving.items()]
        self._largest_k = min([self.max_k, *sizes]) if sizes else self.max_k

    async def update_served_versions(self, ready: VersionReady) -> dict[str, int]:
        """Per routed model, serve the newest repository version that ``ready`` reports ready.

        A newer ready version replaces the current one (its catalogue is loaded first); when the
        current one stops being ready (rolled back, unloaded) the newest older ready one takes over.
        The catalogues served (and those pinned) are refreshed first: videos added or removed in place
        are served from then on. Returns ``serving`` (model -> version).
        """
        loop = asyncio.get_running_loop()
        pinned = {(v.model, v.version) for v in self.router.current().variants if v.version is not None}
        changed = False
        for model, version in {*self.serving.items(), *pinned}:
            assert version is not None
            view = self.catalogs.loaded(model, version)
            if view is None:
                continue
            try:  # the copy (S3) and the O(catalogue) rebuild off the retrieval thread: searches go on
                await loop.run_in_executor(self._catalogue, self.catalogs.sync, model, version)
                snap = await self._on_index(view, view.refresh_index)
                if snap is not None:
                    await loop.run_in_executor(self._catalogue, view.apply, snap)
                    changed = True
            except Exception as e:  # a half-copied or unreadable change: keep serving what was read
                log.warning("catalogue %s v%d not refreshed: %s: %s", model, version, type(e).__name__, e)
        if changed:
            self._set_largest_k()
        for model in self.router.current().models:
            current = self.serving.get(model)
            versions = self.catalogs.versions(model)
            chosen = await _newest_ready(model, [v for v in versions if current is None or v >= current], ready)
            if chosen is None and current is not None:  # the current one is gone: fall back
                chosen = await _newest_ready(model, [v for v in versions if v < current], ready)
                if chosen is None:
                    log.warning("%s_ranker: no version is ready any more (was %d)", model, current)
                    self.serving.pop(model, None)
                    self._lost[model] = (f"any more: the predictor does not report {model}_ranker version {current} "
                                         "ready (it is down, or unloaded the version)")
                    self._set_largest_k()
            if chosen is not None and chosen != current:
                # load the catalogue before switching (off the event loop and the retrieval thread:
                # seconds at 10 M videos)
                await loop.run_in_executor(self._catalogue, self.catalogs.view, model, chosen)
                self.serving[model] = chosen
                self._lost.pop(model, None)
                self._set_largest_k()
                for key in [k for k in self._ranker_calls if k[0] == model and k[1] != chosen and k not in pinned]:
                    del self._ranker_calls[key]  # a version no longer served: its (idle) coalescer goes
                log.info("serving %s_ranker version %d (was %s)", model, chosen, current)
        return dict(self.serving)

    # -------------------------------------------------------------------------------------- phases

    async def recommend(self, req: RecRequest, request_id: str | None = None) -> RecResult:
        """The answer to ``req``: :meth:`prepare`, :meth:`rank` and :meth:`finish` in a row."""
        plan = await self.prepare(req, request_id)
        await self.rank(plan)
        return self.finish(plan)

    async def prepare(self, req: RecRequest, request_id: str | None = None) -> RecPlan:
        """Route the users, read their histories (Feast) and map them to catalogue rows."""
        t0 = time.perf_counter()
        cfg = self.router.current()
        variants = [cfg.assign(u) for u in req.user_ids]
        b = len(req.user_ids)
        try:
            histories = req.histories if req.histories is not None else await self._read_histories(req.user_ids)
            groups: dict[tuple[str, int], _Group] = {}
            for i, v in enumerate(variants):
                view = self.view_for(v)
                groups.setdefault((view.model, view.version), _Group(v, view, [])).users.append(i)
        except ServingUnavailable as e:
            _count_error(variants, e)
            raise
        plan = RecPlan(request_id or f"{self._id_prefix}{next(self._ids):x}", req, cfg.experiment, variants, list(groups.values()),
                       [set() for _ in range(b)], [[] for _ in range(b)], np.zeros(b, dtype=bool), [""] * b, t0)
        for g in plan.groups:
            _map_histories(plan, g, histories)
        self._unranked.add(plan)
        return plan

    async def rank(self, plan: RecPlan) -> None:
        """One ranker call per catalogue version with users of a known history (concurrently)."""
        self._unranked.discard(plan)
        try:
            await asyncio.gather(*(self._rank_group(plan, g) for g in plan.groups if g.warm))
        except ServingUnavailable as e:
            _count_error(plan.variants, e)
            raise

    def finish(self, plan: RecPlan) -> RecResult:
        """Keep each user's best ``k`` unseen videos, explain them on request, log and count."""
        b, k = len(plan.variants), plan.request.k
        result = RecResult(plan.request_id, list(plan.request.user_ids), np.full((b, k), -1, dtype=np.int64),
                           np.zeros((b, k), dtype=np.float32), [v.name for v in plan.variants], plan.versions,
                           plan.cold, plan.unknown)
        result_rows = np.zeros((b, k), dtype=np.int64)
        for g in plan.groups:
            st = g.view.rows  # one state of the catalogue for the whole answer
            if g.rows is not None and g.scores is not None:
                for jj, j in enumerate(g.warm):
                    i = g.users[j]
                    fill(i, g.rows[jj], g.scores[jj], plan.seen[i], k, st.ids, result, result_rows)
            for i in g.users:
                if plan.cold[i]:
                    fill(i, st.cold_start_rows[: k + len(plan.seen[i]) + 1], st.cold_start_scores,
                         plan.seen[i], k, st.ids, result, result_rows)
        if plan.request.explain:
            explain(result, [(g.view, g.users) for g in plan.groups], result_rows)
        result.latency_ms = (time.perf_counter() - plan.started) * 1000.0
        self._account(result, plan.experiment, plan.variants, plan.started)
        return result

    # -------------------------------------------------------------------------------------- helpers

    async def _read_histories(self, users: Sequence[str]) -> list[list[int]]:
        if self.histories is None:
            return [[] for _ in users]
        self._reading += 1
        try:
            return await self._feast_reads(list(users))
        finally:
            self._reading -= 1

    async def _read_batch(self, requests: list[list[str]]) -> list[list[list[int]]]:
        """One store read for the users of several requests (a ``Coalescer`` batch), split back."""
        assert self.histories is not None
        users = [u for r in requests for u in r]
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.feast_timeout):  # no task of its own, as wait_for makes
                if self._read_async is not None:  # Redis: its asyncio client, on this loop
                    out = await self._read_async(users)
                else:
                    out = await asyncio.get_running_loop().run_in_executor(self._pool, self.histories.get, users)
        except TimeoutError:
            raise ServingUnavailable(f"the feature store did not answer within {self.feast_timeout * 1000:.0f} ms",
                                     "feast") from None
        except Exception as e:  # the store's own errors: connection refused, missing tables, ...
            raise ServingUnavailable(f"the feature store failed: {type(e).__name__}: {e}", "feast") from e
        finally:
            metrics.FEAST_LATENCY.observe(time.perf_counter() - t0)
        if len(out) != len(users):
            raise ServingUnavailable(f"the feature store answered {len(out)} histories for {len(users)} users", "feast")
        bounds = list(itertools.accumulate(len(r) for r in requests))
        return [out[hi - len(r):hi] for r, hi in zip(requests, bounds)]

    async def _rank_group(self, plan: RecPlan, g: _Group) -> None:
        assert g.history_rows is not None
        key = (g.view.model, g.view.version)
        calls = self._ranker_calls.get(key)
        if calls is None:
            calls = self._ranker_calls[key] = Coalescer(
                lambda parts: self._rank_batch(*key, parts), name="triton", max_size=self.max_ranker_batch,
                size=lambda part: len(part[1]),  # users: Triton refuses a batch over its max_batch_size
                on_the_way=self._on_the_way_to_rank, max_wait=self.batch_window)
        # rows the answer may skip: k are kept, the known history (beyond the T the search excludes) is not
        need = plan.request.k + max(len(plan.seen[g.users[j]]) for j in g.warm)
        g.rows, g.scores = await calls((g.view, g.history_rows[g.warm], need))

    def _on_the_way_to_rank(self) -> int:
        return self._reading + len(self._unranked)

    async def _rank_batch(self, model: str, version: int,
                          parts: list[tuple[CatalogView, np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One ranker call and one retrieval for the users of several requests (a ``Coalescer`` batch), split back.

        The search returns as many rows as the neediest request may skip and keep (its ``k`` and its
        known history), plus the rows added to the index that the catalogue state does not know yet
        (skipped until it does): every answer gets its ``k`` videos wherever the catalogue has them."""
        view = parts[0][0]
        history = parts[0][1] if len(parts) == 1 else np.concatenate([p for _, p, _ in parts], axis=0)
        t0 = time.perf_counter()
        try:
            users = await self.ranker(model, version, history, view.vectors(history))
        except ServingUnavailable:
            raise
        except Exception as e:
            raise ServingUnavailable(f"the ranker {model}_ranker:{version} failed: {type(e).__name__}: {e}",
                                     "predictor") from e
        finally:
            metrics.child(metrics.TRITON_LATENCY, model).observe(time.perf_counter() - t0)
        t1 = time.perf_counter()
        num_rows = view.index.num_rows
        unknown = max(0, num_rows - (view.rows.ids.shape[0] - 1))
        n = min(max(need for _, _, need in parts) + unknown, num_rows)
        rows, scores = await self._on_index(view, view.search, users, n, history)
        metrics.child(metrics.RETRIEVAL_LATENCY, model).observe(time.perf_counter() - t1)
        bounds = list(itertools.accumulate(len(p) for _, p, _ in parts))
        return [(rows[hi - len(p):hi], scores[hi - len(p):hi]) for (_, p, _), hi in zip(parts, bounds)]

    async def _on_index(self, view: CatalogView, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on ``view``'s index: on the event loop itself for an exact index of at most
        ``INLINE_ROWS`` rows, else on the retrieval thread. Rows are only ever added, so an index
        leaves the loop once and for all, and its searches and refreshes never overlap."""
        if view.index.kind == "exact" and view.index.num_rows <= INLINE_ROWS:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._retrieval, fn, *args)

    def _account(self, result: RecResult, experiment: str, variants: Sequence[RoutingVariant], t0: float) -> None:
        elapsed = time.perf_counter() - t0
        by_variant: dict[str, int] = {}
        for i, v in enumerate(variants):
            by_variant[v.name] = by_variant.get(v.name, 0) + 1
            if result.cold_start[i]:
                metrics.child(metrics.COLD_START, v.name).inc()
        for name, count in by_variant.items():
            metrics.child(metrics.REQUESTS, name).inc(count)
            metrics.child(metrics.LATENCY, name).observe(elapsed)
        if self.request_log is not None:  # the records are made on the log's writer thread
            now_ms = int(time.time() * 1000)
            self.request_log.write_later(lambda: log_records(result, experiment, variants, now_ms))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._retrieval.shutdown(wait=False, cancel_futures=True)
        self._catalogue.shutdown(wait=False, cancel_futures=True)
        self.catalogs.close()
        if self.request_log is not None:
            self.request_log.close()


def check_routable(catalogs: ServedCatalogs, config: RoutingConfig) -> None:
    """``RoutingError`` when a variant of ``config`` cannot serve from ``catalogs``: its model has no
    ranker version, or the version it pins does not exist (the Router's check of a changed config)."""
    for v in config.variants:
        versions = catalogs.versions(v.model)
        if not versions:
            raise RoutingError(f"variant {v.name!r}: model {v.model!r} has no ranker version in {catalogs.repository}")
        if v.version is not None and v.version not in versions:
            raise RoutingError(f"variant {v.name!r}: {v.model}_ranker has no version {v.version} "
                               f"(it has {versions})")


def _limit_threads(threads: int) -> None:
    """Limit this thread's BLAS and OpenMP pools (faiss loaded first: threadpoolctl limits the libraries loaded)."""
    faiss_module()
    threadpoolctl.threadpool_limits(threads)


async def _newest_ready(model: str, versions: Sequence[int], ready: VersionReady) -> int | None:
    """The newest of ``versions`` that ``ready`` reports ready (asked newest first), or None."""
    for version in sorted(versions, reverse=True):
        if await ready(model, version):
            return version
    return None


def _count_error(variants: Sequence[RoutingVariant], e: ServingUnavailable) -> None:
    for name in {v.name for v in variants}:
        metrics.ERRORS.labels(variant=name, reason=e.dependency).inc()


def _map_histories(plan: RecPlan, g: _Group, histories: Sequence[Sequence[int]]) -> None:
    """Catalogue rows of each user's history in ``g`` (the last ``T``), unknown ids, cold users."""
    view = g.view
    t = view.max_history
    g.history_rows = np.zeros((len(g.users), t), dtype=np.int64)
    for j, i in enumerate(g.users):
        hist = histories[i]
        found = view.rows_of(hist) if len(hist) else np.zeros(0, dtype=np.int64)
        if not found.all():
            plan.unknown[i].extend(int(v) for v, r in zip(hist, found.tolist()) if r == 0)
        rows = found[found > 0].tolist()
        plan.seen[i] = set(rows)
        plan.versions[i] = f"{g.view.model}_ranker:{g.view.version}"
        if rows:
            last = rows[-t:]
            g.history_rows[j, t - len(last):] = last
            g.warm.append(j)
        else:
            plan.cold[i] = True
