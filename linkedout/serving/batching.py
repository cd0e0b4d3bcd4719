"""Concurrent calls to one dependency joined into one call: the transformer's Feast reads and Triton calls.

A ``Coalescer`` wraps a batch function ``run(items) -> results`` (one result per item, in order). A
call made while no call of the same coalescer is in flight goes out after one turn of the event
loop (``asyncio.sleep(0)``), with the calls that reached the coalescer in that turn: with one
client nothing else is ready and it goes out alone at once (no timer, no window to wait out). When
the caller knows more calls are on their way (``on_the_way``: for the Triton call, requests of the
same process still reading Feast), that first call waits for them, at most ``max_wait`` seconds:
a bounded window that only opens under concurrency.
Calls made while one is in flight wait; when it returns, everything that waited goes out together
as the next call (up to ``max_size``; what does not fit goes in the call after). So the batches are
as large as the concurrency makes them and no larger, and no request waits for more than the call
in flight plus its own. This is how the transformer turns 8 concurrent users into one Feast read and one Triton
call instead of eight of each (``bench/serve.py`` measures it).

A failed batch call fails every caller in it with the same exception; a caller cancelled while it
waits (its client went away) is dropped from its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from linkedout.serving import metrics

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Join calls that arrive while one is in flight (see the module docstring).

    Args:
        run: the batch call: ``await run(items) -> results``, ``len(results) == len(items)``.
        name: what is called, for the batch-size histogram (``linkedout_coalesced_batch_size``).
        max_size: most size units per call (``size`` of each item summed, e.g. users).
        size: the size of one item (default 1).
        on_the_way: how many calls are known to be on their way (e.g. requests still reading
            Feast, for the Triton call); while there are some, a call that would go out alone
            waits for them, up to ``max_wait`` seconds. None: never wait beyond the loop turn.
        max_wait: the longest such wait (the batching window), seconds.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], *, name: str, max_size: int,
                 size: Callable[[T], int] | None = None, on_the_way: Callable[[], int] | None = None,
                 max_wait: float = 0.0) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 s, got {max_wait}")
        self._run = run
        self.name = name
        self.max_size = max_size
        self._size = size or (lambda _item: 1)
        self._busy = False
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._on_the_way = on_the_way
        self.max_wait = max_wait
        self._arrival: asyncio.Future[None] | None = None  # set while the next call waits for arrivals

    async def __call__(self, item: T) -> R:
        if self._busy:  # a call is in flight (or waiting to go): go with the next one
            fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, fut))
            if self._arrival is not None and not self._arrival.done():
                self._arrival.set_result(None)
            return await fut
        self._busy = True
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiting.append((item, fut))
        try:  # one turn of the event loop: requests whose next step is ready now reach this call and join it
            await asyncio.sleep(0)
            if self._on_the_way is not None and self.max_wait > 0:
                await self._linger(loop)
        finally:
            self._drainer = loop.create_task(self._drain())  # kept: the loop holds tasks weakly
        return await fut

    async def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, at most ``max_wait``, while calls are on their way and the batch is not full."""
        assert self._on_the_way is not None
        deadline = loop.time() + self.max_wait
        while self._on_the_way() > 0 and len(self._waiting) < self.max_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrival = loop.create_future()
            try:
                await asyncio.wait_for(self._arrival, remaining)
            except TimeoutError:
                return
            finally:
                self._arrival = None

    async def _call(self, items: list[T]) -> Sequence[R]:
        metrics.child(metrics.COALESCED, self.name).observe(len(items))
        results = await self._run(items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: the batch call answered {len(results)} results for {len(items)} items")
        return results

    def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        total = 0
        while self._waiting:
            item, fut = self._waiting[0]
            if fut.done():  # cancelled while waiting
                self._waiting.pop(0)
                continue
            size = self._size(item)
            if batch and total + size > self.max_size:
                break
            batch.append(self._waiting.pop(0))
            total += size
        return batch

    async def _drain(self) -> None:
        try:
            while batch := self._next_batch():
                try:
                    results = await self._call([item for item, _ in batch])
                except asyncio.CancelledError:  # the server is stopping
                    for _, fut in batch:
                        fut.cancel()
                    raise
                except Exception as e:  # every caller of the batch gets the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), result in zip(batch, results):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._busy = False
