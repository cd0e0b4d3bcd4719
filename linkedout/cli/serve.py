"""``linkedout serve``, ``linkedout recommend``: the local serving stack and its gRPC client."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "serve", help="serve a work directory's models locally: Triton, the KServe transformer, Feast",
        description="Start the local stack on loopback ports: the real Triton server (or the KServe predictor "
                    "where it cannot run) over W/model_repository, the KServe transformer reading Feast's "
                    "online store in W/feast. Prints where each part listens; stops everything on Ctrl-C or "
                    "SIGTERM. New model versions published into W/model_repository, and videos added to a served "
                    "catalogue (linkedout catalog add), are served "
                    "with no restart.")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                   help="the main job's work directory (model_repository/, feast/)")
    p.add_argument("--model", default="linkedout", help="model NAME served without a routing config")
    p.add_argument("--routing", type=Path, default=None, help="A/B routing config (linkedout ab render)")
    p.add_argument("--prefer", choices=("triton", "kserve"), default="triton",
                   help="the model server: the real tritonserver (default) or the KServe predictor")
    p.add_argument("--http-port", type=int, default=0, help="transformer REST port (default: a free one)")
    p.add_argument("--grpc-port", type=int, default=0, help="transformer gRPC port (default: a free one)")
    p.add_argument("--no-feast", action="store_true", help="do not read histories from W/feast")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("recommend", help="ask the running stack for recommendations over gRPC",
                       description="Query the transformer over gRPC (Open Inference Protocol v2, tritonclient) "
                                   "and print the answer as a table or JSON.")
    p.add_argument("--user", action="append", required=True, dest="users", help="user id (repeat for several)")
    p.add_argument("--k", type=int, default=10, help="results per user (default 10)")
    p.add_argument("--explain", action="store_true", help="also print the layer contributions of each result")
    p.add_argument("--history", default=None,
                   help="explicit history for every user: comma-separated video ids, oldest first (skips Feast)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--url", default=None, help="transformer gRPC host:port (default: from W/serving/stack.json)")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where `linkedout serve` runs")
    p.add_argument("--model", default="linkedout", help="the transformer's model name")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before giving up (default 5)")
    p.set_defaults(func=cmd_recommend)


def cmd_serve(args: argparse.Namespace) -> int:
    from linkedout.serving.local import LocalStack, StackSettings

    settings = StackSettings(workdir=args.workdir, default_model=args.model, routing=args.routing,
                             prefer=args.prefer, http_port=args.http_port, grpc_port=args.grpc_port,
                             use_feast=not args.no_feast)
    stack = LocalStack(settings)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        stack.start()
        info = stack.info
        ms, tr = info["model_server"], info["transformer"]
        print(f"model server ({ms['kind']}, pid {ms['pid']}): gRPC {ms['grpc']}  HTTP {ms['http']}")
        print(f"transformer (pid {tr['pid']}): gRPC {tr['grpc']}  REST {tr['http']}  metrics {tr['metrics']}")
        print(f"feast: {info['feast'] or '(none: histories only from requests)'}")
        print(f"request log: {info['request_log']}")
        print(f"query it:  linkedout recommend --workdir {args.workdir} --user <id> --k 10 [--explain]")
        print("Ctrl-C to stop.", flush=True)
        stack.wait()
    except KeyboardInterrupt:
        print("stopping the local stack", file=sys.stderr)
    finally:
        stack.stop()
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    import numpy as np

    from linkedout.serving.client import RecommendClient, format_table
    from linkedout.serving.local import read_stack

    url = args.url or str(read_stack(args.workdir)["transformer"]["grpc"])
    history = None
    if args.history:
        try:
            ids = [int(x) for x in args.history.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--history: expected comma-separated integer video ids, got {args.history!r}") from None
        history = np.tile(np.asarray(ids, dtype=np.int64), (len(args.users), 1))
    client = RecommendClient(url, model=args.model, timeout=args.timeout)
    try:
        recs = client.recommend(args.users, args.k, history=history, explain=args.explain)
    finally:
        client.close()
    print(json.dumps([r.to_dict() for r in recs], indent=2) if args.json else format_table(recs))
    return 0
