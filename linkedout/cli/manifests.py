"""``linkedout manifests list|render|validate``: the kustomize overlays, rendered and checked offline.

``render --write`` regenerates the top-level files of ``manifests/`` (the default deployment, for
``kubectl apply -f manifests/``) from the kustomize sources; ``render --check`` fails while they are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from linkedout.cli.common import Subparsers

#: The name ``validate`` gives the top-level files of ``manifests/`` (what ``kubectl apply -f manifests/`` applies).
TOP_LEVEL = "top-level"


def register(sub: Subparsers) -> None:
    m = sub.add_parser("manifests", help="render and validate the Kubernetes manifests (docs/deploy.md)")
    cmds = m.add_subparsers(dest="manifests_command", required=True, metavar="COMMAND")

    p = cmds.add_parser("list", help="the overlays that can be rendered")
    p.add_argument("--root", type=Path, default=None, help="manifests directory (default: this tree's)")
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("render", help="kubectl kustomize OVERLAY: a YAML stream for kubectl apply -f; or, with "
                        "--write/--check, manifests/'s top-level files (kubectl apply -f manifests/)")
    p.add_argument("overlay", nargs="?", help="staging | production | canary | jobs/train | a directory")
    p.add_argument("--root", type=Path, default=None, help="manifests directory (default: this tree's)")
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    top = p.add_mutually_exclusive_group()
    top.add_argument("--write", action="store_true",
                     help="regenerate manifests/'s top-level files from the default overlay (production)")
    top.add_argument("--check", action="store_true",
                     help="exit 1, naming each file, if manifests/'s top-level files are not what --write writes")
    p.set_defaults(func=cmd_render)

    p = cmds.add_parser("validate", help="schemas (strict) and rules of every object of the overlays and of "
                        "manifests/'s top-level files")
    p.add_argument("overlays", nargs="*", help=f"overlays, or {TOP_LEVEL!r} for manifests/'s top-level files "
                   "(default: all of them)")
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

    if args.write or args.check:
        if args.overlay or args.out:
            raise ValueError("--write and --check generate manifests/'s top-level files from the default overlay: "
                             "give no OVERLAY and no --out")
        return _top_level(args.root, check=args.check)
    if not args.overlay:
        raise ValueError("give an OVERLAY to render, or --write / --check for manifests/'s top-level files")
    text = render_text(args.overlay, args.root)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}: kubectl apply -f {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _top_level(root: Path | None, check: bool) -> int:
    from linkedout.ab.manifests import DEFAULT_OVERLAY, manifests_dir, top_level_problems, write_top_level

    d = manifests_dir(root)
    if check:
        problems = top_level_problems(d)
        for p in problems:
            print(p)
        if problems:
            print(f"{d} is stale: regenerate it with `linkedout manifests render --write`", file=sys.stderr)
            return 1
        print(f"{d}: current (overlays/{DEFAULT_OVERLAY})")
        return 0
    changed = write_top_level(d)
    for path in changed:
        print(f"{'wrote' if path.exists() else 'removed'} {path}")
    print(f"{d}: {'current' if not changed else 'regenerated'} from overlays/{DEFAULT_OVERLAY}; deploy with "
          f"kubectl apply -f {d}", file=sys.stderr)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from linkedout.ab.manifests import overlays, read_top_level, render
    from linkedout.ab.validate import default_schemas_dir, validate_objects

    schemas = args.schemas or default_schemas_dir()
    if schemas is None:
        raise FileNotFoundError("no custom-resource schemas: pass --schemas DIR (../shared/k8s-schemas)")
    names = args.overlays or [*overlays(args.root), TOP_LEVEL]
    failed = 0
    for name in names:
        objects = read_top_level(args.root) if name == TOP_LEVEL else render(name, args.root)
        problems = validate_objects(objects, schemas)
        print(f"{name}: {len(objects)} objects, " + ("valid" if not problems else f"{len(problems)} problem(s)"))
        for p in problems:
            print(f"  {p}")
        failed += bool(problems)
    return 1 if failed else 0
