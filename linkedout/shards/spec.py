"""The extraction config stored beside the features (``FeatureSpec``, ``spec.json``).

A shard store holds one spec: every shard has its ``[L, K, D]`` shape and dtype, and a
``ShardWriter`` refuses to add features extracted under another one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from linkedout.shards.layout import FORMAT, FORMAT_VERSION, SPEC_KEY
from linkedout.shards.storage import MissingKeyError, ShardStoreError, Storage
from linkedout.utils import is_int

DTYPES = ("float16", "int8")


@dataclass(frozen=True)
class FeatureSpec:
    """What a shard store holds: how the features were extracted and how they are stored.

    Attributes:
        backbone: the video LLM the features come from (hub id, local path or ``"tiny"``).
        layers: kept hidden-state depths, strictly increasing, >= 0 (0 = embedding output,
            i = output of decoder layer i); paper ``(0, 4, 8, 12, 16, 20)``. ``L = len(layers)``.
        prompts: the query prompts fed with the video (may be empty), each a non-empty string.
        num_frames: frames sampled per video, >= 1 (paper 8).
        frame_size: frame side in pixels, >= 1 (paper 224).
        tokens: ``K``, tokens kept per layer after compression, >= 1 (paper 64).
        hidden: ``D``, the backbone hidden size, >= 1 (Qwen2-7B: 3584; the paper's table says 4096).
        dtype: storage dtype, ``"float16"`` or ``"int8"`` (symmetric, one float32 scale per
            ``(layer, token)`` row; see :mod:`.quant`).
        compression: name of the token-compression method that reduced the prefill to ``K``
            tokens (provenance only), a non-empty string.
        backbone_dtype: precision the backbone ran in (``float32`` | ``bfloat16`` | ``float16``):
            part of the spec so that a store never mixes, say, CPU float32 and GPU bf16 rows.
        frame_sampling: which frames were read, ``exact`` (uniform indices, LLaVA-OneVision's
            sampling) or ``keyframe`` (the nearest key frame within half the sampling interval);
            stores written before this field existed are ``exact``.
    """

    backbone: str
    layers: tuple[int, ...]
    prompts: tuple[str, ...]
    num_frames: int
    frame_size: int
    tokens: int
    hidden: int
    dtype: str = "float16"
    compression: str = "segment_mean"
    backbone_dtype: str = "float32"
    frame_sampling: str = "exact"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.frame_sampling not in ("exact", "keyframe"):
            raise ValueError(f"{name}.frame_sampling must be exact or keyframe, got {self.frame_sampling!r}")
        if self.backbone_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"{name}.backbone_dtype must be float32, bfloat16 or float16, "
                             f"got {self.backbone_dtype!r}")
        # Accept lists (e.g. from JSON) and store tuples, so specs compare and hash by value.
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"{name}.backbone must be a non-empty string, got {self.backbone!r}")
        if not self.layers:
            raise ValueError(f"{name}.layers must hold at least one layer, got ()")
        if not all(is_int(x) and x >= 0 for x in self.layers):
            raise ValueError(f"{name}.layers must be integers >= 0, got {self.layers}")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"{name}.layers must be strictly increasing, got {self.layers}")
        if not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError(f"{name}.prompts must be non-empty strings, got {self.prompts}")
        for field_name in ("num_frames", "frame_size", "tokens", "hidden"):
            value = getattr(self, field_name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}.{field_name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, field_name, int(value))
        if self.dtype not in DTYPES:
            raise ValueError(f"{name}.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.compression, str) or not self.compression:
            raise ValueError(f"{name}.compression must be a non-empty string, got {self.compression!r}")

    @classmethod
    def paper(cls, dtype: str = "float16", hidden: int = 4096) -> FeatureSpec:
        """The paper's setting: 6 layers x 64 tokens x 4096 (its table's hidden size), 8 frames at 224."""
        return cls(
            backbone="llava-hf/llava-onevision-qwen2-7b-ov-hf",
            layers=(0, 4, 8, 12, 16, 20),
            prompts=("Which objects appear?", "What is the scene mood?", "What type of action is it?"),
            num_frames=8,
            frame_size=224,
            tokens=64,
            hidden=hidden,
            dtype=dtype,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(L, K, D)`` of one video."""
        return (len(self.layers), self.tokens, self.hidden)

    @property
    def rows_per_video(self) -> int:
        """``L * K``: the number of D-vectors (quantisation rows) per video."""
        return len(self.layers) * self.tokens

    def data_bytes_per_video(self) -> int:
        """Bytes of the values: ``L * K * D * itemsize``."""
        return self.rows_per_video * self.hidden * np.dtype(self.dtype).itemsize

    def scale_bytes_per_video(self) -> int:
        """Bytes of the int8 scales (``L * K`` float32), 0 for float16."""
        return self.rows_per_video * 4 if self.dtype == "int8" else 0

    def bytes_per_video(self) -> int:
        """Stored bytes per video, scales included (file headers excluded)."""
        return self.data_bytes_per_video() + self.scale_bytes_per_video()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["prompts"] = list(self.prompts)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
        try:
            return cls(**d)
        except TypeError as e:  # a missing required field
            raise ValueError(f"{cls.__name__}: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSpec:
        return cls.from_dict(json.loads(text))

    def diff(self, other: FeatureSpec) -> list[str]:
        """Human-readable ``field: self != other`` lines for the fields that differ."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def read_spec(storage: Storage) -> FeatureSpec:
    """The store's ``spec.json``; :class:`ShardStoreError` if there is none or it is malformed."""
    try:
        raw = storage.read_bytes(SPEC_KEY)
    except MissingKeyError:
        raise ShardStoreError(f"{storage.uri} is not a shard store: no {SPEC_KEY}") from None
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}, "
                             f"expected {FORMAT!r} version {FORMAT_VERSION}")
        return FeatureSpec.from_dict(doc["spec"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ShardStoreError(f"malformed {SPEC_KEY} in {storage.uri}: {e}") from e


def spec_bytes(spec: FeatureSpec) -> bytes:
    """The ``spec.json`` of a store holding ``spec`` (read back by :func:`read_spec`)."""
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "spec": spec.to_dict()}
    return json.dumps(doc, indent=2).encode("utf-8")
