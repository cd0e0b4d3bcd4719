"""Malformed requests against the served transformer: a clean refusal every time, and service goes on.

The transformer and the KServe fallback predictor run on loopback over the toy repository
(``served_transformer`` in conftest.py: ``LocalStack``, no Feast, every user cold start). A bounded, seeded fuzzer (``fuzz_requests``: the
generators ``bench/fuzz_serve.py`` fires by the thousand) sends each kind of malformed request over
gRPC (raw bytes through a channel, so undecodable protobufs reach the server as they are) and REST.
Each must get the status its kind calls for (INVALID_ARGUMENT / HTTP 400 naming the input for a
malformed tensor; never UNKNOWN, INTERNAL, HTTP 5xx or a hang), and a valid request is answered
after each kind. A failure prints the seed, the kind and the case index:
``fuzz_requests.grpc_case(kind, seed, index)`` rebuilds that request; ``LINKEDOUT_FUZZ_SEED`` picks
another seed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import fuzz_requests as fz
import grpc
import pytest

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("LINKEDOUT_FUZZ_SEED", "18"))
PER_KIND = 24  # 32 gRPC kinds and 16 REST kinds: 1,152 requests, and a valid one after each kind
DEADLINE_S = 5.0  # per call: past it is a hang
TARGET = fz.Target()  # the transformer's default limits (max_batch_size 64, history 1000)


@pytest.fixture
def channel(served_transformer: dict[str, Any]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served_transformer["grpc"]) as ch:
        yield ch


@pytest.mark.parametrize("method", ["ModelInfer", *fz.OTHER_RPCS])
def test_undecodable_bytes_are_invalid_argument_naming_the_rpc(channel: grpc.Channel, method: str) -> None:
    for body in (b"\x0a\x05ab", b"\xff" * 9, b"\x0a"):  # a length past the end, a bad tag, a cut field
        code, details, _ = fz.send_grpc(channel, method, body, DEADLINE_S)
        assert code == "INVALID_ARGUMENT", f"{method} {body!r}: {code} {details}"
        assert f"{method}: the request is not a valid protobuf message" in details
    assert not fz.valid_grpc_answer(channel, TARGET, DEADLINE_S)


def fuzz(kinds: list[str], attempt: Callable[[str, int], str], answered: Callable[[], str]) -> None:
    """``attempt(kind, i)`` for the first cases of each kind ('' or what went wrong), then a valid request
    (``answered()``: '' or what went wrong); all within 60 s."""
    failures: list[str] = []
    t0 = time.monotonic()
    for kind in kinds:
        failures += [f"seed {SEED} kind {kind} #{i}: {problem}" for i in range(PER_KIND) if (problem := attempt(kind, i))]
        problem = answered()
        assert not problem, f"after kind {kind} (seed {SEED}): {problem}"
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:20])
    assert time.monotonic() - t0 < 60


def test_malformed_grpc_requests_are_refused_never_unknown_or_internal(channel: grpc.Channel) -> None:
    def attempt(kind: str, i: int) -> str:
        case = fz.grpc_case(kind, SEED, i, TARGET)
        code, details, _ = fz.send_grpc(channel, case.method, case.body, DEADLINE_S)
        if code in case.expect and (code == "OK" or case.names in details):
            return ""
        return f"{case.method} got {code} (expected {sorted(case.expect)} naming {case.names!r}): {details[:200]}"

    fuzz(list(fz.GRPC_KINDS), attempt, lambda: fz.valid_grpc_answer(channel, TARGET, DEADLINE_S))


def test_malformed_rest_bodies_are_4xx_never_5xx(served_transformer: dict[str, Any]) -> None:
    http = served_transformer["http"]

    def attempt(kind: str, i: int) -> str:
        case = fz.rest_case(kind, SEED, i, TARGET)
        status, body = fz.send_rest(http, "POST", case.path, case.body, case.headers, DEADLINE_S)
        text = body.decode("utf-8", "replace")
        if status in case.expect and case.names in text:
            return ""
        return f"HTTP {status} (expected {sorted(case.expect)} naming {case.names!r}): {text[:200]}"

    fuzz(list(fz.REST_KINDS), attempt, lambda: fz.valid_rest_answer(http, TARGET, DEADLINE_S))
