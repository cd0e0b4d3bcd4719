"""Malformed requests against the transformer: status codes per kind, and valid requests answered after.

    python bench/fuzz_serve.py [--workdir runs/bench-fuzz] [--grpc 10000] [--rest 1000] [--seed 18]

Fires ``--grpc`` malformed gRPC requests (raw bytes through a gRPC channel: undecodable and
truncated protobufs, and well-formed ModelInfer requests whose tensors lie) and ``--rest``
malformed REST bodies (bad JSON, wrong types, binary-extension bodies with lying lengths), the
kinds of ``tests/fuzz_requests.py`` in turn, one at a time, each with a ``--timeout`` deadline.
Every ``--check_every`` requests a valid gRPC and a valid REST request must be answered.

The stack: the one running for ``--workdir`` (``linkedout serve --workdir W``), else one started
here (``LocalStack``, ``--prefer`` model server) over a small catalogue that ``bench/serve.py``'s
``build`` writes into ``--workdir`` (``--videos``, ``--users`` with a Feast history each).

Prints a table (per kind: requests, status codes, those outside what the kind must get) and writes
``bench/results/fuzz_serve.json`` (``--out``). A kind is "bad" when any request got UNKNOWN,
INTERNAL, a timeout or an HTTP 5xx; "unexpected" counts answers outside the kind's ``expect``.
Every server listens on 127.0.0.1; the loop is bounded in count and each call in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
import fuzz_requests as fz  # noqa: E402  (the generators live with the tests, which run a sample of them)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-fuzz")
    p.add_argument("--grpc", type=int, default=10_000, help="malformed gRPC requests")
    p.add_argument("--rest", type=int, default=1_000, help="malformed REST requests")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of each call (s): past it is a hang")
    p.add_argument("--check_every", type=int, default=500, help="a valid request after this many malformed ones")
    p.add_argument("--videos", type=int, default=400, help="catalogue size of a stack started here")
    p.add_argument("--users", type=int, default=1_000, help="users with a Feast history in a stack started here")
    p.add_argument("--prefer", choices=("triton", "kserve"), default="kserve")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz_serve.json")
    return p.parse_args(argv)


def endpoints(args: argparse.Namespace) -> tuple[str, str, Any]:
    """(gRPC host:port, REST base URL, the stack started here or None)."""
    from linkedout.serving.local import LocalStack, StackError, StackSettings, read_stack

    try:
        info = read_stack(args.workdir)
        print(f"using the stack running for {args.workdir}", flush=True)
        return info["transformer"]["grpc"], info["transformer"]["http"], None
    except StackError:
        pass
    from serve import build  # bench/serve.py: the ranker over a random catalogue and a Feast store

    build(args.workdir, args.videos, args.users)
    stack = LocalStack(StackSettings(workdir=args.workdir, prefer=args.prefer))
    t0 = time.perf_counter()
    stack.start()
    print(f"stack up in {time.perf_counter() - t0:.1f} s ({stack.info['model_server']['kind']})", flush=True)
    return stack.info["transformer"]["grpc"], stack.info["transformer"]["http"], stack


class Tally:
    """Status codes per kind, the answers outside each kind's expectation, and one example of each."""

    def __init__(self) -> None:
        self.codes: dict[str, Counter[str]] = {}
        self.unexpected: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.slowest_ms = 0.0

    def add(self, kind: str, code: str, expected: bool, detail: str, ms: float) -> None:
        self.codes.setdefault(kind, Counter())[code] += 1
        self.slowest_ms = max(self.slowest_ms, ms)
        if not expected:
            self.unexpected[kind] += 1
            self.examples.setdefault(kind, f"{code}: {detail[:160]}")


def is_bad(code: str) -> bool:
    return code in fz.BAD_GRPC or code == "0" or code.startswith("5")


def fire(args: argparse.Namespace, grpc_url: str, http_url: str) -> tuple[Tally, Tally, list[str]]:
    target = fz.Target()
    grpc_kinds, rest_kinds = list(fz.GRPC_KINDS), list(fz.REST_KINDS)
    g_tally, r_tally, checks = Tally(), Tally(), []
    with grpc.insecure_channel(grpc_url) as channel:
        total = args.grpc + args.rest
        for i in range(total):
            t0 = time.perf_counter()
            if i < args.grpc:
                kind = grpc_kinds[i % len(grpc_kinds)]
                case = fz.grpc_case(kind, args.seed, i // len(grpc_kinds), target)
                code, detail, _ = fz.send_grpc(channel, case.method, case.body, args.timeout)
                g_tally.add(kind, code, code in case.expect, detail, (time.perf_counter() - t0) * 1e3)
            else:
                j = i - args.grpc
                kind = rest_kinds[j % len(rest_kinds)]
                rcase = fz.rest_case(kind, args.seed, j // len(rest_kinds), target)
                status, body = fz.send_rest(http_url, "POST", rcase.path, rcase.body, rcase.headers, args.timeout)
                r_tally.add(kind, str(status), status in rcase.expect, body.decode("utf-8", "replace"),
                            (time.perf_counter() - t0) * 1e3)
            if (i + 1) % args.check_every == 0 or i + 1 == total:
                problems = [p for p in (fz.valid_grpc_answer(channel, target, args.timeout),
                                        fz.valid_rest_answer(http_url, target, args.timeout)) if p]
                checks.append(f"after {i + 1}: " + ("; ".join(problems) if problems else "answered"))
                print(f"  {i + 1:>6} sent; valid requests: {'; '.join(problems) or 'answered'}", flush=True)
    return g_tally, r_tally, checks


def table(title: str, tally: Tally) -> list[str]:
    lines = [f"{title:<32} {'n':>5}  {'unexp':>5}  codes", "-" * 100]
    for kind, codes in tally.codes.items():
        mark = " BAD" if any(is_bad(c) for c in codes) else ""
        shown = ", ".join(f"{c} {n}" for c, n in codes.most_common())
        lines.append(f"{kind:<32} {sum(codes.values()):>5}  {tally.unexpected[kind]:>5}  {shown}{mark}")
        if kind in tally.examples:
            lines.append(f"{'':<46}e.g. {tally.examples[kind]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")
    grpc_url, http_url, stack = endpoints(args)
    try:
        t0 = time.perf_counter()
        g_tally, r_tally, checks = fire(args, grpc_url, http_url)
        elapsed = time.perf_counter() - t0
    finally:
        if stack is not None:
            stack.stop()
    print("\n".join(["", *table("gRPC kind", g_tally), "", *table("REST kind", r_tally), ""]))
    bad = {kind: dict(codes) for tally in (g_tally, r_tally) for kind, codes in tally.codes.items()
           if any(is_bad(c) for c in codes)}
    answered = all(c.endswith("answered") for c in checks)
    summary = {"grpc_requests": args.grpc, "rest_requests": args.rest, "kinds": len(g_tally.codes) + len(r_tally.codes),
               "bad_answers": sum(n for codes in bad.values() for c, n in codes.items() if is_bad(c)),
               "unexpected_answers": sum(g_tally.unexpected.values()) + sum(r_tally.unexpected.values()),
               "valid_requests_answered_after": answered, "seconds": round(elapsed, 1),
               "slowest_call_ms": round(max(g_tally.slowest_ms, r_tally.slowest_ms), 1)}
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    result = {"setup": {"seed": args.seed, "timeout_s": args.timeout, "grpc": grpc_url, "http": http_url,
                        "cpus": os.cpu_count()},
              "summary": summary, "grpc": {k: dict(v) for k, v in g_tally.codes.items()},
              "rest": {k: dict(v) for k, v in r_tally.codes.items()},
              "unexpected": {**dict(g_tally.unexpected), **dict(r_tally.unexpected)},
              "examples": {**g_tally.examples, **r_tally.examples}, "checks": checks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if answered and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
