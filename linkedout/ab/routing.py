"""The transformer's routing config (docs/serving.md §3), written from an experiment file.

The transformer assigns a user to a variant by ``bucket = sha256(f"{salt}:{user_id}") mod 10000``
and the variants' weights as shares of the 10,000 buckets, in order. :func:`assign_variant` applies the
transformer's own rule (``linkedout.serving.routing``) on this side (the simulator uses it, and tests check that the configured
split is what the hash produces); the boundaries are the cumulative ``floor(10000 * w / sum(w))``,
the last variant taking the remaining buckets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from linkedout.ab.experiment import Experiment, Variant
from linkedout.serving.routing import NUM_BUCKETS as NUM_BUCKETS
from linkedout.serving.routing import RoutingError, bucket_of
from linkedout.serving.routing import bucket_bounds as serving_bucket_bounds
from linkedout.utils import atomic_write_text


def routing_config(exp: Experiment) -> dict[str, Any]:
    """The routing config of ``exp``: ``{experiment, salt, variants: [{name, model, version, weight}]}``."""
    return {
        "experiment": exp.name,
        "salt": exp.salt,
        "variants": [{"name": v.name, "model": v.model, "version": v.version, "weight": v.weight}
                     for v in exp.variants],
    }


def routing_yaml(exp: Experiment) -> str:
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
    """Exclusive upper bucket of each variant: cumulative ``floor(10000 * w / sum(w))``, last = 10000."""
    try:
        return serving_bucket_bounds(weights)
    except RoutingError as e:
        raise ValueError(str(e)) from None


def assign_variant(user_id: str | int, salt: str, variants: Sequence[Variant]) -> Variant:
    """The variant the routing rule gives ``user_id`` (sticky: the same user always gets the same one)."""
    b = bucket(salt, user_id)
    for v, upper in zip(variants, bucket_bounds([v.weight for v in variants])):
        if b < upper:
            return v
    return variants[-1]  # unreachable: the last bound is NUM_BUCKETS
