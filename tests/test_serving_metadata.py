"""The transformer's v2 model metadata tells its contract, and a request built from it alone is answered.

The transformer and the KServe fallback predictor run on loopback over the toy repository
(``served_transformer`` in conftest.py); ``tritonclient`` reads ``ModelMetadata`` over gRPC and ``GET /v2/models/NAME``
over HTTP, as a generic v2 client would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from linkedout.serving.request import INPUTS, OUTPUTS

pytestmark = pytest.mark.integration

# docs/serving.md §3: what a client relies on (-1: any size)
CONTRACT_INPUTS = {"user_id": ("BYTES", [-1]), "k": ("INT64", [1]), "history": ("INT64", [-1, -1]),
                   "explain": ("BOOL", [1])}
CONTRACT_OUTPUTS = {"items": ("INT64", [-1, -1]), "scores": ("FP32", [-1, -1]), "variant": ("BYTES", [-1]),
                    "model_version": ("BYTES", [-1]), "cold_start": ("BOOL", [-1]), "unknown_items": ("BYTES", [-1]),
                    "gate": ("FP32", [-1, -1, -1]), "contributions": ("FP32", [-1, -1, -1])}
# one value of each datatype: enough to fill any tensor the metadata asks for
EXAMPLE = {"BYTES": np.asarray([b"1"], dtype=object), "INT64": np.asarray([1], dtype=np.int64),
           "BOOL": np.asarray([True]), "FP32": np.asarray([1.0], dtype=np.float32)}


def tensors(meta: list[dict[str, Any]]) -> dict[str, tuple[str, list[int]]]:
    return {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta}


def metadata(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model metadata read by tritonclient, over gRPC and over HTTP."""
    g = grpcclient.InferenceServerClient(info["grpc"])
    h = httpclient.InferenceServerClient(info["http"].split("://")[-1])
    try:
        return {"grpc": g.get_model_metadata(info["model"], as_json=True, client_timeout=10),
                "http": h.get_model_metadata(info["model"])}
    finally:
        g.close()
        h.close()


def test_the_metadata_lists_every_input_and_output_with_datatype_and_shape(served_transformer: dict[str, Any]) -> None:
    for protocol, meta in metadata(served_transformer).items():
        assert meta["name"] == served_transformer["model"], protocol
        assert tensors(meta["inputs"]) == CONTRACT_INPUTS, protocol
        assert tensors(meta["outputs"]) == CONTRACT_OUTPUTS, protocol
    # the request parser reads the same table, and accepts the advertised datatype of every input
    assert {t.name: t.datatype for t in INPUTS} == {n: d for n, (d, _) in CONTRACT_INPUTS.items()}
    assert [t.name for t in OUTPUTS] == list(CONTRACT_OUTPUTS)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_request_built_from_the_metadata_alone_is_answered_as_it_says(served_transformer: dict[str, Any],
                                                                         protocol: str) -> None:
    """Every input filled with one value of its datatype (dynamic dimensions of size 1): the answer
    carries every output the metadata lists (``explain`` is among the inputs), each in its datatype
    and rank, fixed dimensions as listed."""
    meta = metadata(served_transformer)[protocol]
    lib: Any = grpcclient if protocol == "grpc" else httpclient
    inputs = []
    for name, (datatype, shape) in tensors(meta["inputs"]).items():
        dims = [1 if d < 0 else d for d in shape]
        tensor = lib.InferInput(name, dims, datatype)
        tensor.set_data_from_numpy(np.resize(EXAMPLE[datatype], dims).astype(EXAMPLE[datatype].dtype))
        inputs.append(tensor)
    url = served_transformer["grpc"] if protocol == "grpc" else served_transformer["http"].split("://")[-1]
    client = lib.InferenceServerClient(url)
    try:
        result = client.infer(served_transformer["model"], inputs)
    finally:
        client.close()
    answered = result.get_response(as_json=True) if protocol == "grpc" else result.get_response()
    outputs = tensors(answered["outputs"])
    assert set(outputs) == set(CONTRACT_OUTPUTS)
    for name, (datatype, shape) in tensors(meta["outputs"]).items():
        got_type, got_shape = outputs[name]
        assert got_type == datatype and len(got_shape) == len(shape), (name, outputs[name])
        assert all(want in (-1, got) for want, got in zip(shape, got_shape)), (name, got_shape)
        assert result.as_numpy(name).shape == tuple(got_shape)
    assert outputs["items"][1] == [1, 1]  # B = 1 user, k = 1 (the value every INT64 input got)
