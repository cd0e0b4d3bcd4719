"""The experiment file: what an A/B test compares, how traffic is split and when it may be decided.

An experiment is a YAML file (``docs/deploy.md``, "Running an experiment")::

    name: ranker-v2-vs-v1            # logged with every request (the routing config's `experiment`)
    salt: "2026-12-ranker"           # bucket = sha256(f"{salt}:{user_id}") mod 10000, sticky per user
    storage_uri: s3://linkedout-models/model_repository   # the repository that holds every arm's model
    arms:                            # the first is the control unless `control:` names another
      - {name: control,   model: linkedout, version: null, weight: 50}   # null = newest ready version
      - {name: treatment, model: hybrid,    version: 3,    weight: 50}
    primary_metric: ctr              # ctr | click_users | clicks_per_user (per user: the unit of randomisation)
    attribution_window: 30m          # an interaction counts for a request up to this long after it
    guardrails: {p99_latency_ms: 12, error_rate: 0.01}
    min_sample_size: 5000            # users per arm before any decision to ship
    duration: 7d                     # minimum running time (whole weeks absorb weekday effects)
    max_duration: 28d                # optional: stop there when nothing was detected
    alpha: 0.05                      # error rate of the always-valid test (split over the treatments)
    power: 0.8                       # for the planned sample size reported beside the result
    mde: 0.05                        # minimum relative lift worth detecting: tunes the sequential test

An *arm* is one side of the comparison: a model of the repository and a version, with its share
of the traffic. (A model *variant* is something else: the kind of model the main job trains.)
The transformer logs the arm's name as ``variant`` in the request
log and in its answer, and the routing config lists the arms under ``variants:``; those wire names
stay. An experiment file may name its arms ``variants:`` too (the key of older files): both keys
read the same, and errors name the key the file used.

Every field is validated when the file is loaded; a bad value raises ``ValueError`` naming the field
(``experiment.arms[1].weight must be ...``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Primary metrics ``linkedout ab analyze`` computes, each a ratio of per-user sums
#: (numerator / denominator): ``ctr`` clicks / impressions (served recommendations), ``click_users``
#: share of exposed users with at least one click, ``clicks_per_user`` clicks per exposed user.
PRIMARY_METRICS = ("ctr", "click_users", "clicks_per_user")

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: Any, field_name: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"2h"``, ``"7d"`` or ``"2w"``; ValueError names the field."""
    if isinstance(value, bool):
        raise ValueError(f"{field_name} must be a duration such as '30m' or '7d', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{field_name} must be a duration such as 90, '30m', '2h' or '7d', got {value!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{field_name} must be > 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Arm:
    """One arm of an experiment: a model NAME of the model repository (``NAME_ranker``) and a version
    (None = newest ready), with its traffic weight."""

    name: str
    model: str
    version: int | None = None
    weight: int = 50  # share of the 10,000 buckets, relative to the other arms' weights

    def validate(self, where: str) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"{where}.name must be a lower-case name ([a-z0-9-_.], up to 63), got {self.name!r}")
        if not isinstance(self.model, str) or not _NAME.match(self.model):
            raise ValueError(f"{where}.model must be a model name of the repository, got {self.model!r}")
        if self.version is not None and (isinstance(self.version, bool) or not isinstance(self.version, int)
                                         or self.version < 1):
            raise ValueError(f"{where}.version must be a positive integer or null (newest), got {self.version!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise ValueError(f"{where}.weight must be a positive integer, got {self.weight!r}")


@dataclass(frozen=True)
class Guardrails:
    """Limits no arm may cross; a treatment that crosses one is stopped."""

    p99_latency_ms: float = 12.0  # end-to-end latency of the request, from the request log
    error_rate: float = 0.01  # failed requests / all requests of the arm

    def validate(self, where: str) -> None:
        for name in ("p99_latency_ms", "error_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{where}.{name} must be a positive number, got {v!r}")
        if self.error_rate >= 1:
            raise ValueError(f"{where}.error_rate must be < 1 (a share of requests), got {self.error_rate!r}")


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file (module docstring). Durations are in seconds."""

    name: str
    salt: str
    arms: tuple[Arm, ...]
    storage_uri: str | None = None
    control: str | None = None  # None: the first arm
    primary_metric: str = "ctr"
    attribution_window_s: float = 1800.0
    guardrails: Guardrails = field(default_factory=Guardrails)
    min_sample_size: int = 1000
    duration_s: float = 7 * 86400.0
    max_duration_s: float | None = None
    alpha: float = 0.05
    power: float = 0.8
    mde: float = 0.05
    srm_threshold: float = 0.001  # p-value below which the split is called a sample-ratio mismatch

    def __post_init__(self) -> None:
        w = "experiment"
        if not isinstance(self.name, str) or not _NAME.match(self.name) or self.name == "none":
            raise ValueError(f"{w}.name must be a lower-case name ([a-z0-9-_.], up to 63, not 'none'), "
                             f"got {self.name!r}")
        if not isinstance(self.salt, str) or not self.salt.strip():
            raise ValueError(f"{w}.salt must be a non-empty string (a new salt reshuffles users), got {self.salt!r}")
        _validate_arms(self.arms, self.control, f"{w}.arms")
        if self.storage_uri is not None and (not isinstance(self.storage_uri, str)
                                             or not re.match(r"^(s3|gs|pvc|https?)://\S+$", self.storage_uri)):
            raise ValueError(f"{w}.storage_uri must be a model-repository URI such as s3://bucket/prefix, "
                             f"got {self.storage_uri!r}")
        if self.primary_metric not in PRIMARY_METRICS:
            raise ValueError(f"{w}.primary_metric must be one of {', '.join(PRIMARY_METRICS)}, "
                             f"got {self.primary_metric!r}")
        if not isinstance(self.guardrails, Guardrails):
            raise ValueError(f"{w}.guardrails must be a mapping with p99_latency_ms and error_rate")
        self.guardrails.validate(f"{w}.guardrails")
        if isinstance(self.min_sample_size, bool) or not isinstance(self.min_sample_size, int) \
                or self.min_sample_size < 1:
            raise ValueError(f"{w}.min_sample_size must be a positive integer (users per arm), "
                             f"got {self.min_sample_size!r}")
        if self.max_duration_s is not None and self.max_duration_s < self.duration_s:
            raise ValueError(f"{w}.max_duration must be >= duration ({self.duration_s:g} s), "
                             f"got {self.max_duration_s:g} s")
        for name, lo, hi in (("alpha", 0.0, 0.5), ("power", 0.5, 1.0), ("mde", 0.0, 10.0),
                             ("srm_threshold", 0.0, 0.5)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo < v < hi:
                raise ValueError(f"{w}.{name} must be in ({lo:g}, {hi:g}), got {v!r}")

    @property
    def control_arm(self) -> Arm:
        name = self.control or self.arms[0].name
        return next(a for a in self.arms if a.name == name)

    @property
    def treatments(self) -> tuple[Arm, ...]:
        c = self.control_arm.name
        return tuple(a for a in self.arms if a.name != c)

    def shares(self) -> dict[str, float]:
        """The configured traffic share of each arm (weights normalised to sum to 1)."""
        total = sum(a.weight for a in self.arms)
        return {a.name: a.weight / total for a in self.arms}

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"experiment {self.name!r} has no arm {name!r}")


def _validate_arms(arms: Any, control: str | None, where: str) -> None:
    """At least two valid arms, unique names, distinct model versions, ``control`` one of them.

    ``where`` names the list in errors (``experiment.arms``, or ``experiment.variants`` for a file
    that uses that key).
    """
    if not isinstance(arms, tuple) or len(arms) < 2:
        raise ValueError(f"{where} must list at least two arms, got {len(arms or ())}")
    for i, a in enumerate(arms):
        if not isinstance(a, Arm):
            raise ValueError(f"{where}[{i}] must be a mapping with name, model, version, weight")
        a.validate(f"{where}[{i}]")
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where} names must be unique, repeated: {', '.join(dup)}")
    served = [(a.model, a.version) for a in arms]
    if len(set(served)) < len(served):
        raise ValueError(f"{where} must differ in model or version: two serve the same model version")
    if control is not None and control not in names:
        raise ValueError(f"experiment.control must name one of the arms ({', '.join(names)}), got {control!r}")


#: The keys that list the arms: ``arms`` and, in older files, ``variants`` (read the same).
_ARMS_KEYS = ("arms", "variants")
_FIELDS = {"name", "salt", *_ARMS_KEYS, "storage_uri", "control", "primary_metric", "attribution_window",
           "guardrails", "min_sample_size", "duration", "max_duration", "alpha", "power", "mde", "srm_threshold"}
_ARM_FIELDS = {"name", "model", "version", "weight"}
_GUARDRAIL_FIELDS = {"p99_latency_ms", "error_rate"}


def experiment_from_dict(raw: Any) -> Experiment:
    """Build and validate an :class:`Experiment` from the parsed YAML mapping; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ValueError(f"experiment must be a YAML mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ValueError(f"experiment has unknown field(s): {', '.join(map(str, unknown))} "
                         f"(known: {', '.join(sorted(_FIELDS))})")
    for required in ("name", "salt"):
        if required not in raw:
            raise ValueError(f"experiment.{required} is required")
    arms = _arms_from_dict(raw)
    g = raw.get("guardrails") or {}
    if not isinstance(g, dict):
        raise ValueError("experiment.guardrails must be a mapping with p99_latency_ms and error_rate")
    bad = sorted(set(g) - _GUARDRAIL_FIELDS)
    if bad:
        raise ValueError(f"experiment.guardrails has unknown field(s): {', '.join(map(str, bad))}")
    kwargs: dict[str, Any] = {k: raw[k] for k in ("name", "salt", "storage_uri", "control", "primary_metric",
                                                  "min_sample_size", "alpha", "power", "mde", "srm_threshold")
                              if k in raw}
    if "name" in kwargs and isinstance(kwargs["name"], int | float):
        kwargs["name"] = str(kwargs["name"])
    if "attribution_window" in raw:
        kwargs["attribution_window_s"] = parse_duration(raw["attribution_window"], "experiment.attribution_window")
    if "duration" in raw:
        kwargs["duration_s"] = parse_duration(raw["duration"], "experiment.duration")
    if raw.get("max_duration") is not None:
        kwargs["max_duration_s"] = parse_duration(raw["max_duration"], "experiment.max_duration")
    return Experiment(arms=arms, guardrails=Guardrails(**g), **kwargs)


def _arms_from_dict(raw: dict[Any, Any]) -> tuple[Arm, ...]:
    """The arms of the parsed file, under ``arms:`` or ``variants:``, validated with errors naming that key."""
    keys = [k for k in _ARMS_KEYS if k in raw]
    if not keys:
        raise ValueError("experiment.arms is required")
    if len(keys) > 1:
        raise ValueError("experiment has both arms and variants: they are the same list, give one")
    key = f"experiment.{keys[0]}"
    raw_arms = raw[keys[0]]
    if not isinstance(raw_arms, list):
        raise ValueError(f"{key} must be a list of arms")
    arms = []
    for i, ra in enumerate(raw_arms):
        where = f"{key}[{i}]"
        if not isinstance(ra, dict):
            raise ValueError(f"{where} must be a mapping with name, model, version, weight")
        bad = sorted(set(ra) - _ARM_FIELDS)
        if bad:
            raise ValueError(f"{where} has unknown field(s): {', '.join(map(str, bad))}")
        for required in ("name", "model"):
            if required not in ra:
                raise ValueError(f"{where}.{required} is required")
        arms.append(Arm(name=ra["name"], model=ra["model"], version=ra.get("version"), weight=ra.get("weight", 50)))
    _validate_arms(tuple(arms), raw.get("control"), key)
    return tuple(arms)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"experiment file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    try:
        return experiment_from_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
