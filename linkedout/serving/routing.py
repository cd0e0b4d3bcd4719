"""A/B routing: which model (and version) serves a user, by a salted hash, sticky across requests.

The routing config (YAML, docs/serving.md §3; ``linkedout ab render`` writes it from an experiment
file)::

    experiment: ranker-v2-vs-v1
    salt: "2026-12-ranker"
    variants:
      - {name: control,   model: linkedout, version: null, weight: 50}
      - {name: treatment, model: hybrid,    version: 3,    weight: 50}

A user's bucket is ``int(sha256(f"{salt}:{user_id}")) mod 10000``; variant ``i`` owns the buckets
below the cumulative ``floor(10000 * sum(w[:i+1]) / sum(w))`` (the last one up to 10000), in order. The same user always lands in the same variant
for a given salt and split, whatever the process or machine. ``Router`` re-reads the file when it
changes (checked at most once a ``check_interval`` seconds); a file that fails to parse or validate,
or that its ``check`` refuses (the transformer's: a model with no version, a pinned version that does
not exist), is logged and the last good config keeps serving.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from linkedout.utils import get_logger

log = get_logger(__name__)

__all__ = ["BUCKETS", "Router", "RoutingConfig", "RoutingError", "RoutingVariant", "bucket_bounds", "bucket_of",
           "load_routing"]

BUCKETS = 10_000


class RoutingError(ValueError):
    """The routing config is malformed; the message names the field."""


@dataclass(frozen=True)
class RoutingVariant:
    name: str  # variant name, returned with every response and logged
    model: str  # the served model NAME (Triton's NAME_ranker)
    version: int | None  # a pinned catalogue version, or None = the newest ready one
    weight: float  # share of traffic, relative to the other variants' weights


@dataclass(frozen=True)
class RoutingConfig:
    experiment: str
    salt: str
    variants: tuple[RoutingVariant, ...]
    _bounds: tuple[int, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if not self.variants:
            raise RoutingError("routing.variants must list at least one variant")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise RoutingError(f"routing.variants: duplicate variant names {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise RoutingError("routing.variants: the weights must sum to more than 0")
        object.__setattr__(self, "_bounds", tuple(_bounds(self.variants)))

    @classmethod
    def single(cls, model: str) -> RoutingConfig:
        """Everyone to ``model`` (no experiment)."""
        return cls("none", "", (RoutingVariant(model, model, None, 1.0),))

    @classmethod
    def from_dict(cls, doc: Any) -> RoutingConfig:
        if not isinstance(doc, dict):
            raise RoutingError(f"routing config must be a mapping, got {type(doc).__name__}")
        unknown = sorted(set(doc) - {"experiment", "salt", "variants"})
        if unknown:
            raise RoutingError(f"routing: unknown field(s) {unknown}; known: experiment, salt, variants")
        experiment, salt = doc.get("experiment", "default"), doc.get("salt")
        if not isinstance(experiment, str) or not experiment:
            raise RoutingError("routing.experiment must be a non-empty string")
        if not isinstance(salt, str) or not salt:
            raise RoutingError("routing.salt must be a non-empty string (it decides who sees what)")
        raw = doc.get("variants")
        if not isinstance(raw, list):
            raise RoutingError("routing.variants must be a list")
        variants = []
        for i, v in enumerate(raw):
            where = f"routing.variants[{i}]"
            if not isinstance(v, dict):
                raise RoutingError(f"{where} must be a mapping")
            bad = sorted(set(v) - {"name", "model", "version", "weight"})
            if bad:
                raise RoutingError(f"{where}: unknown field(s) {bad}; known: name, model, version, weight")
            name, model = v.get("name"), v.get("model")
            for field_name, value in (("name", name), ("model", model)):
                if not isinstance(value, str) or not value:
                    raise RoutingError(f"{where}.{field_name} must be a non-empty string")
            version = v.get("version")
            if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
                raise RoutingError(f"{where}.version must be a positive integer or null, got {version!r}")
            weight = v.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                raise RoutingError(f"{where}.weight must be a number >= 0, got {weight!r}")
            variants.append(RoutingVariant(str(name), str(model), version, float(weight)))
        return cls(experiment, salt, tuple(variants))

    @property
    def models(self) -> list[str]:
        return sorted({v.model for v in self.variants})

    def assign(self, user_id: str) -> RoutingVariant:
        """The variant of ``user_id`` (sticky: a pure function of the salt, the split and the id)."""
        if len(self.variants) == 1:
            return self.variants[0]
        b = bucket_of(self.salt, user_id)
        for variant, upper in zip(self.variants, self._bounds):
            if b < upper:
                return variant
        return self.variants[-1]


def _bounds(variants: Sequence[RoutingVariant]) -> list[int]:
    return bucket_bounds([v.weight for v in variants])


def bucket_bounds(weights: Sequence[float]) -> list[int]:
    """Exclusive upper bucket of each variant: cumulative ``floor(BUCKETS * sum(w[:i+1]) / sum(w))``;
    the last variant always ends at ``BUCKETS``. Integer weights are computed exactly."""
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise RoutingError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    exact = all(float(w).is_integer() for w in weights)
    bounds, acc = [], 0.0
    for w in weights:
        acc += w
        bounds.append(BUCKETS * int(acc) // int(total) if exact else int(BUCKETS * acc / total))
    bounds[-1] = BUCKETS
    return bounds


def bucket_of(salt: str, user_id: str | int) -> int:
    """``int(sha256(f"{salt}:{user_id}")) mod BUCKETS``: the user's bucket in ``0..BUCKETS-1``."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def load_routing(path: str | os.PathLike[str]) -> RoutingConfig:
    """The routing config in the YAML file ``path``; ``RoutingError`` naming the file when it is not one."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RoutingError(f"routing config {path} does not exist") from None
    except yaml.YAMLError as e:
        raise RoutingError(f"routing config {path} is not valid YAML: {e}") from None
    try:
        return RoutingConfig.from_dict(doc)
    except RoutingError as e:
        raise RoutingError(f"{path}: {e}") from None


class Router:
    """The current routing config: from a file re-read on change, or everyone to one model.

    ``check(config)`` raises :class:`RoutingError` for a changed config that cannot serve; the change
    is then refused like a malformed file (the config read at start is not checked: its models may
    still be on their way).
    """

    def __init__(self, path: str | os.PathLike[str] | None, default_model: str, *, check_interval: float = 1.0,
                 check: Callable[[RoutingConfig], None] | None = None) -> None:
        self.path = Path(path) if path else None
        self.default_model = default_model
        self.check_interval = check_interval
        self.check = check
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self.config = load_routing(self.path) if self.path else RoutingConfig.single(default_model)
        if self.path:
            self._stamp = self._file_stamp()
            log.info("routing %s: %s", self.path, [(v.name, v.model, v.version, v.weight) for v in self.config.variants])

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat() if self.path else None
        except FileNotFoundError:
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size)

    def current(self) -> RoutingConfig:
        """The config to route with now (re-reads the file when it changed)."""
        if self.path is None:
            return self.config
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            self._checked = now
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    config = load_routing(self.path)
                    if self.check is not None:
                        self.check(config)
                    self.config = config
                    log.info("routing changed: %s", [(v.name, v.model, v.version, v.weight) for v in self.config.variants])
                except RoutingError as e:
                    log.error("routing config change ignored, the last good one keeps serving: %s", e)
        return self.config
