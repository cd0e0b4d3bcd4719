"""Compile the pipelines to their YAML (what is in git, what ``kfp run submit -f`` takes)."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path
from typing import Any

from kfp import compiler

from components.images import images
from pipelines import PIPELINES

HERE = Path(__file__).resolve().parent


def build(name: str, image: str | None = None) -> Any:
    """The pipeline ``name`` (one of :data:`pipelines.PIPELINES`) built with the images of ``image``."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose from {list(PIPELINES)}")
    module = importlib.import_module(f"pipelines.{name}")
    img = images(image)
    if getattr(module, "IMAGES", None) == img:  # built when the module was imported (seconds on a busy machine)
        return getattr(module, name)
    return module.build(img)


def compile_pipeline(name: str, out: str | Path | None = None, image: str | None = None) -> Path:
    """Write ``name``'s YAML to ``out`` (default ``pipelines/NAME.yaml``); returns the path."""
    path = Path(out) if out is not None else HERE / f"{name}.yaml"
    compiler.Compiler().compile(build(name, image), str(path))
    path.write_text(stable_header(path.read_text()), encoding="utf-8")
    return path


def stable_header(text: str) -> str:
    """``text`` (a compiled pipeline) with the parameter defaults of its header comment in a stable order.

    kfp 2.17 writes a comment line per parameter (``#    gpu_tolerations: list [Default: ...]``) from
    the spec's protobuf ``Struct``s, whose key order changes from one process to the next; the spec
    itself is ordered. Dict keys are sorted here, so compiling twice gives the same bytes."""
    import re

    def ordered(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ordered(value[k]) for k in sorted(value)}
        if isinstance(value, list):
            return [ordered(v) for v in value]
        return value

    line = re.compile(r"^(#    [A-Za-z_][A-Za-z0-9_]*: (?:dict|list) \[Default: )(.*)(\])$")
    out = []
    for row in text.split("\n"):
        m = line.match(row)
        if m:
            try:
                value = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                value = None
            if isinstance(value, (dict, list)):
                row = f"{m.group(1)}{ordered(value)}{m.group(3)}"
        out.append(row)
    return "\n".join(out)


def main(name: str | None = None, argv: list[str] | None = None) -> None:
    """``python -m pipelines.NAME [--out FILE] [--image REGISTRY/NAME:TAG]``."""
    p = argparse.ArgumentParser(prog=f"python -m pipelines.{name or 'compile'}", description=__doc__)
    if name is None:
        p.add_argument("name", choices=(*PIPELINES, "all"))
    p.add_argument("--out", type=Path, default=None, help="YAML file (default pipelines/NAME.yaml)")
    p.add_argument("--image", default=None, help="REGISTRY/NAME:TAG of the images (default $LINKEDOUT_IMAGE or "
                                                  "ghcr.io/linkedout/linkedout:0.1.0; -cpu and -gpu are added)")
    args = p.parse_args(argv)
    names = [name] if name else (list(PIPELINES) if args.name == "all" else [args.name])
    for n in names:
        print(compile_pipeline(n, args.out if len(names) == 1 else None, args.image))


if __name__ == "__main__":
    main()
