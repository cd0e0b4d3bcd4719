"""The generic Triton Python-backend model that runs one version's ``model.onnx`` with onnxruntime.

This file is standalone (numpy and onnxruntime only; it never imports ``linkedout``) because it is
copied as ``model.py`` into every version directory of the local Triton repository and runs inside
Triton's own environment. It reads the tensor names, types and shapes from the model's
``config.pbtxt`` (Triton hands it over as JSON), checks the ONNX graph against them when the version
loads, and batches the requests Triton gives it (dynamic batching) into one onnxruntime run.

It is the package data of ``linkedout.serving.local``, and LinkedOut's one onnxruntime runner
(:class:`OnnxRunner`). The same runner and checks serve more callers:

- ``python model.py --check`` (stdin: JSON ``{"threads": n, "items": [{"path": ..., "config": {...}}]}``,
  stdout: one JSON ``{"path", "ok", "reason"}`` per item): the local repository validates a new
  version with Triton's own onnxruntime *before* Triton can see it (:mod:`linkedout.serving.local.triton_repo`);
- the KServe fallback predictor (:mod:`linkedout.serving.local.predictor`) imports :class:`OnnxRunner`;
- the engine's tests run the ranker in-process with :class:`OnnxRunner` (no server hop).

Shapes: with ``max_batch_size > 0`` every tensor is ``[B, *dims]`` (the config leaves the batch out);
an input with ``reshape { shape: [...] }`` is ``[B, *reshape]`` inside the ONNX graph (e.g. a config
``dims: [1] reshape { shape: [] }`` for an ONNX input ``[N]``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

try:  # only inside Triton's Python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # the validator and the fallback predictor
    pb_utils = None

#: Triton data types -> numpy dtypes.
NUMPY_DTYPES: dict[str, Any] = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64, "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
#: onnxruntime type strings -> Triton data types.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "TYPE_BOOL", "tensor(uint8)": "TYPE_UINT8", "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64", "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16", "tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING", "tensor(bfloat16)": "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of ``config.pbtxt``."""

    name: str
    data_type: str            # "TYPE_INT64", ...
    dims: tuple[int, ...]     # config dims, batch left out; -1 = any
    model_dims: tuple[int, ...]  # the same inside the ONNX graph (reshape applied)
    batched: bool             # max_batch_size > 0: a leading batch dimension

    def shape(self, batch: int = -1) -> tuple[int, ...]:
        return ((batch,) if self.batched else ()) + self.dims

    def model_shape(self, batch: int = -1) -> tuple[int, ...]:
        return ((batch,) if self.batched else ()) + self.model_dims

    def describe(self) -> str:
        return f"{self.data_type[5:]} {list(self.shape())}"


def tensor_specs(config: dict[str, Any], kind: str) -> list[TensorSpec]:
    """The ``input`` or ``output`` tensors of a config in Triton's JSON form (``dims`` may be strings)."""
    batched = int(config.get("max_batch_size", 0) or 0) > 0
    specs = []
    for t in config.get(kind, []):
        dims = tuple(int(d) for d in t.get("dims", []))
        reshape = t.get("reshape")
        model_dims = tuple(int(d) for d in reshape.get("shape", [])) if reshape is not None else dims
        specs.append(TensorSpec(t["name"], t.get("data_type", "TYPE_INVALID"), dims, model_dims, batched))
    return specs


def _format_onnx_shape(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


def _shape_problem(spec: TensorSpec, onnx_shape: list[Any], max_batch_size: int) -> str | None:
    want = spec.model_shape()
    if len(onnx_shape) != len(want):
        return f"rank {len(onnx_shape)} in the ONNX graph, {len(want)} in config.pbtxt"
    for i, (have, expect) in enumerate(zip(onnx_shape, want)):
        if not isinstance(have, int) or have < 0:
            continue  # symbolic: anything goes
        if spec.batched and i == 0:
            if have != 1 or max_batch_size > 1:
                return (f"the ONNX graph fixes the batch dimension to {have}; max_batch_size "
                        f"{max_batch_size} needs it dynamic")
            continue
        if expect >= 0 and have != expect:
            return f"dimension {i} is {have} in the ONNX graph, {expect} in config.pbtxt"
    return None


def check_session(session: Any, config: dict[str, Any]) -> list[str]:
    """Static check of an onnxruntime session's inputs and outputs against the config."""
    problems = []
    max_batch = int(config.get("max_batch_size", 0) or 0)
    graph_in = {i.name: i for i in session.get_inputs()}
    graph_out = {o.name: o for o in session.get_outputs()}
    for kind, graph in (("input", graph_in), ("output", graph_out)):
        for spec in tensor_specs(config, kind):
            node = graph.get(spec.name)
            if node is None:
                problems.append(f"{kind} '{spec.name}' of config.pbtxt is not in the ONNX graph "
                                f"(its {kind}s: {', '.join(graph) or 'none'})")
                continue
            onnx_type = ONNX_TYPES.get(node.type, node.type)
            if onnx_type != spec.data_type:
                problems.append(f"{kind} '{spec.name}': config.pbtxt says {spec.data_type}, "
                                f"the ONNX graph has {onnx_type}")
            shape_issue = _shape_problem(spec, list(node.shape), max_batch)
            if shape_issue:
                problems.append(f"{kind} '{spec.name}': config.pbtxt says {spec.describe()}, the ONNX graph "
                                f"has {_format_onnx_shape(list(node.shape))}: {shape_issue}")
    declared = {s.name for s in tensor_specs(config, "input")}
    for name in graph_in:
        if name not in declared:
            problems.append(f"the ONNX graph needs input '{name}', which config.pbtxt does not declare")
    return problems


def _zeros(spec: TensorSpec, batch: int) -> np.ndarray:
    shape = tuple(1 if d < 0 else d for d in spec.shape(batch))
    if spec.data_type == "TYPE_STRING":
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype=NUMPY_DTYPES[spec.data_type])


class OnnxRunner:
    """One ONNX file run with onnxruntime under the tensor names and shapes of a ``config.pbtxt``."""

    def __init__(self, path: str, config: dict[str, Any], *, threads: int = 0) -> None:
        import onnxruntime as ort

        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # idle intra-op threads sleep instead of spinning: on a machine whose cores the transformer,
        # Feast and the clients share, spinning threads take CPU from them between requests
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise ValueError(f"onnxruntime cannot load {path}: {e}") from e
        self.path = path
        self.config = config
        self.max_batch_size = int(config.get("max_batch_size", 0) or 0)
        self.inputs = tensor_specs(config, "input")
        self.outputs = tensor_specs(config, "output")
        self.output_names = [s.name for s in self.outputs]

    def check(self) -> list[str]:
        """Static I/O check, then a zero-input run at batch 2 (1 when unbatched) checking output shapes."""
        problems = check_session(self.session, self.config)
        if problems or any(s.data_type == "TYPE_STRING" for s in self.inputs):
            return problems
        batch = min(2, self.max_batch_size) if self.max_batch_size > 0 else 1
        try:
            outputs = self.run({s.name: _zeros(s, batch) for s in self.inputs})
        except Exception as e:
            return [f"a test run on zero inputs (batch {batch}) failed: {e}"]
        for spec in self.outputs:
            got = outputs[spec.name].shape
            want = spec.shape(batch)
            if len(got) != len(want) or any(w >= 0 and g != w for g, w in zip(got, want)):
                problems.append(f"output '{spec.name}': config.pbtxt says {spec.describe()}, a run at batch "
                                f"{batch} gave {list(got)}")
        return problems

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Config-shaped inputs ``{name: [B, *dims]}`` -> config-shaped outputs ``{name: [B, *dims]}``."""
        feed = {}
        batch = None
        for spec in self.inputs:
            if spec.name not in inputs:
                raise ValueError(f"missing input '{spec.name}'")
            x = np.asarray(inputs[spec.name])
            if spec.data_type != "TYPE_STRING":
                x = x.astype(NUMPY_DTYPES[spec.data_type], copy=False)
            if spec.batched:
                batch = x.shape[0] if x.ndim else None
                x = x.reshape((x.shape[0], *spec.model_dims)) if spec.model_dims != spec.dims else x
            elif spec.model_dims != spec.dims:
                x = x.reshape(spec.model_dims)
            feed[spec.name] = x
        results = self.session.run(self.output_names, feed)
        out = {}
        for spec, y in zip(self.outputs, results):
            y = np.asarray(y)
            if spec.data_type != "TYPE_STRING":
                y = y.astype(NUMPY_DTYPES[spec.data_type], copy=False)
            if spec.dims != spec.model_dims:
                y = y.reshape(((batch,) if spec.batched and batch is not None else ()) + spec.dims)
            out[spec.name] = y
        return out


def check_model(path: str, config: dict[str, Any], *, threads: int = 1) -> str | None:
    """Why ``path`` cannot serve under ``config`` ('; '-joined problems), or None when it can."""
    try:
        runner = OnnxRunner(path, config, threads=threads)
    except (ValueError, FileNotFoundError) as e:
        return str(e)
    problems = runner.check()
    return "; ".join(problems) if problems else None


class TritonPythonModel:
    """Triton's entry point: ``initialize`` loads and checks, ``execute`` batches and runs."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        threads = int(params.get("intra_op_num_threads", "0") or 0)
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.name = f"{args['model_name']} version {args['model_version']}"
        self.runner = OnnxRunner(path, config, threads=threads)  # raises: the version does not load
        problems = self.runner.check()
        if problems:
            raise ValueError(f"{self.name}: {path} does not match config.pbtxt: " + "; ".join(problems))
        pb_utils.Logger.log_info(f"{self.name}: serving {path} with onnxruntime")

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = self.runner.inputs
        arrays: list[dict[str, np.ndarray] | None] = []
        responses: list[Any] = [None] * len(requests)
        for i, request in enumerate(requests):
            got: dict[str, np.ndarray] = {}
            for spec in inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
                if tensor is None:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{self.name}: missing input '{spec.name}'"))
                    break
                got[spec.name] = tensor.as_numpy()
            arrays.append(None if responses[i] is not None else got)
        # Requests whose non-batch shapes agree run as one onnxruntime batch.
        wanted = [_requested(r) for r in requests]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, arrs in enumerate(arrays):
            if arrs is None:
                continue
            key: tuple[Any, ...]
            if self.runner.max_batch_size > 0:
                key = tuple(arrs[s.name].shape[1:] for s in inputs)
            else:
                key = ("request", i)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            self._run_group(members, arrays, responses, wanted)
        return responses

    def _run_group(self, members: list[int], arrays: list[dict[str, np.ndarray] | None],
                   responses: list[Any], wanted: list[set[str] | None]) -> None:
        parts = [arrays[i] for i in members]
        try:
            if len(parts) == 1:
                batch = parts[0]
            else:
                batch = {s.name: np.concatenate([p[s.name] for p in parts], axis=0)  # type: ignore[index]
                         for s in self.runner.inputs}
            assert batch is not None
            outputs = self.runner.run(batch)
        except Exception as e:
            for i in members:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {e}"))
            return
        start = 0
        for i, part in zip(members, parts):
            assert part is not None
            size = next(iter(part.values())).shape[0] if self.runner.max_batch_size > 0 else 0
            tensors = []
            for spec in self.runner.outputs:
                if wanted[i] is not None and spec.name not in wanted[i]:  # type: ignore[operator]
                    continue  # not asked for: not copied back to Triton
                y = outputs[spec.name]
                y = y[start:start + size] if self.runner.max_batch_size > 0 and len(parts) > 1 else y
                tensors.append(pb_utils.Tensor(spec.name, np.ascontiguousarray(y)))
            start += size
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.runner = None  # type: ignore[assignment]


def _requested(request: Any) -> set[str] | None:
    """The outputs a request asks for (None: all of them, as when it names none)."""
    names = request.requested_output_names() if hasattr(request, "requested_output_names") else None
    return set(names) if names else None


def _main() -> int:
    """``--check``: validate ONNX files against configs (JSON on stdin, JSON lines on stdout)."""
    if sys.argv[1:] != ["--check"]:
        print("usage: python model.py --check < request.json", file=sys.stderr)
        return 2
    request = json.load(sys.stdin)
    threads = int(request.get("threads", 1))
    for item in request["items"]:
        reason = check_model(item["path"], item["config"], threads=threads)
        print(json.dumps({"path": item["path"], "ok": reason is None, "reason": reason}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
