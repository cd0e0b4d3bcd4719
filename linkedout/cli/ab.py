"""``linkedout ab render|status|promote|rollback|analyze|simulate``: A/B experiments and canary rollouts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linkedout.cli.common import Subparsers


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="linkedout", help="InferenceService name (default linkedout)")
    p.add_argument("--namespace", "-n", default="linkedout", help="namespace (default linkedout)")
    p.add_argument("--component", choices=("predictor", "transformer"), default="predictor",
                   help="component whose canary is read or patched (default predictor)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--server", default=None,
                   help="API server URL without credentials, e.g. http://127.0.0.1:8001 of `kubectl proxy`")
    p.add_argument("--json", action="store_true", help="print the status as JSON")


def register(sub: Subparsers) -> None:
    ab = sub.add_parser("ab", help="A/B experiments and canary rollouts (docs/deploy.md)")
    cmds = ab.add_subparsers(dest="ab_command", required=True, metavar="COMMAND")

    p = cmds.add_parser("render", help="experiment file -> the transformer's routing config and the manifests")
    p.add_argument("experiment", type=Path, help="experiment YAML file")
    p.add_argument("--out", type=Path, required=True,
                   help="directory: routing.yaml (the routing config) and manifests.yaml (kubectl apply -f)")
    p.add_argument("--namespace", "-n", default="linkedout", help="namespace of the InferenceService (default linkedout)")
    p.add_argument("--environment", default="production", help="app.kubernetes.io/environment label")
    p.add_argument("--image", default=None, help="transformer image (default: this release's CPU image)")
    p.add_argument("--storage-uri", default=None,
                   help="model repository of the predictor (default: the experiment's storage_uri, else production's)")
    p.add_argument("--canary-percent", type=int, default=None,
                   help="also roll the predictor out as a canary with this share of the traffic")
    p.add_argument("--release", default=None, help="release name on the predictor (a new one makes a new revision)")
    p.add_argument("--routing-only", action="store_true",
                   help="manifests.yaml holds only the routing ConfigMap (change the split, not the model)")
    p.set_defaults(func=cmd_render)

    for name, func, text in (("status", cmd_status, "show the InferenceService's canary and traffic"),
                             ("promote", cmd_promote, "end the canary: 100 %% to the latest revision"),
                             ("rollback", cmd_rollback, "end the canary: 100 %% to the previous revision")):
        p = cmds.add_parser(name, help=text)
        _cluster_args(p)
        if name != "status":
            p.add_argument("--dry-run", action="store_true", help="print the patch, change nothing")
        p.set_defaults(func=func)

    p = cmds.add_parser("analyze", help="per-variant metric with intervals, lift, guardrails, SRM, decision, plot")
    p.add_argument("experiment", type=Path, help="experiment YAML file")
    p.add_argument("--requests", type=Path, nargs="+", required=True,
                   help="request log(s), JSONL; a rotated one's older files (PATH.1, ...) are read with it")
    p.add_argument("--interactions", type=Path, nargs="+", required=True, help="interaction log(s), JSONL")
    p.add_argument("--metrics", type=Path, default=None,
                   help="a scrape of the transformer's /metrics (error rates from its counters)")
    p.add_argument("--mixed-log", action="store_true",
                   help="request logs interleaved with other output (kubectl logs): skip non-record lines")
    p.add_argument("--start", type=int, default=None, help="analysis window start, ms since the epoch")
    p.add_argument("--end", type=int, default=None, help="analysis window end, ms since the epoch")
    p.add_argument("--out", type=Path, default=None, help="directory for analysis.json and analysis.png")
    p.add_argument("--truth", type=Path, default=None,
                   help="JSON with the known true differences (a simulation's truth.json) to draw and check")
    p.set_defaults(func=cmd_analyze)

    p = cmds.add_parser("simulate", help="simulated users against the running transformer (gRPC), or offline")
    p.add_argument("experiment", type=Path, help="experiment YAML file")
    p.add_argument("--out", type=Path, required=True, help="directory: interactions.jsonl, truth.json")
    p.add_argument("--transformer", default=None,
                   help="transformer gRPC address host:port (default: from --stack)")
    p.add_argument("--stack", type=Path, default=None, help="stack.json of `linkedout serve` (W/serving/stack.json)")
    p.add_argument("--data", type=Path, default=None, help="the synthetic dataset the stack serves (its users, topics)")
    p.add_argument("--model-name", default="linkedout", help="the transformer's --model_name")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--max-requests", type=int, default=5000, help="stop after this many requests (default 5000)")
    p.add_argument("--users", type=int, default=None, help="simulate at most this many users")
    p.add_argument("--concurrency", type=int, default=4, help="simulated users in flight at once (default 4)")
    p.add_argument("--k", type=int, default=10, help="recommendations asked per request (default 10)")
    p.add_argument("--no-request-id", action="store_true",
                   help="write interactions without request_id (attribution by time window)")
    p.add_argument("--offline", action="store_true",
                   help="no stack: write both logs from --ctr (e.g. control=0.05,treatment=0.055)")
    p.add_argument("--ctr", default=None, help="offline: per-variant click-through, name=value,...")
    p.add_argument("--offline-users", type=int, default=4000,
                   help="simulated users with --offline (no stack: logs drawn from --ctr; default 4000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated users' choices (default 0)")
    p.set_defaults(func=cmd_simulate)


def _api(args: argparse.Namespace) -> object:
    from linkedout.ab.deploy import ClusterConfigError, custom_objects_api

    try:
        return custom_objects_api(args.kubeconfig, args.context, args.server)
    except ClusterConfigError as e:
        raise ClusterConfigError(f"{e}; name the cluster with --kubeconfig FILE (and --context NAME), the KUBECONFIG "
                                 "variable, or --server URL (e.g. of `kubectl proxy`), or run inside it") from None


def cmd_render(args: argparse.Namespace) -> int:
    from linkedout.ab import deploy, load_experiment
    from linkedout.ab.manifests import dump_all
    from linkedout.ab.routing import routing_yaml
    from linkedout.utils import atomic_write_text

    exp = load_experiment(args.experiment)
    routing = routing_yaml(exp)
    objects = [deploy.render_routing_configmap(routing, namespace=args.namespace)]
    if not args.routing_only:
        kw = {"namespace": args.namespace, "environment": args.environment,
              "storage_uri": args.storage_uri or exp.storage_uri or deploy.ServingDeployment.storage_uri,
              "canary_percent": args.canary_percent, "release": args.release}
        if args.image:
            kw["image"] = args.image
        objects.append(deploy.render_inference_service(**kw))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "routing.yaml", routing)
    atomic_write_text(args.out / "manifests.yaml", dump_all(objects))
    print(f"wrote {args.out / 'routing.yaml'} (experiment {exp.name}: "
          + ", ".join(f"{v.name}={v.model}:{v.version or 'newest'} {share:.0%}"
                      for v, share in zip(exp.arms, exp.shares().values())) + ")")
    print(f"wrote {args.out / 'manifests.yaml'}: kubectl apply -f {args.out / 'manifests.yaml'}")
    return 0


def _print_status(status: object, as_json: bool) -> None:
    from linkedout.ab.rollout import RolloutStatus, format_status

    assert isinstance(status, RolloutStatus)
    print(json.dumps(status.to_dict(), indent=2) if as_json else format_status(status))


def cmd_status(args: argparse.Namespace) -> int:
    from linkedout.ab import rollout

    _print_status(rollout.status(_api(args), args.name, args.namespace), args.json)
    return 0


def _patch_cmd(args: argparse.Namespace, which: str) -> int:
    from linkedout.ab import rollout

    api = _api(args)
    if args.dry_run:
        current = rollout.status(api, args.name, args.namespace)
        make = rollout.promote_patch if which == "promote" else rollout.rollback_patch
        print(json.dumps(make(current.resource_version, args.component), indent=2))
        return 0
    fn = rollout.promote if which == "promote" else rollout.rollback
    _print_status(fn(api, args.name, args.namespace, args.component), args.json)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    return _patch_cmd(args, "promote")


def cmd_rollback(args: argparse.Namespace) -> int:
    return _patch_cmd(args, "rollback")


def with_rotated(paths: list[Path]) -> list[Path]:
    """``paths`` with the older files of each rotated log in front of it (``PATH.N`` ... ``PATH.1``,
    the transformer's ``--request_log_max_mb``), each file once: naming ``requests.jsonl`` reads all of it."""
    from linkedout.utils import rotated_files

    out: dict[Path, None] = {}
    for path in paths:
        for f in rotated_files(path) or [path]:  # a missing file stays, for the reader's own error
            out.setdefault(f.resolve() if f.exists() else f, None)
    if len(out) > len(set(paths)):
        print(f"request logs: {len(out)} files, the rotated ones included")
    return list(out)


def cmd_analyze(args: argparse.Namespace) -> int:
    from linkedout.ab import load_experiment
    from linkedout.ab.analysis import analyze, format_report
    from linkedout.ab.logs import read_interaction_log, read_request_log
    from linkedout.utils import atomic_write_text

    exp = load_experiment(args.experiment)
    requests = read_request_log(with_rotated(args.requests), mixed=args.mixed_log)
    interactions = read_interaction_log(args.interactions)
    metrics_text = args.metrics.read_text(encoding="utf-8") if args.metrics else None
    a = analyze(exp, requests, interactions, start_ms=args.start, end_ms=args.end, metrics_text=metrics_text)
    print(format_report(a))
    truth = None
    if args.truth:
        truth = json.loads(args.truth.read_text(encoding="utf-8")).get("difference")
        for c in a.comparisons:
            if truth and c.treatment in truth:
                t = truth[c.treatment]
                inside = c.difference.ci[0] <= t <= c.difference.ci[1]
                print(f"true difference {c.treatment}: {t:+.5f} {'inside' if inside else 'OUTSIDE'} the "
                      f"fixed-horizon interval [{c.difference.ci[0]:+.5f}, {c.difference.ci[1]:+.5f}]")
    if args.out:
        from linkedout.ab.plot import plot_analysis

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "analysis.json", json.dumps(a.to_dict(), indent=2))
        plot_analysis(a, args.out / "analysis.png", truth=truth, p99_limit_ms=exp.guardrails.p99_latency_ms)
        print(f"wrote {args.out / 'analysis.json'} and {args.out / 'analysis.png'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from linkedout.ab import load_experiment, simulate
    from linkedout.utils import atomic_write_text

    exp = load_experiment(args.experiment)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.offline:
        if not args.ctr:
            raise ValueError("--offline needs --ctr name=value,... for every variant")
        ctr = {}
        for part in args.ctr.split(","):
            name, _, value = part.partition("=")
            ctr[name.strip()] = float(value)
        missing = [a.name for a in exp.arms if a.name not in ctr]
        if missing:
            raise ValueError(f"--ctr has no value for variant(s) {', '.join(missing)}")
        offline_truth = simulate.synthetic_logs(exp, args.out, users=args.offline_users, ctr=ctr, seed=args.seed,
                                                with_request_id=not args.no_request_id)
        print(json.dumps(offline_truth, indent=2))
        print(f"wrote {args.out / 'requests.jsonl'} and {args.out / 'interactions.jsonl'}")
        return 0
    address = args.transformer
    if address is None:
        if args.stack is None:
            raise ValueError("give --transformer HOST:PORT or --stack W/serving/stack.json")
        address = transformer_address(args.stack)
    if args.data is None:
        raise ValueError("--data (the synthetic dataset the stack serves) is needed for the click model")
    users = simulate.load_simulated_users(args.data, max_users=args.users, seed=args.seed)
    truth = simulate.run_users(simulate.grpc_recommender(address, args.model_name), users,
                               args.out / "interactions.jsonl", k=args.k, duration_s=args.duration,
                               max_requests=args.max_requests, concurrency=args.concurrency,
                               with_request_id=not args.no_request_id, seed=args.seed)
    d = truth.to_dict(exp.control_arm.name)
    d["difference"] = d.get("ctr_difference", {})
    atomic_write_text(args.out / "truth.json", json.dumps(d, indent=2))
    print(json.dumps(d, indent=2))
    if truth.requests == 0:
        raise ValueError(f"no request to {address} succeeded: {truth.failure_examples[:1]}")
    return 0


def transformer_address(stack_json: Path) -> str:
    """The transformer's gRPC ``host:port`` from ``stack.json`` of ``linkedout serve``.

    Accepts ``{"transformer": {"grpc": "127.0.0.1:8081"}}`` or ``{"transformer": {"host": ..., "grpc_port": ...}}``.
    """
    try:
        info = json.loads(Path(stack_json).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{stack_json} not found: is `linkedout serve` running?") from None
    t = info.get("transformer") if isinstance(info, dict) else None
    if isinstance(t, dict):
        if isinstance(t.get("grpc"), str):
            return str(t["grpc"]).removeprefix("grpc://")
        if "grpc_port" in t:
            return f"{t.get('host', '127.0.0.1')}:{t['grpc_port']}"
    raise ValueError(f"{stack_json}: no transformer gRPC address (expected transformer.grpc or "
                     "transformer.grpc_port); pass --transformer HOST:PORT")
