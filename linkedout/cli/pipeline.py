"""``linkedout pipeline``: compile the Kubeflow pipelines, submit one to a KFP API server, run one locally."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linkedout.cli.common import Subparsers
from pipelines import PIPELINES


def register(sub: Subparsers) -> None:
    p = sub.add_parser("pipeline", help="Kubeflow pipelines: compile, submit, run locally",
                       description="The Kubeflow pipelines of pipelines/ (extract, train_and_deploy, linkedout).")
    sp = p.add_subparsers(dest="pipeline_command", required=True, metavar="COMMAND")

    c = sp.add_parser("compile", help="write a pipeline's YAML (what `kfp run submit -f` takes)",
                      description="Compile a pipeline (or all) to YAML. The images are REGISTRY/NAME:TAG-cpu and "
                                  "-gpu of --image (default $LINKEDOUT_IMAGE or ghcr.io/linkedout/linkedout:0.1.0).")
    c.add_argument("name", choices=(*PIPELINES, "all"), help="the pipeline to compile, or all three")
    c.add_argument("--out", type=Path, default=None, help="YAML file (default pipelines/NAME.yaml; one pipeline only)")
    c.add_argument("--image", default=None, help="REGISTRY/NAME:TAG of the project's images")
    c.set_defaults(func=cmd_compile)

    s = sp.add_parser("submit", help="create a run on a Kubeflow Pipelines API server (kfp.Client)",
                      description="Submit a compiled pipeline: its arguments are checked against the pipeline's "
                                  "parameters first (unknown key, wrong type, missing required one), then the "
                                  "experiment is created or reused and the run created, KFP's cache off.")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://127.0.0.1:8888 (kubectl port-forward "
                                                 "svc/ml-pipeline-ui) or https://kubeflow.example.com/pipeline")
    s.add_argument("--pipeline", default="linkedout",
                   help="one of extract, train_and_deploy, linkedout (their committed YAML) or a YAML file")
    s.add_argument("--experiment", default="linkedout", help="experiment name (created if missing)")
    s.add_argument("--run-name", default=None, help="run name (default: the pipeline and the time)")
    s.add_argument("--namespace", default=None, help="the Kubeflow profile namespace (multi-user installs)")
    s.add_argument("--service-account", default="linkedout-pipeline",
                   help="the runs' service account (default linkedout-pipeline: may create and patch "
                        "InferenceServices, nothing more)")
    s.add_argument("--token", default=None, help="bearer token (else kfp's own credentials)")
    s.add_argument("--pipeline-root", default=None, help="where KFP stores artifacts (default: the server's)")
    s.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="bound on connecting to the API server and on each of its answers (default 30)")
    s.add_argument("params", nargs="*", metavar="KEY=VALUE",
                   help="pipeline arguments, e.g. dataset=/work/microlens-100k epochs=20 canary_percent=5 "
                        "'layers=[0,8,20]'")
    s.set_defaults(func=cmd_submit)

    r = sp.add_parser("run", help="run a pipeline on this machine through kfp.local",
                      description="Run a pipeline through kfp.local (one subprocess per task); `linkedout run` is "
                                  "this for the linkedout pipeline with the embedded default's arguments.")
    r.add_argument("name", choices=PIPELINES, help="the pipeline to run")
    r.add_argument("--workdir", type=Path, required=True, help="work directory (the cluster's work volume)")
    r.add_argument("params", nargs="*", metavar="KEY=VALUE", help="pipeline arguments (workdir is set)")
    r.set_defaults(func=cmd_run_local)


def cmd_compile(args: argparse.Namespace) -> int:
    import pipelines.compile as compile_

    names = list(PIPELINES) if args.name == "all" else [args.name]
    if args.out is not None and len(names) > 1:
        raise ValueError("--out names one file: compile one pipeline at a time")
    for name in names:
        print(compile_.compile_pipeline(name, args.out, args.image))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import pipelines.submit as submit

    package = submit.package_of(args.pipeline)
    arguments = submit.parse_arguments(package, args.params)
    out = submit.submit(args.host, str(package), arguments, experiment=args.experiment, run_name=args.run_name,
                        namespace=args.namespace, service_account=args.service_account, token=args.token,
                        pipeline_root=args.pipeline_root, timeout=args.timeout)
    print(json.dumps(out, indent=2))
    return 0


def cmd_run_local(args: argparse.Namespace) -> int:
    from pipelines.local import run
    from pipelines.submit import package_of, parse_arguments

    package = package_of(args.name)
    arguments = parse_arguments(package, [f"workdir={args.workdir.resolve()}", *args.params])
    outputs = run(args.name, arguments, args.workdir)
    print(json.dumps({k: str(v) for k, v in outputs.items()}, indent=2))
    return 0
