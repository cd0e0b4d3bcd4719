"""The main job's parameters, each declared once: a field of a library config dataclass.

The pipelines carry the extraction, the backbone and the training schedule as three dict parameters,
``extraction`` (:class:`~linkedout.extraction.extractor.ExtractionConfig`), ``backbone``
(:class:`~linkedout.extraction.backbone_config.BackboneConfig`) and ``training``
(:class:`~linkedout.training.TrainConfig`, over the main job's schedule
:func:`linkedout.job.variants.main_train_config`). Their defaults are the dataclasses' own
(:func:`linkedout.job.extraction.extraction_defaults`, :func:`~linkedout.job.extraction.backbone_defaults`,
:func:`training_defaults`: the extraction's live with the extraction stage, whose imports a training
task does not need); a stage turns a dict back into its dataclass with
:func:`config_from_dict`, which fills a missing field with its default and refuses an unknown one by
name. Adding an extraction option is therefore one new field of ``ExtractionConfig`` (and a
recompile of the pipelines' YAML).

The deploy parameters stay flat, because a ``dsl.If`` tests ``deploy_to`` and KFP conditions read
plain parameters; their defaults are :class:`DeployConfig`'s, and a test compares every pipeline
signature with it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from linkedout.job.variants import DEFAULT_VARIANTS, main_train_config
from linkedout.training import TrainConfig

C = TypeVar("C")

#: Variants trained by the main job unless told otherwise; the first is the one deployed.
SERVED_VARIANT = DEFAULT_VARIANTS[0]


@dataclass(frozen=True)
class DeployConfig:
    """What happens after training: the deploy decision, the model repository and where the model is served.

    model_name: the served model's name (Triton models ``NAME_encoder`` / ``NAME_ranker``, the
        transformer's model).
    metric: validation metric of the deploy decision (deploy when at least the serving model's).
    deploy_to: ``kserve`` (an InferenceService canary) | ``local`` (the local stack answers a gRPC
        query) | ``none`` (stop after the report).
    canary_percent: share of the traffic the new release gets, in [0, 100].
    model_repository_uri: where the model repository is uploaded (``s3://bucket/prefix`` or a
        directory; empty: not uploaded).
    namespace / inference_service: the InferenceService to create or patch.
    kube_api: the Kubernetes API server URL (empty: the pod's service account).
    feast_repo: the Feast repository (empty: ``W/feast``).
    query_k: how many recommendations the local stack's query asks for.
    """

    model_name: str = "linkedout"
    metric: str = "NDCG@10"
    deploy_to: str = "kserve"
    canary_percent: int = 10
    model_repository_uri: str = "s3://linkedout-models/model_repository"
    namespace: str = "linkedout"
    inference_service: str = "linkedout"
    kube_api: str = ""
    feast_repo: str = ""
    query_k: int = 10

    def __post_init__(self) -> None:
        if self.deploy_to not in DEPLOY_TARGETS:
            raise ValueError(f"DeployConfig.deploy_to must be one of {DEPLOY_TARGETS}, got {self.deploy_to!r}")
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"DeployConfig.canary_percent must be in [0, 100], got {self.canary_percent}")
        if self.query_k < 1:
            raise ValueError(f"DeployConfig.query_k must be >= 1, got {self.query_k}")


DEPLOY_TARGETS = ("kserve", "local", "none")
DEPLOY = DeployConfig()


def config_from_dict(cls: type[C], values: Mapping[str, Any] | None, name: str) -> C:
    """``cls`` (a dataclass) from a pipeline's dict parameter ``name``: missing fields take their defaults,
    an unknown field is a ``ValueError`` naming it (and the dataclass's own checks run)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = dict(values or {})
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {unknown} of {cls.__name__}; the fields are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    given = {k: _typed(v, hints[k]) for k, v in given.items()}
    if cls is TrainConfig:
        return TrainConfig.from_dict({**main_train_config().to_dict(), **given})  # type: ignore[return-value]
    return cls(**given)


def _typed(value: Any, hint: Any) -> Any:
    """``value`` as the field's type where KFP changed it: a dict parameter travels as a protobuf ``Struct``,
    whose numbers are all floats (``32`` comes back as ``32.0``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            if arg is not type(None) and (typed := _typed(value, arg)) is not value:
                return typed
        return value
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        if origin is tuple and Ellipsis not in args and len(args) == len(value):  # tuple[float, float]
            item_types = list(args)
        else:  # tuple[int, ...], list[str]
            item_types = [args[0] if args else Any] * len(value)
        items = [_typed(v, t) for v, t in zip(value, item_types)]
        return tuple(items) if origin is tuple else items
    return value


def as_parameter(value: Any) -> Any:
    """``value`` as KFP stores a parameter: JSON types, tuples as lists; a ``None`` field of a dict is left out
    (KFP takes no null; such a field is one whose default is ``None``, which it gets back when rebuilt)."""
    if isinstance(value, (tuple, list)):
        return [as_parameter(v) for v in value]
    if isinstance(value, dict):
        return {k: as_parameter(v) for k, v in value.items() if v is not None}
    return value


def training_defaults() -> dict[str, Any]:
    """The ``training`` parameter's default: the main job's training schedule, every ``TrainConfig`` field."""
    return as_parameter(main_train_config().to_dict())


def changed_fields(config: Any) -> dict[str, Any]:
    """The fields of dataclass ``config`` that differ from its class's defaults, as a pipeline parameter."""
    default = type(config)()
    return {f.name: as_parameter(getattr(config, f.name)) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(default, f.name)}
