"""Parse and check a recommendation request (Open Inference Protocol v2) before anything decodes it.

KServe answers many malformed tensors (a shape disagreeing with the data, wrong byte lengths, bad
BYTES framing) with INTERNAL (DESIGN.md §2), so the transformer checks every input here and raises
``RequestError`` naming the input; the transformer turns it into KServe's ``InvalidInput``
(gRPC INVALID_ARGUMENT, HTTP 400). No kserve import: the tensors arrive as ``RawTensor``.

Inputs (docs/serving.md §3): ``user_id`` INT64 or BYTES [B] (required), ``k`` INT64 [1] (default
10), ``history`` INT64 [B, T'] (explicit video ids, -1 = padding, most recent last), ``explain``
BOOL [1].
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RawTensor", "RecRequest", "RequestError", "parse_request"]

_ITEMSIZE = {"INT64": 8, "INT32": 4, "BOOL": 1, "FP32": 4, "UINT8": 1}
_NP = {"INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32, "UINT8": np.uint8}
KNOWN_INPUTS = ("user_id", "k", "history", "explain")


class RequestError(ValueError):
    """A request input is missing, of the wrong type or shape, or out of range; names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"input '{field}': {message}")
        self.field = field


@dataclass(frozen=True)
class RawTensor:
    """An input as it came off the wire: either ``raw`` bytes or a list of ``values``."""

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


def _decode(t: RawTensor) -> np.ndarray:
    """The tensor as a numpy array of ``t.shape``; RequestError when data and shape disagree."""
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in t.shape):
        raise RequestError(t.name, f"shape {list(t.shape)} must be non-negative integers")
    count = int(np.prod(t.shape)) if t.shape else 1
    if t.datatype == "BYTES":
        items = _bytes_items(t, count)
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(t.shape)
    if t.datatype not in _ITEMSIZE:
        raise RequestError(t.name, f"datatype {t.datatype} is not supported here")
    if t.raw is not None:
        want = count * _ITEMSIZE[t.datatype]
        if len(t.raw) != want:
            raise RequestError(t.name, f"{len(t.raw)} bytes of data for shape {list(t.shape)} of {t.datatype} "
                                       f"(needs {want})")
        return np.frombuffer(t.raw, dtype=_NP[t.datatype]).reshape(t.shape)
    values = t.values if t.values is not None else []
    flat = np.asarray(values).reshape(-1) if len(values) else np.zeros(0)
    if flat.size != count:
        raise RequestError(t.name, f"{flat.size} values for shape {list(t.shape)} (needs {count})")
    try:
        return flat.astype(_NP[t.datatype], casting="unsafe" if t.datatype == "BOOL" else "same_kind").reshape(t.shape)
    except (TypeError, ValueError) as e:
        raise RequestError(t.name, f"values are not {t.datatype}: {e}") from None


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
        for v in (t.values if t.values is not None else []):
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
    """Check the request's inputs and return a ``RecRequest``; ``RequestError`` names what is wrong.

    ``max_k`` is the largest k this server can answer (``min(--max_k, catalogue size)``).
    """
    unknown = sorted(set(inputs) - set(KNOWN_INPUTS))
    if unknown:
        raise RequestError(unknown[0], f"unknown input; the inputs are {list(KNOWN_INPUTS)}")
    if "user_id" not in inputs:
        raise RequestError("user_id", "missing (INT64 or BYTES [B])")
    u = inputs["user_id"]
    if u.datatype not in ("INT64", "BYTES", "INT32"):
        raise RequestError("user_id", f"must be INT64 or BYTES, got {u.datatype}")
    if len(u.shape) != 1:
        raise RequestError("user_id", f"must have shape [B], got {list(u.shape)}")
    b = u.shape[0]
    if b < 1:
        raise RequestError("user_id", "holds no user (B = 0)")
    if b > max_batch_size:
        raise RequestError("user_id", f"B = {b} users exceeds the maximum batch size {max_batch_size}")
    users_arr = _decode(u)
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
        kt = inputs["k"]
        if kt.datatype not in ("INT64", "INT32"):
            raise RequestError("k", f"must be INT64, got {kt.datatype}")
        if (int(np.prod(kt.shape)) if kt.shape else 1) != 1:
            raise RequestError("k", f"must hold one value (shape [1]), got shape {list(kt.shape)}")
        k = int(_decode(kt).reshape(-1)[0])
    if k < 1:
        raise RequestError("k", f"must be >= 1, got {k}")
    if k > max_k:
        raise RequestError("k", f"k = {k} is above what this server returns ({max_k}: the catalogue or --max_k)")

    histories = None
    if "history" in inputs:
        h = inputs["history"]
        if h.datatype not in ("INT64", "INT32"):
            raise RequestError("history", f"must be INT64 video ids, got {h.datatype}")
        if len(h.shape) != 2 or h.shape[0] != b:
            raise RequestError("history", f"must have shape [B={b}, T], got {list(h.shape)}")
        if h.shape[1] > max_history_len:
            raise RequestError("history", f"T = {h.shape[1]} is longer than {max_history_len}")
        arr = _decode(h).astype(np.int64)
        if (arr < -1).any():
            raise RequestError("history", "video ids must be >= 0 (-1 pads)")
        histories = [[int(v) for v in row if v >= 0] for row in arr]

    explain = False
    if "explain" in inputs:
        e = inputs["explain"]
        if e.datatype not in ("BOOL", "INT64", "INT32"):
            raise RequestError("explain", f"must be BOOL, got {e.datatype}")
        vals = _decode(e).reshape(-1)
        if vals.size != 1:
            raise RequestError("explain", f"must hold one value (shape [1]), got shape {list(e.shape)}")
        explain = bool(vals[0])
    return RecRequest(users, k, histories, explain)
