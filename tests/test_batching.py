"""Coalescing concurrent calls (linkedout.serving.batching): lone calls go at once, concurrent ones share."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from conftest import ServingRepo
from test_serving import OnnxRanker, StoreHistories, make_engine

from linkedout.serving.batching import Coalescer
from linkedout.serving.engine import RecResult
from linkedout.serving.request import RecRequest

T = TypeVar("T")


class Recorder:
    """A batch call that records its batches and holds each one until released."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError(f"store down while reading {self.fail_on}")
        return [i * 10 for i in items]

    async def release(self, n: int) -> None:
        """Wait until call ``n`` (0-based) has started, then let it return."""
        for _ in range(200):
            if len(self.gates) > n:
                self.gates[n].set()
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"call {n} never started; batches so far {self.batches}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def test_a_lone_call_goes_out_at_once_alone() -> None:
    async def main() -> None:
        rec = Recorder()
        c = Coalescer(rec, name="t", max_size=8)
        task = asyncio.create_task(c(3))
        await rec.release(0)
        assert await task == 30
        task = asyncio.create_task(c(4))
        await rec.release(1)
        assert await task == 40
        assert rec.batches == [[3], [4]]

    run(main())


def test_calls_made_while_one_is_in_flight_share_the_next_call() -> None:
    async def main() -> None:
        rec = Recorder()
        c = Coalescer(rec, name="t", max_size=8)
        first = asyncio.create_task(c(1))
        await asyncio.sleep(0.01)  # call 0 is in flight
        rest = [asyncio.create_task(c(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0.01)
        assert rec.batches == [[1]]  # the others wait for it
        await rec.release(0)
        await rec.release(1)
        assert await first == 10
        assert [await t for t in rest] == [20, 30, 40]  # each caller gets its own answer
        assert rec.batches == [[1], [2, 3, 4]]

    run(main())


def test_a_batch_is_bounded_by_max_size_in_size_units() -> None:
    async def main() -> None:
        batches: list[list[list[str]]] = []

        async def read(items: list[list[str]]) -> list[int]:
            batches.append(items)
            await asyncio.sleep(0.01)
            return [len(i) for i in items]

        c = Coalescer(read, name="t", max_size=4, size=len)
        first = asyncio.create_task(c(["a"]))
        await asyncio.sleep(0.001)
        rest = [asyncio.create_task(c(["u"] * n)) for n in (3, 2, 1, 6)]
        assert await first == 1
        assert [await t for t in rest] == [3, 2, 1, 6]
        sizes = [sum(len(i) for i in b) for b in batches]
        assert batches[0] == [["a"]]
        assert all(s <= 4 for s, b in zip(sizes, batches) if len(b) > 1)  # an item over max goes alone
        assert sorted(len(i) for b in batches[1:] for i in b) == [1, 2, 3, 6]

    run(main())


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_call_works() -> None:
    async def main() -> None:
        rec = Recorder(fail_on=3)
        c = Coalescer(rec, name="t", max_size=8)
        first = asyncio.create_task(c(1))
        await asyncio.sleep(0.01)
        joined = [asyncio.create_task(c(i)) for i in (2, 3)]
        await rec.release(0)
        await rec.release(1)
        assert await first == 10
        for t in joined:
            with pytest.raises(ConnectionError, match="store down"):
                await t
        later = asyncio.create_task(c(5))
        await rec.release(2)
        assert await later == 50

    run(main())


def test_a_caller_cancelled_while_waiting_is_left_out() -> None:
    async def main() -> None:
        rec = Recorder()
        c = Coalescer(rec, name="t", max_size=8)
        first = asyncio.create_task(c(1))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(c(2))
        stays = asyncio.create_task(c(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        await rec.release(0)
        await rec.release(1)
        assert await first == 10 and await stays == 30
        assert rec.batches == [[1], [3]]

    run(main())


def test_a_call_waits_for_those_on_their_way_within_the_window_and_never_without_them() -> None:
    async def main() -> None:
        batches: list[list[int]] = []

        async def call(items: list[int]) -> list[int]:
            batches.append(list(items))
            return items

        on_the_way = 2
        c = Coalescer(call, name="t", max_size=8, on_the_way=lambda: on_the_way, max_wait=5.0)
        first = asyncio.create_task(c(1))
        await asyncio.sleep(0.02)
        assert batches == []  # waiting for the two on their way
        on_the_way = 1
        second = asyncio.create_task(c(2))
        await asyncio.sleep(0.02)
        on_the_way = 0
        third = asyncio.create_task(c(3))
        assert [await first, await second, await third] == [1, 2, 3]
        assert batches == [[1, 2, 3]]  # one call, as soon as the last one arrived

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await c(4) == 4  # nobody on the way: no wait
        assert loop.time() - t0 < 0.5 and batches[-1] == [4]

        on_the_way = 5  # they never come: the window bounds the wait
        window = Coalescer(call, name="t", max_size=8, on_the_way=lambda: on_the_way, max_wait=0.05)
        t0 = loop.time()
        assert await window(5) == 5
        assert 0.04 <= loop.time() - t0 < 1.0

    run(main())


def test_a_batch_call_answering_the_wrong_count_is_an_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    with pytest.raises(RuntimeError, match="answered 0 results for 1 items"):
        run(Coalescer(short, name="t", max_size=8)(1))


def test_max_size_must_be_positive() -> None:
    async def call(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="max_size must be >= 1"):
        Coalescer(call, name="t", max_size=0)
    with pytest.raises(ValueError, match="max_wait must be >= 0 s"):
        Coalescer(call, name="t", max_size=1, max_wait=-1)


# ------------------------------------------------------------------------------------------ in the engine


class CountingRanker(OnnxRanker):
    """The in-process ranker, counting its calls and the users in each."""

    def __init__(self, repository: Path) -> None:
        super().__init__(repository)
        self.calls: list[int] = []

    async def __call__(self, model: str, version: int, history: np.ndarray, history_emb: np.ndarray) -> np.ndarray:
        self.calls.append(len(history))
        await asyncio.sleep(0.005)  # a call takes a while: the next requests arrive meanwhile
        return await super().__call__(model, version, history, history_emb)


class CountingStore(StoreHistories):
    def __init__(self, histories: dict[str, list[int]]) -> None:
        super().__init__(histories, delay=0.005)
        self.reads: list[int] = []

    def get(self, user_ids: list[str]) -> list[list[int]]:
        self.reads.append(len(user_ids))
        return super().get(user_ids)


def toy_users_and_answers(serving_repo: ServingRepo, n: int) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """The toy split's first ``n`` test users' histories, and the top 10 each gets when asking alone."""
    split = serving_repo.toy.split
    users = {str(u): [int(split.item_ids[r]) for r in h[h > 0]] for u, h in
             zip(split.test.user_ids[:n], split.test.histories[:n])}
    alone = make_engine(serving_repo, histories=StoreHistories(users))
    try:
        expected = {u: asyncio.run(alone.recommend(RecRequest([u], 10, None, False))).items[0].tolist()
                    for u in users}
    finally:
        alone.close()
    return users, expected


def test_concurrent_requests_share_feast_reads_and_ranker_calls_and_get_their_own_answers(
        serving_repo: ServingRepo) -> None:
    users, expected = toy_users_and_answers(serving_repo, 16)
    engine = make_engine(serving_repo, histories=CountingStore(users))
    ranker = engine.ranker = CountingRanker(serving_repo.root)

    async def all_at_once() -> list[RecResult]:
        return await asyncio.gather(*(engine.recommend(RecRequest([u], 10, None, False)) for u in users))

    results = asyncio.run(all_at_once())
    engine.close()
    for u, res in zip(users, results):
        assert res.user_ids == [u] and res.items[0].tolist() == expected[u]
    store = engine.histories
    assert isinstance(store, CountingStore)
    assert sum(store.reads) == 16 and len(store.reads) < 16  # users read together
    assert sum(ranker.calls) == 16 and len(ranker.calls) < 16 and max(ranker.calls) > 1


def test_coalesced_ranker_calls_never_exceed_the_rankers_batch_in_users(serving_repo: ServingRepo) -> None:
    """Requests of several users each: a joined call holds at most ``max_ranker_batch`` users (Triton refuses
    a batch over its max_batch_size), and every user gets the answer it gets alone."""
    users, expected = toy_users_and_answers(serving_repo, 18)
    engine = make_engine(serving_repo, histories=CountingStore(users))
    engine.max_ranker_batch = 6
    ranker = engine.ranker = CountingRanker(serving_repo.root)
    groups = [list(users)[i:i + 4] for i in range(0, len(users), 4)]  # 4 requests of 4 users, 1 of 2

    async def all_at_once() -> list[RecResult]:
        return await asyncio.gather(*(engine.recommend(RecRequest(g, 10, None, False)) for g in groups))

    results = asyncio.run(all_at_once())
    engine.close()
    for g, res in zip(groups, results):
        assert res.user_ids == g and [row.tolist() for row in res.items] == [expected[u] for u in g]
    assert sum(ranker.calls) == 18 and max(ranker.calls) <= 6, ranker.calls
