"""Which versions of a model a local server serves: Triton's ``version_policy`` and version contents.

The local Triton's twin repository (:mod:`.triton_repo`) and the KServe fallback predictor
(:mod:`.predictor`) select versions alike: the version directories of a model
(:func:`version_numbers`), the ones its policy prefers (:func:`policy_candidates`), and what makes
a version's content (:func:`fingerprint`, to notice a version replaced in place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["fingerprint", "policy_candidates", "served_versions", "version_numbers"]


def version_numbers(model_dir: Path) -> list[int]:
    """The version directories of a model (positive integer names), ascending.

    Anything else (``.tmp`` directories of a publish in progress, files) is not a version.
    """
    out: list[int] = []
    if not model_dir.is_dir():
        return out
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and not entry.name.startswith("0"):
            out.append(int(entry.name))
    return sorted(out)


def served_versions(config: Any, available: list[int]) -> list[int]:
    """The versions Triton's ``version_policy`` selects among ``available`` (default: the latest one)."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(available)
    if which == "specific":
        wanted = {int(v) for v in policy.specific.versions}
        return sorted(v for v in available if v in wanted)
    n = int(policy.latest.num_versions) if which == "latest" else 1
    return sorted(available)[-max(n, 1):] if available else []


def policy_candidates(config: Any, available: list[int]) -> tuple[list[int], int]:
    """Versions in the order the version policy prefers them, and how many of them to serve.

    ``latest { num_versions: n }`` (and no policy: latest 1) walks every version newest first and
    serves the first ``n`` that are valid, so a bad newest version leaves the previous ones serving;
    ``all`` and ``specific`` serve every valid version they select.
    """
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which in (None, "latest"):
        limit = max(1, int(policy.latest.num_versions)) if which == "latest" else 1
        return sorted(available, reverse=True), limit
    chosen = sorted(served_versions(config, available), reverse=True)
    return chosen, len(chosen)


def fingerprint(version_dir: Path) -> dict[str, list[int]]:
    """``{file name: [size, mtime_ns]}`` of a version's files: what makes it this version's content."""
    out = {}
    for entry in sorted(version_dir.iterdir()):
        if entry.is_file() and entry.name != "model.py" and not entry.name.startswith("."):
            st = entry.stat()
            out[entry.name] = [st.st_size, st.st_mtime_ns]
    return out
