"""Malformed Open Inference Protocol v2 requests for the transformer, over gRPC and REST, and how to send them.

Shared by ``tests/test_serving_fuzz.py`` (a bounded sample, asserted) and ``bench/fuzz_serve.py``
(10,000 gRPC + 1,000 REST requests, counted per kind). Every case is built from a seeded RNG of its
own (``random.Random(f"{seed}/{kind}/{index}")``), so ``grpc_case(kind, seed, index)`` rebuilds the
one that failed.

gRPC cases are raw bytes sent with an identity serializer (so undecodable and truncated protobufs
reach the server as they are); the well-formed ones are ``tritonclient.grpc.service_pb2`` messages
(the same ``inference`` package on the wire as KServe's ``grpc_predict_v2_pb2``, which cannot be
imported beside tritonclient: kserve#3099). Each case names the status codes a correct server gives
it (``expect``): a malformed tensor is refused with INVALID_ARGUMENT, never answered; nothing is
ever UNKNOWN, INTERNAL, or a hang.
"""

from __future__ import annotations

import http.client
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
#: RPCs of the v2 service other than ModelInfer (the transformer serves them all through KServe)
OTHER_RPCS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
              "RepositoryModelLoad", "RepositoryModelUnload")
#: what no request may ever get
BAD_GRPC = frozenset({"UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED"})

INVALID = frozenset({"INVALID_ARGUMENT"})
REFUSED_400 = frozenset({400})
SCHEMA_4XX = frozenset({400, 422})  # a body that is not a v2 request at all: FastAPI's 422 or KServe's 400


@dataclass(frozen=True)
class Target:
    """The served model and the limits its malformed cases step over (the transformer's defaults)."""

    model: str = "linkedout"
    max_batch_size: int = 64
    max_history_len: int = 1000


@dataclass(frozen=True)
class GrpcCase:
    kind: str
    method: str  # an RPC of the v2 service, e.g. "ModelInfer"
    body: bytes
    expect: frozenset[str]  # status code names a correct server answers
    names: str = ""  # what the error's details must name (the input, the RPC), when the kind says it


@dataclass(frozen=True)
class RestCase:
    kind: str
    path: str
    body: bytes
    headers: dict[str, str]
    expect: frozenset[int]  # HTTP statuses a correct server answers
    names: str = ""  # what the error body must name, when the kind says it


Tensor = tuple[str, str, list[int], bytes]  # name, datatype, shape, raw bytes


def i64(*values: int) -> bytes:
    return np.asarray(values, dtype=np.int64).tobytes()


def bytes_raw(*items: bytes) -> bytes:
    """The v2 BYTES framing: a 4-byte little-endian length before each element."""
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def infer_message(model: str, tensors: list[Tensor], *, raw: bool = True) -> Any:
    """A ModelInferRequest: each tensor's bytes in ``raw_input_contents`` (``raw``) or nowhere."""
    req = pb.ModelInferRequest(model_name=model, id="fuzz")
    for name, datatype, shape, data in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            req.raw_input_contents.append(data)
    return req


def valid_tensors(rng: random.Random) -> list[Tensor]:
    return [("user_id", "INT64", [1], i64(rng.randrange(10**6))), ("k", "INT64", [1], i64(5))]


def infer_case(kind: str, target: Target, tensors: list[Tensor], names: str,
               expect: frozenset[str] = INVALID) -> GrpcCase:
    return GrpcCase(kind, "ModelInfer", infer_message(target.model, tensors).SerializeToString(), expect, names)


def undecodable(rng: random.Random) -> bytes:
    """Bytes no protobuf message parses: a length-delimited field 1 claiming more than follows."""
    tail = rng.randbytes(rng.randrange(0, 40))
    return b"\x0a" + bytes([rng.randrange(len(tail) + 1, 128)]) + tail  # a one-byte length past the end


# ------------------------------------------------------------------------------------------ gRPC kinds


def _random_bytes(rng: random.Random, t: Target) -> GrpcCase:  # mostly undecodable; a decoded one names no model
    return GrpcCase("random_bytes", "ModelInfer", rng.randbytes(rng.randrange(1, 200)),
                    frozenset({"INVALID_ARGUMENT", "NOT_FOUND"}))


def _truncated(rng: random.Random, t: Target) -> GrpcCase:
    body = infer_message(t.model, valid_tensors(rng)).SerializeToString()
    return GrpcCase("truncated_infer", "ModelInfer", body[:rng.randrange(1, len(body))], INVALID)


def _bitflip(rng: random.Random, t: Target) -> GrpcCase:
    body = bytearray(infer_message(t.model, valid_tensors(rng)).SerializeToString())
    for _ in range(rng.randint(1, 4)):
        body[rng.randrange(len(body))] = rng.randrange(256)
    return GrpcCase("bitflip_infer", "ModelInfer", bytes(body), frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND"}))


def _undecodable_infer(rng: random.Random, t: Target) -> GrpcCase:
    return GrpcCase("undecodable_infer", "ModelInfer", undecodable(rng), INVALID,
                    "ModelInfer: the request is not a valid protobuf")


def _undecodable_other(rng: random.Random, t: Target) -> GrpcCase:
    method = rng.choice(OTHER_RPCS)
    return GrpcCase("undecodable_other_rpc", method, undecodable(rng), INVALID,
                    f"{method}: the request is not a valid protobuf")


def _unknown_model(rng: random.Random, t: Target) -> GrpcCase:
    name = f"nosuch-{rng.randrange(1000)}"
    return GrpcCase("unknown_model", "ModelInfer", infer_message(name, valid_tensors(rng)).SerializeToString(),
                    frozenset({"NOT_FOUND"}), name)


def _missing_user_id(rng: random.Random, t: Target) -> GrpcCase:
    return infer_case("missing_user_id", t, [("k", "INT64", [1], i64(5))], "input 'user_id'")


def _unknown_input(rng: random.Random, t: Target) -> GrpcCase:
    extra = rng.choice(["colour", "user", "K", "", "history "])
    return infer_case("unknown_input", t, [*valid_tensors(rng), (extra, "INT64", [1], i64(1))], f"input '{extra}'")


def _duplicate_input(rng: random.Random, t: Target) -> GrpcCase:
    tensors = valid_tensors(rng)
    twice = tensors[rng.randrange(2)]
    return infer_case("duplicate_input", t, [*tensors, twice], f"input '{twice[0]}' is given twice")


def _user_id_datatype(rng: random.Random, t: Target) -> GrpcCase:
    datatype, size = rng.choice([("FP32", 4), ("FP64", 8), ("BOOL", 1), ("UINT8", 1), ("INT8", 1), ("UINT64", 8)])
    return infer_case("user_id_wrong_datatype", t, [("user_id", datatype, [2], rng.randbytes(2 * size)),
                                                    ("k", "INT64", [1], i64(5))], "input 'user_id'")


def _user_id_rank(rng: random.Random, t: Target) -> GrpcCase:
    shape = rng.choice([[1, 1], [], [1, 1, 1], [2, 1]])
    return infer_case("user_id_wrong_rank", t, [("user_id", "INT64", shape, i64(*[7] * int(np.prod(shape))))],
                      "input 'user_id'")


def _empty_batch(rng: random.Random, t: Target) -> GrpcCase:
    return infer_case("empty_batch", t, [("user_id", rng.choice(["INT64", "BYTES"]), [0], b"")], "input 'user_id'")


def _huge_batch_declared(rng: random.Random, t: Target) -> GrpcCase:
    b = rng.choice([t.max_batch_size + 1, 10**6, 2**31, 2**40, 2**62])
    return infer_case("huge_batch_declared", t, [("user_id", "INT64", [b], i64(1))], "input 'user_id'")


def _huge_batch_real(rng: random.Random, t: Target) -> GrpcCase:
    b = rng.randint(t.max_batch_size + 1, 4 * t.max_batch_size)
    return infer_case("huge_batch_real", t, [("user_id", "INT64", [b], i64(*range(b)))], "input 'user_id'")


def _raw_length_lie(rng: random.Random, t: Target) -> GrpcCase:
    b = rng.randint(1, 8)
    n = rng.choice([k for k in range(0, 8 * b + 12) if k != 8 * b])
    return infer_case("raw_length_lie", t, [("user_id", "INT64", [b], rng.randbytes(n))], "input 'user_id'")


def _contents_count_lie(rng: random.Random, t: Target) -> GrpcCase:
    req = infer_message(t.model, [], raw=False)
    b = rng.randint(1, 6)
    n = rng.choice([k for k in range(0, 10) if k != b])
    tensor = req.inputs.add(name="user_id", datatype="INT64", shape=[b])
    tensor.contents.int64_contents.extend(range(n))
    return GrpcCase("contents_count_lie", "ModelInfer", req.SerializeToString(), INVALID, "input 'user_id'")


def _contents_and_raw(rng: random.Random, t: Target) -> GrpcCase:
    req = infer_message(t.model, valid_tensors(rng))
    tensor = req.inputs[rng.randrange(2)]
    tensor.contents.int64_contents.append(3)
    return GrpcCase("contents_and_raw", "ModelInfer", req.SerializeToString(), INVALID, f"input '{tensor.name}'")


def _contents_wrong_field(rng: random.Random, t: Target) -> GrpcCase:
    req = infer_message(t.model, [], raw=False)
    name, datatype = rng.choice([("user_id", "INT64"), ("k", "INT64"), ("explain", "BOOL"), ("user_id", "BYTES")])
    if name != "user_id":
        req.inputs.add(name="user_id", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
    tensor = req.inputs.add(name=name, datatype=datatype, shape=[1])
    field = rng.choice([f for f in ("int_contents", "fp32_contents", "uint64_contents", "bytes_contents",
                                    "int64_contents", "bool_contents")
                        if f != {"INT64": "int64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}[datatype]])
    getattr(tensor.contents, field).append(b"1" if field == "bytes_contents" else 1)
    return GrpcCase("contents_wrong_field", "ModelInfer", req.SerializeToString(), INVALID, f"input '{name}'")


def _bytes_framing_lie(rng: random.Random, t: Target) -> GrpcCase:
    good = bytes_raw(b"u1", b"u22")
    raw = rng.choice([good[:-1], good[:5], struct.pack("<I", 1000) + b"abc", b"\x02\x00", good + b"\x01"])
    return infer_case("bytes_framing_lie", t, [("user_id", "BYTES", [2], raw)], "input 'user_id'")


def _bytes_count_lie(rng: random.Random, t: Target) -> GrpcCase:
    n = rng.randint(1, 5)
    shape = rng.choice([k for k in range(0, 8) if k != n])
    return infer_case("bytes_count_lie", t, [("user_id", "BYTES", [shape], bytes_raw(*[b"u"] * n))], "input 'user_id'")


def _bytes_not_utf8(rng: random.Random, t: Target) -> GrpcCase:
    return infer_case("bytes_not_utf8", t, [("user_id", "BYTES", [1], bytes_raw(rng.choice([b"\xff\xfe", b"a\x80"])))],
                      "input 'user_id'")


def _k_range(rng: random.Random, t: Target) -> GrpcCase:
    k = rng.choice([0, -1, -(2**63), 10**9, 2**63 - 1])
    return infer_case("k_out_of_range", t, [("user_id", "INT64", [1], i64(1)), ("k", "INT64", [1], i64(k))], "input 'k'")


def _k_shape(rng: random.Random, t: Target) -> GrpcCase:
    k = rng.choice([("k", "INT64", [2], i64(3, 4)), ("k", "INT64", [0], b""), ("k", "BYTES", [1], bytes_raw(b"5")),
                    ("k", "FP32", [1], struct.pack("<f", 5.0))])
    return infer_case("k_wrong_shape_or_type", t, [("user_id", "INT64", [1], i64(1)), k], "input 'k'")


def _history_shape(rng: random.Random, t: Target) -> GrpcCase:
    shape = rng.choice([[3], [2, 3], [1, 1, 3], [0, 3]])
    return infer_case("history_wrong_shape", t, [("user_id", "INT64", [1], i64(1)),
                                                 ("history", "INT64", shape, i64(*[5] * int(np.prod(shape))))],
                      "input 'history'")


def _history_ids(rng: random.Random, t: Target) -> GrpcCase:
    bad = rng.choice([-2, -(2**63), -100])
    return infer_case("history_bad_ids", t, [("user_id", "INT64", [1], i64(1)),
                                             ("history", "INT64", [1, 3], i64(5, bad, 7))], "input 'history'")


def _history_long(rng: random.Random, t: Target) -> GrpcCase:
    n = rng.randint(t.max_history_len + 1, 4 * t.max_history_len)
    return infer_case("history_too_long", t, [("user_id", "INT64", [1], i64(1)),
                                              ("history", "INT64", [1, n], i64(*[3] * n))], "input 'history'")


def _history_raw_lie(rng: random.Random, t: Target) -> GrpcCase:
    return infer_case("history_raw_lie", t, [("user_id", "INT64", [1], i64(1)),
                                             ("history", "INT64", [1, rng.randint(2, 9)], i64(3))], "input 'history'")


def _explain_bad(rng: random.Random, t: Target) -> GrpcCase:
    e = rng.choice([("explain", "BOOL", [3], b"\x01\x00\x01"), ("explain", "FP32", [1], struct.pack("<f", 1.0)),
                    ("explain", "BYTES", [1], bytes_raw(b"yes")), ("explain", "BOOL", [1], b"\x01\x01")])
    return infer_case("explain_bad", t, [("user_id", "INT64", [1], i64(1)), e], "input 'explain'")


def _raw_count(rng: random.Random, t: Target) -> GrpcCase:
    req = infer_message(t.model, valid_tensors(rng))
    if rng.random() < 0.5:
        del req.raw_input_contents[-1]
    else:
        req.raw_input_contents.append(i64(9))
    return GrpcCase("raw_count_mismatch", "ModelInfer", req.SerializeToString(), INVALID, "raw input contents")


def _unknown_datatype(rng: random.Random, t: Target) -> GrpcCase:
    datatype = rng.choice(["FOO", "", "int64", "FP16", "STRING", "INT128"])
    return infer_case("unknown_datatype", t, [("user_id", datatype, [1], i64(1))], "input 'user_id'")


def _bad_shape(rng: random.Random, t: Target) -> GrpcCase:
    shape = rng.choice([[-1], [-7], [2**62, 4], [2**32, 2**32], [-(2**63)]])
    return infer_case("negative_or_overflowing_shape", t, [("user_id", "INT64", shape, i64(1))], "input 'user_id'")


def _unknown_output(rng: random.Random, t: Target) -> GrpcCase:
    req = infer_message(t.model, valid_tensors(rng))
    name = rng.choice(["nope", "item", "scores "])
    req.outputs.add(name=name)
    return GrpcCase("unknown_output", "ModelInfer", req.SerializeToString(), INVALID, f"output '{name}'")


GRPC_KINDS: dict[str, Callable[[random.Random, Target], GrpcCase]] = {
    "random_bytes": _random_bytes, "truncated_infer": _truncated, "bitflip_infer": _bitflip,
    "undecodable_infer": _undecodable_infer, "undecodable_other_rpc": _undecodable_other,
    "unknown_model": _unknown_model, "missing_user_id": _missing_user_id, "unknown_input": _unknown_input,
    "duplicate_input": _duplicate_input, "user_id_wrong_datatype": _user_id_datatype,
    "user_id_wrong_rank": _user_id_rank, "empty_batch": _empty_batch, "huge_batch_declared": _huge_batch_declared,
    "huge_batch_real": _huge_batch_real, "raw_length_lie": _raw_length_lie, "contents_count_lie": _contents_count_lie,
    "contents_and_raw": _contents_and_raw, "contents_wrong_field": _contents_wrong_field,
    "bytes_framing_lie": _bytes_framing_lie, "bytes_count_lie": _bytes_count_lie, "bytes_not_utf8": _bytes_not_utf8,
    "k_out_of_range": _k_range, "k_wrong_shape_or_type": _k_shape, "history_wrong_shape": _history_shape,
    "history_bad_ids": _history_ids, "history_too_long": _history_long, "history_raw_lie": _history_raw_lie,
    "explain_bad": _explain_bad, "raw_count_mismatch": _raw_count, "unknown_datatype": _unknown_datatype,
    "negative_or_overflowing_shape": _bad_shape, "unknown_output": _unknown_output,
}


def grpc_case(kind: str, seed: int, index: int, target: Target = Target()) -> GrpcCase:
    """Case ``index`` of ``kind`` for ``seed``: the same bytes every time."""
    return GRPC_KINDS[kind](random.Random(f"{seed}/{kind}/{index}"), target)


# ------------------------------------------------------------------------------------------ REST kinds


def _json(path: str, doc: Any) -> tuple[str, bytes, dict[str, str]]:
    return path, json.dumps(doc).encode(), {"Content-Type": "application/json"}


def _rest_input(name: str, datatype: str, shape: Any, data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _infer_path(t: Target) -> str:
    return f"/v2/models/{t.model}/infer"


def _binary(t: Target, header: dict[str, Any], raw: bytes, *, json_length: str | None = None) -> tuple[str, bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return _infer_path(t), head + raw, {"Content-Type": "application/octet-stream",
                                        "Inference-Header-Content-Length": str(len(head)) if json_length is None
                                        else json_length}


def _rest(kind: str, expect: frozenset[int], made: tuple[str, bytes, dict[str, str]], names: str = "") -> RestCase:
    return RestCase(kind, made[0], made[1], made[2], expect, names)


def _rest_valid_inputs() -> list[dict[str, Any]]:
    return [_rest_input("user_id", "INT64", [1], [1]), _rest_input("k", "INT64", [1], [5])]


def _r_not_json(rng: random.Random, t: Target) -> RestCase:
    body = rng.choice([rng.randbytes(rng.randrange(1, 100)), b'{"inputs": [', b"{'inputs': []}", b"NaN"])
    return RestCase("rest_not_json", _infer_path(t), body, {"Content-Type": "application/json"}, SCHEMA_4XX)


def _r_not_object(rng: random.Random, t: Target) -> RestCase:
    return _rest("rest_json_not_object", SCHEMA_4XX, _json(_infer_path(t), rng.choice([[1], "x", None, 5, []])))


def _r_inputs_type(rng: random.Random, t: Target) -> RestCase:
    return _rest("rest_inputs_wrong_type", SCHEMA_4XX,
                 _json(_infer_path(t), {"inputs": rng.choice([{}, 5, "x", [1], [[]], None])}))


def _r_missing_field(rng: random.Random, t: Target) -> RestCase:
    tensor = _rest_input("user_id", "INT64", [1], [1])
    del tensor[rng.choice(["name", "datatype", "shape", "data"])]
    return _rest("rest_input_missing_field", SCHEMA_4XX, _json(_infer_path(t), {"inputs": [tensor]}))


def _r_field_type(rng: random.Random, t: Target) -> RestCase:
    tensor = _rest_input("user_id", "INT64", [1], [1])
    field, value = rng.choice([("shape", "abc"), ("shape", [1.5]), ("shape", ["a"]), ("datatype", 5), ("name", 7),
                               ("data", "x"), ("shape", None)])
    tensor[field] = value
    return _rest("rest_field_wrong_type", SCHEMA_4XX, _json(_infer_path(t), {"inputs": [tensor]}))


def _r_ragged(rng: random.Random, t: Target) -> RestCase:
    data = rng.choice([[[1, 2], [3]], [[1, [2]], [3, 4]], [[1, 2], 3]])
    return _rest("rest_ragged_data", REFUSED_400, _json(_infer_path(t), {"inputs": [
        _rest_input("user_id", "INT64", [2], [1, 2]), _rest_input("history", "INT64", [2, 2], data)]}), "input 'history'")


def _r_shape_mismatch(rng: random.Random, t: Target) -> RestCase:
    shape, data = rng.choice([([3], [1, 2]), ([1], [1, 2]), ([2], [[1, 2]]), ([0], [])])
    return _rest("rest_shape_data_mismatch", REFUSED_400,
                 _json(_infer_path(t), {"inputs": [_rest_input("user_id", "INT64", shape, data)]}), "input 'user_id'")


def _r_int_overflow(rng: random.Random, t: Target) -> RestCase:
    name, value = rng.choice([("user_id", 2**70), ("k", 2**64), ("k", -(2**70)), ("user_id", -(2**64))])
    inputs = [_rest_input("user_id", "INT64", [1], [value if name == "user_id" else 1])]
    if name == "k":
        inputs.append(_rest_input("k", "INT64", [1], [value]))
    return _rest("rest_int_overflow", REFUSED_400, _json(_infer_path(t), {"inputs": inputs}), f"input '{name}'")


def _r_wrong_values(rng: random.Random, t: Target) -> RestCase:
    value = rng.choice([1.5, "a", None, {"x": 1}, [1], True])
    return _rest("rest_values_wrong_type", REFUSED_400, _json(_infer_path(t), {"inputs": [
        _rest_input("user_id", "INT64", [1], [1]), _rest_input("k", "INT64", [1], [value])]}), "input 'k'")


def _r_header_lie(rng: random.Random, t: Target) -> RestCase:
    header = {"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    head_len = len(json.dumps(header))
    lie = rng.choice(["abc", "-5", str(head_len + 100), "0", str(head_len - 3), "1e3", "", " 7"])
    return _rest("rest_binary_header_length_lie", REFUSED_400, _binary(t, header, i64(1), json_length=lie),
                 "binary request body")


def _r_size_lie(rng: random.Random, t: Target) -> RestCase:
    size = rng.choice([100, -8, "8", 8.5, None, 2**40, 0])
    header = {"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": size}}]}
    return _rest("rest_binary_size_lie", REFUSED_400, _binary(t, header, i64(1)), "binary request body")


def _r_binary_partial(rng: random.Random, t: Target) -> RestCase:
    b = rng.randint(1, 4)
    datatype = rng.choice(["INT64", "BYTES"])
    if datatype == "INT64":
        raw = rng.randbytes(rng.choice([k for k in range(1, 8 * b + 9) if k != 8 * b]))
    else:  # a length prefix claiming more than follows, or one element too many
        raw = rng.choice([struct.pack("<I", 100) + b"abc", bytes_raw(*[b"u"] * (b + 1))])
    header = {"inputs": [{"name": "user_id", "datatype": datatype, "shape": [b],
                          "parameters": {"binary_data_size": len(raw)}}]}
    return _rest("rest_binary_length_mismatch", REFUSED_400, _binary(t, header, raw), "input 'user_id'")


def _r_unknown_model(rng: random.Random, t: Target) -> RestCase:
    return _rest("rest_unknown_model", frozenset({404}),
                 _json(f"/v2/models/nosuch-{rng.randrange(100)}/infer", {"inputs": _rest_valid_inputs()}))


def _r_huge_shape(rng: random.Random, t: Target) -> RestCase:
    shape = rng.choice([[10**12], [2**62, 4], [-1], [t.max_batch_size + 1]])
    return _rest("rest_huge_or_negative_shape", REFUSED_400,
                 _json(_infer_path(t), {"inputs": [_rest_input("user_id", "INT64", shape, [1])]}), "input 'user_id'")


def _r_bytes_values(rng: random.Random, t: Target) -> RestCase:
    data = rng.choice([[1], [{}], [None], [["a"]]])
    return _rest("rest_bytes_not_strings", REFUSED_400,
                 _json(_infer_path(t), {"inputs": [_rest_input("user_id", "BYTES", [1], data)]}), "input 'user_id'")


def _r_deep(rng: random.Random, t: Target) -> RestCase:
    n = rng.choice([30, 1000, 100_000])
    body = (b'{"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": '
            + b"[" * n + b"1" + b"]" * n + b"}]}")
    return RestCase("rest_deep_nesting", _infer_path(t), body, {"Content-Type": "application/json"}, SCHEMA_4XX)


REST_KINDS: dict[str, Callable[[random.Random, Target], RestCase]] = {
    "rest_not_json": _r_not_json, "rest_json_not_object": _r_not_object, "rest_inputs_wrong_type": _r_inputs_type,
    "rest_input_missing_field": _r_missing_field, "rest_field_wrong_type": _r_field_type,
    "rest_ragged_data": _r_ragged, "rest_shape_data_mismatch": _r_shape_mismatch, "rest_int_overflow": _r_int_overflow,
    "rest_values_wrong_type": _r_wrong_values, "rest_binary_header_length_lie": _r_header_lie,
    "rest_binary_size_lie": _r_size_lie, "rest_binary_length_mismatch": _r_binary_partial,
    "rest_unknown_model": _r_unknown_model, "rest_huge_or_negative_shape": _r_huge_shape,
    "rest_bytes_not_strings": _r_bytes_values, "rest_deep_nesting": _r_deep,
}


def rest_case(kind: str, seed: int, index: int, target: Target = Target()) -> RestCase:
    """Case ``index`` of ``kind`` for ``seed``: the same body and headers every time."""
    return REST_KINDS[kind](random.Random(f"{seed}/{kind}/{index}"), target)


# ------------------------------------------------------------------------------------------ sending


def send_grpc(channel: grpc.Channel, method: str, body: bytes, timeout: float) -> tuple[str, str, bytes]:
    """(status code name, details, response bytes): the bytes go out as they are (identity serializer)."""
    call = channel.unary_unary(SERVICE + method)  # no serializers: bytes in, bytes out
    try:
        return "OK", "", call(body, timeout=timeout)
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", b""


def send_rest(base: str, method: str, path: str, body: bytes, headers: dict[str, str],
              timeout: float) -> tuple[int, bytes]:
    """(HTTP status, body) of one request on a new connection; status 0 when none came within ``timeout``."""
    host, port = base.split("://")[-1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (TimeoutError, OSError):
        return 0, b""
    finally:
        conn.close()


def valid_grpc_answer(channel: grpc.Channel, target: Target, timeout: float) -> str:
    """'' when a valid ModelInfer for one user is answered with its ``items`` [1, 5]; else what went wrong."""
    body = infer_message(target.model, valid_tensors(random.Random(0))).SerializeToString()
    code, details, out = send_grpc(channel, "ModelInfer", body, timeout)
    if code != "OK":
        return f"a valid gRPC request got {code}: {details}"
    resp = pb.ModelInferResponse.FromString(out)
    shapes = {o.name: list(o.shape) for o in resp.outputs}
    return "" if shapes.get("items") == [1, 5] else f"a valid gRPC request got outputs {shapes}"


def valid_rest_answer(base: str, target: Target, timeout: float) -> str:
    """'' when a valid JSON request for one user is answered with its ``items`` [1, 5]; else what went wrong."""
    path, body, headers = _json(_infer_path(target), {"inputs": _rest_valid_inputs()})
    status, out = send_rest(base, "POST", path, body, headers, timeout)
    if status != 200:
        return f"a valid REST request got HTTP {status}: {out[:300]!r}"
    shapes = {o["name"]: o["shape"] for o in json.loads(out)["outputs"]}
    return "" if shapes.get("items") == [1, 5] else f"a valid REST request got outputs {shapes}"
