"""The transformer's routing config (docs/serving.md §3), written from an experiment file.

The transformer assigns a user to an arm by ``bucket = sha256(f"{salt}:{user_id}") mod 10000``
and the arms' weights as shares of the 10,000 buckets, in order. :func:`assign_arm` applies the
transformer's own rule (``linkedout.serving.routing``) on this side (the simulator uses it, and tests
check that the configured split is what the hash produces); the boundaries are the cumulative
``floor(10000 * w / sum(w))``, the last arm taking the remaining buckets. The routing config lists
the arms under the key ``variants`` (the transformer's format).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from linkedout.ab.experiment import Arm, Experiment
from linkedout.serving.routing import RoutingError, bucket_of
from linkedout.serving.routing import bucket_bounds as serving_bucket_bounds
from linkedout.utils import atomic_write_text


def routing_config(exp: Experiment) -> dict[str, Any]:
    """The routing config of ``exp``: ``{experiment, salt, variants: [{name, model, version, weight}]}``."""
    return {
        "experiment": exp.name,
        "salt": exp.salt,
        "variants": [{"name": a.name, "model": a.model, "version": a.version, "weight": a.weight}
                     for a in exp.arms],
    }


def routing_yaml(exp: Experiment) -> str:
    """The routing config of ``exp`` as the YAML text the transformer reads, under a header that says where it came from."""
    header = (f"# Routing config of experiment {exp.name!r}, written by `linkedout ab render`.\n"
              "# The transformer re-reads it when it changes (docs/serving.md §3).\n")
    return header + yaml.safe_dump(routing_config(exp), sort_keys=False)


def write_routing_config(exp: Experiment, path: str | Path) -> Path:
    """Write the routing config atomically (the transformer never reads half a file)."""
    path = Path(path)
    atomic_write_text(path, routing_yaml(exp))
    return path


def bucket(salt: str, user_id: str | int) -> int:
    """The user's bucket in [0, 10000): ``int(sha256(f"{salt}:{user_id}")) mod 10000`` (the transformer's rule)."""
    return bucket_of(salt, user_id)


def bucket_bounds(weights: Sequence[int]) -> list[int]:
    """Exclusive upper bucket of each arm: cumulative ``floor(10000 * w / sum(w))``, last = 10000."""
    try:
        return serving_bucket_bounds(weights)
    except RoutingError as e:
        raise ValueError(str(e)) from None


def assign_arm(user_id: str | int, salt: str, arms: Sequence[Arm]) -> Arm:
    """The arm the routing rule gives ``user_id`` (sticky: the same user always gets the same one)."""
    b = bucket(salt, user_id)
    for a, upper in zip(arms, bucket_bounds([a.weight for a in arms])):
        if b < upper:
            return a
    return arms[-1]  # unreachable: the last bound is 10000
