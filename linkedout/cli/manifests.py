"""``linkedout manifests list|render|validate``: the kustomize overlays, rendered and checked offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    m = sub.add_parser("manifests", help="render and validate the Kubernetes manifests (docs/deploy.md)")
    cmds = m.add_subparsers(dest="manifests_command", required=True, metavar="COMMAND")

    p = cmds.add_parser("list", help="the overlays that can be rendered")
    p.add_argument("--root", type=Path, default=None, help="manifests directory (default: this tree's)")
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("render", help="kubectl kustomize OVERLAY: a YAML stream for kubectl apply -f")
    p.add_argument("overlay", help="staging | production | canary | jobs/train | a directory")
    p.add_argument("--root", type=Path, default=None, help="manifests directory (default: this tree's)")
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    p.set_defaults(func=cmd_render)

    p = cmds.add_parser("validate", help="schemas (strict) and rules of every object of the overlays")
    p.add_argument("overlays", nargs="*", help="default: all of them")
    p.add_argument("--root", type=Path, default=None, help="manifests directory (default: this tree's)")
    p.add_argument("--schemas", type=Path, default=None,
                   help="custom-resource schemas (default: ../shared/k8s-schemas beside the repository)")
    p.set_defaults(func=cmd_validate)


def cmd_list(args: argparse.Namespace) -> int:
    from linkedout.ab.manifests import overlays

    for name, path in overlays(args.root).items():
        print(f"{name:<14} {path}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from linkedout.ab.manifests import render_text
    from linkedout.utils import atomic_write_text

    text = render_text(args.overlay, args.root)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}: kubectl apply -f {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from linkedout.ab.manifests import overlays, render
    from linkedout.ab.validate import default_schemas_dir, validate_objects

    schemas = args.schemas or default_schemas_dir()
    if schemas is None:
        raise FileNotFoundError("no custom-resource schemas: pass --schemas DIR (../shared/k8s-schemas)")
    names = args.overlays or list(overlays(args.root))
    failed = 0
    for name in names:
        objects = render(name, args.root)
        problems = validate_objects(objects, schemas)
        print(f"{name}: {len(objects)} objects, " + ("valid" if not problems else f"{len(problems)} problem(s)"))
        for p in problems:
            print(f"  {p}")
        failed += bool(problems)
    return 1 if failed else 0
