"""The transformer's v2 tensor contract, and the parsing and checks of a request against it.

``INPUTS`` and ``OUTPUTS`` are the one table of the tensors the transformer takes and answers
(docs/serving.md §3): parsing checks the inputs against it, the transformer's v2 model metadata
(``ModelMetadata``, ``GET /v2/models/NAME``) is read from it, and the transformer writes its outputs
through it. KServe answers many malformed tensors (a shape disagreeing with the data, wrong byte
lengths, bad BYTES framing) with INTERNAL (DESIGN.md §2), so every input is checked here and a bad
one raises ``RequestError`` naming it; the transformer turns it into KServe's ``InvalidInput``
(gRPC INVALID_ARGUMENT, HTTP 400). No kserve import: the tensors arrive as ``RawTensor``.

Inputs: ``user_id`` [B] (required; BYTES in the metadata, INT64 and INT32 ids accepted and read as
their decimal string), ``k`` INT64 [1] (default 10), ``history`` INT64 [B, T'] (explicit video ids,
-1 = padding, most recent last), ``explain`` BOOL [1].
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["INPUTS", "KNOWN_INPUTS", "OUTPUTS", "OUTPUT_DATATYPES", "RawTensor", "RecRequest", "RequestError",
           "TensorContract", "parse_request"]


@dataclass(frozen=True)
class TensorContract:
    """One tensor of the contract: its name, datatype and shape (a named dimension is dynamic: -1)."""

    name: str
    datatype: str  # what the metadata says; an output is always of this datatype
    shape: tuple[int | str, ...]  # an int is a fixed size; a name (B users, k results, ...) any size
    also: tuple[str, ...] = ()  # other datatypes an input is accepted in
    required: bool = False

    @property
    def datatypes(self) -> tuple[str, ...]:
        return (self.datatype, *self.also)

    def datatypes_text(self) -> str:
        """``BYTES, INT64 or INT32``."""
        *first, last = self.datatypes
        return f"{', '.join(first)} or {last}" if first else last

    def shape_text(self, **sizes: int) -> str:
        """The shape as docs and errors write it, e.g. ``[B=2, T]`` for ``shape_text(B=2)``."""
        return "[" + ", ".join(f"{d}={sizes[d]}" if d in sizes else str(d) for d in self.shape) + "]"

    def metadata(self) -> dict[str, Any]:
        """The v2 ``$metadata_tensor``: ``{"name", "datatype", "shape"}`` with -1 for a dynamic dimension."""
        return {"name": self.name, "datatype": self.datatype,
                "shape": [d if isinstance(d, int) else -1 for d in self.shape]}


INPUTS: tuple[TensorContract, ...] = (
    TensorContract("user_id", "BYTES", ("B",), also=("INT64", "INT32"), required=True),
    TensorContract("k", "INT64", (1,), also=("INT32",)),
    TensorContract("history", "INT64", ("B", "T"), also=("INT32",)),
    TensorContract("explain", "BOOL", (1,), also=("INT64", "INT32")),
)
#: every output of an answer; ``gate`` and ``contributions`` (L = layers) only when ``explain`` is set
OUTPUTS: tuple[TensorContract, ...] = (
    TensorContract("items", "INT64", ("B", "k")),
    TensorContract("scores", "FP32", ("B", "k")),
    TensorContract("variant", "BYTES", ("B",)),
    TensorContract("model_version", "BYTES", ("B",)),
    TensorContract("cold_start", "BOOL", ("B",)),
    TensorContract("unknown_items", "BYTES", ("B",)),
    TensorContract("gate", "FP32", ("B", "k", "L")),
    TensorContract("contributions", "FP32", ("B", "k", "L")),
)
KNOWN_INPUTS = tuple(t.name for t in INPUTS)
_INPUT = {t.name: t for t in INPUTS}
#: the numpy type each output is written in
OUTPUT_DATATYPES = {t.name: t.datatype for t in OUTPUTS}
_NP = {"INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}  # the fixed-size datatypes of INPUTS


class RequestError(ValueError):
    """A request input is missing, of the wrong type or shape, or out of range; names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"input '{field}': {message}")
        self.field = field


@dataclass(frozen=True)
class RawTensor:
    """An input as it came off the wire: either ``raw`` bytes or a list of ``values`` (flat or nested)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None
    values: Sequence[object] | np.ndarray | None = None


@dataclass(frozen=True)
class RecRequest:
    """A checked request: users, how many results, optional explicit histories, explain flag."""

    user_ids: list[str]
    k: int
    histories: list[list[int]] | None  # per user, oldest first; None = read from Feast
    explain: bool


def _checked(t: RawTensor) -> int:
    """Check ``t`` against its contract (datatype, rank or element count); returns its element count."""
    spec = _INPUT[t.name]
    if t.datatype not in spec.datatypes:
        raise RequestError(t.name, f"must be {spec.datatypes_text()}, got {t.datatype}")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in t.shape):
        raise RequestError(t.name, f"shape {list(t.shape)} must be non-negative integers")
    count = math.prod(t.shape)  # Python ints: a declared shape cannot overflow into a plausible count
    fixed = [d for d in spec.shape if isinstance(d, int)]
    if len(fixed) == len(spec.shape):
        if count != math.prod(fixed):
            n = math.prod(fixed)
            raise RequestError(t.name, f"must hold {'one value' if n == 1 else f'{n} values'} (shape "
                                       f"{spec.shape_text()}), got shape {list(t.shape)}")
    elif len(t.shape) != len(spec.shape):
        raise RequestError(t.name, f"must have shape {spec.shape_text()}, got {list(t.shape)}")
    return count


def _decode(t: RawTensor, count: int) -> np.ndarray:
    """The tensor as a numpy array of ``t.shape``; RequestError when data and shape disagree."""
    if t.datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = _bytes_items(t, count)
        return arr.reshape(t.shape)
    if t.raw is not None:
        want = count * np.dtype(_NP[t.datatype]).itemsize
        if len(t.raw) != want:
            raise RequestError(t.name, f"{len(t.raw)} bytes of data for shape {list(t.shape)} of {t.datatype} "
                                       f"(needs {want})")
        return np.frombuffer(t.raw, dtype=_NP[t.datatype]).reshape(t.shape)
    flat = _flat_values(t, count)
    arr = np.asarray(flat)
    kind = "b" if t.datatype == "BOOL" else "iu"
    if kind == "iu" and arr.dtype.kind == "O" and all(type(v) is int for v in flat):
        raise RequestError(t.name, f"values out of the {t.datatype} range")
    if arr.size and arr.dtype.kind not in kind:
        raise RequestError(t.name, f"values are not {t.datatype}: got {_kind_name(arr)}")
    if arr.size and kind == "iu":
        info = np.iinfo(_NP[t.datatype])
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise RequestError(t.name, f"values out of the {t.datatype} range")
    return arr.astype(_NP[t.datatype]).reshape(t.shape)


def _kind_name(arr: np.ndarray) -> str:
    return {"b": "booleans", "f": "floats", "U": "strings", "S": "bytes", "O": "mixed or out-of-range values"}.get(
        arr.dtype.kind, str(arr.dtype))


def _flat_values(t: RawTensor, count: int) -> list[object]:
    """The values in row-major order: a flat list of ``count``, or nested lists following ``t.shape``."""
    raw_values = t.values if t.values is not None else []
    values = raw_values.tolist() if isinstance(raw_values, np.ndarray) else list(raw_values)
    if not any(isinstance(v, (list, tuple)) for v in values):
        if len(values) != count:
            raise RequestError(t.name, f"{len(values)} values for shape {list(t.shape)} (needs {count})")
        return values
    level: list[Any] = [values]
    for depth, size in enumerate(t.shape):  # one nesting level per dimension, each of its size
        if any(not isinstance(v, (list, tuple)) or len(v) != size for v in level):
            raise RequestError(t.name, f"nested data does not follow shape {list(t.shape)} (dimension {depth})")
        level = [x for v in level for x in v]
    if any(isinstance(v, (list, tuple)) for v in level):
        raise RequestError(t.name, f"data nested deeper than shape {list(t.shape)}")
    return level


def _bytes_items(t: RawTensor, count: int) -> list[bytes]:
    if t.raw is not None:  # 4-byte little-endian length, then the bytes, per element
        out: list[bytes] = []
        pos, raw = 0, t.raw
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise RequestError(t.name, "BYTES data is truncated (an element's length prefix is cut)")
            (n,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + n > len(raw):
                raise RequestError(t.name, f"BYTES element {len(out)} claims {n} bytes, {len(raw) - pos} remain")
            out.append(bytes(raw[pos:pos + n]))
            pos += n
    else:
        out = []
        for v in _flat_values(t, count):
            if isinstance(v, bytes):
                out.append(v)
            elif isinstance(v, str):
                out.append(v.encode("utf-8"))
            else:
                raise RequestError(t.name, f"BYTES values must be strings, got {type(v).__name__}")
    if len(out) != count:
        raise RequestError(t.name, f"{len(out)} BYTES elements for shape {list(t.shape)} (needs {count})")
    return out


def parse_request(inputs: Mapping[str, RawTensor], *, max_batch_size: int, max_k: int,
                  max_history_len: int = 1000) -> RecRequest:
    """Check the request's inputs against ``INPUTS`` and return a ``RecRequest``; ``RequestError`` names
    what is wrong. Sizes are checked before any data is decoded.

    ``max_k`` is the largest k this server can answer (``min(--max_k, catalogue size)``).
    """
    unknown = sorted(set(inputs) - set(KNOWN_INPUTS))
    if unknown:
        raise RequestError(unknown[0], f"unknown input; the inputs are {list(KNOWN_INPUTS)}")
    for spec in INPUTS:
        if spec.required and spec.name not in inputs:
            raise RequestError(spec.name, f"missing ({spec.datatypes_text()} {spec.shape_text()})")
    u = inputs["user_id"]
    count = _checked(u)
    b = u.shape[0]
    if b < 1:
        raise RequestError("user_id", "holds no user (B = 0)")
    if b > max_batch_size:
        raise RequestError("user_id", f"B = {b} users exceeds the maximum batch size {max_batch_size}")
    users_arr = _decode(u, count)
    if u.datatype == "BYTES":
        try:
            users = [x.decode("utf-8") for x in users_arr.tolist()]
        except UnicodeDecodeError:
            raise RequestError("user_id", "BYTES user ids must be UTF-8") from None
        if any(not x for x in users):
            raise RequestError("user_id", "an empty user id")
    else:
        users = [str(int(x)) for x in users_arr.tolist()]

    k = 10
    if "k" in inputs:
        k = int(_decode(inputs["k"], _checked(inputs["k"])).reshape(-1)[0])
    if k < 1:
        raise RequestError("k", f"must be >= 1, got {k}")
    if k > max_k:
        raise RequestError("k", f"k = {k} is above what this server returns ({max_k}: the catalogue or --max_k)")

    histories = None
    if "history" in inputs:
        h = inputs["history"]
        count = _checked(h)
        if h.shape[0] != b:
            raise RequestError("history", f"must have shape {_INPUT['history'].shape_text(B=b)}, got {list(h.shape)}")
        if h.shape[1] > max_history_len:
            raise RequestError("history", f"T = {h.shape[1]} is longer than {max_history_len}")
        arr = _decode(h, count).astype(np.int64)
        if (arr < -1).any():
            raise RequestError("history", "video ids must be >= 0 (-1 pads)")
        histories = [[int(v) for v in row if v >= 0] for row in arr]

    explain = False
    if "explain" in inputs:
        explain = bool(_decode(inputs["explain"], _checked(inputs["explain"])).reshape(-1)[0])
    return RecRequest(users, k, histories, explain)
