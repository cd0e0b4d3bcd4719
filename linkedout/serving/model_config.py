"""``config.pbtxt`` read and written with Triton's own ``ModelConfig`` protobuf message.

The message class comes from ``tritonclient/grpc/model_config_pb2.py``, loaded by file path so that
the ``tritonclient.grpc`` package (its gRPC service protos clash with kserve's: kserve#3099) is
never imported: this module is safe in the KServe fallback predictor's process too. The class is
the very one ``tritonclient.grpc.model_config_pb2`` defines (same descriptor pool).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format, text_format

from linkedout.utils import atomic_write_text

CONFIG_NAME = "config.pbtxt"


class ModelConfigError(ValueError):
    """A ``config.pbtxt`` that cannot be read or does not describe a servable model."""


@functools.cache
def model_config_pb2() -> ModuleType:
    """Triton's ``model_config_pb2`` module (from the installed tritonclient), without its package."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("tritonclient is not installed (it ships Triton's ModelConfig protobuf)")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    file_spec = importlib.util.spec_from_file_location("linkedout_triton_model_config_pb2", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def new_config() -> Any:
    """An empty ``inference.ModelConfig`` message."""
    return model_config_pb2().ModelConfig()


def parse_config(text: str, *, source: str = CONFIG_NAME) -> Any:
    """``ModelConfig`` from protobuf text; :class:`ModelConfigError` naming ``source`` when malformed."""
    try:
        return text_format.Parse(text, new_config())
    except text_format.ParseError as e:
        raise ModelConfigError(f"{source}: not a valid Triton model configuration: {e}") from e


def read_config(path: Path) -> Any:
    """Parse ``path`` (a ``config.pbtxt``)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError as e:
        raise ModelConfigError(f"{path}: missing (every model directory needs a {CONFIG_NAME})") from e
    return parse_config(text, source=str(path))


def format_config(config: Any) -> str:
    return str(text_format.MessageToString(config))


def write_config(path: Path, config: Any) -> None:
    """Write ``config`` as protobuf text, atomically."""
    atomic_write_text(path, format_config(config))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form Triton hands a Python-backend model (``args["model_config"]``), field names kept."""
    return dict(json_format.MessageToDict(config, preserving_proto_field_name=True))


def data_type_name(value: int) -> str:
    """``TYPE_INT64`` for the enum value."""
    return str(model_config_pb2().DataType.Name(value))


def version_numbers(model_dir: Path) -> list[int]:
    """The version directories of a model (positive integer names), ascending.

    Anything else (``.tmp`` directories of a publish in progress, files) is not a version.
    """
    out: list[int] = []
    if not model_dir.is_dir():
        return out
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and not entry.name.startswith("0"):
            out.append(int(entry.name))
    return sorted(out)


def served_versions(config: Any, available: list[int]) -> list[int]:
    """The versions Triton's ``version_policy`` selects among ``available`` (default: the latest one)."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(available)
    if which == "specific":
        wanted = {int(v) for v in policy.specific.versions}
        return sorted(v for v in available if v in wanted)
    n = int(policy.latest.num_versions) if which == "latest" else 1
    return sorted(available)[-max(n, 1):] if available else []


def to_python_backend(config: Any, *, threads: int = 0, instances: int = 1) -> Any:
    """The local twin of a production config: the same tensors, batching and version policy, run by
    the Python backend on CPU (:mod:`linkedout.serving.triton_model` as each version's ``model.py``).

    ONNX-Runtime-specific settings (``platform``, ``default_model_filename``, execution
    accelerators, backend parameters) are dropped; ``threads`` (onnxruntime intra-op threads, 0 =
    its default) is passed as the parameter ``intra_op_num_threads``. Ensembles are kept as they are.
    """
    local = new_config()
    local.CopyFrom(config)
    if config.platform == "ensemble" or config.backend == "ensemble":
        return local
    local.backend = "python"
    local.platform = ""
    local.ClearField("default_model_filename")
    local.ClearField("cc_model_filenames")
    local.ClearField("optimization")
    local.ClearField("parameters")
    del local.instance_group[:]
    group = local.instance_group.add()
    group.kind = model_config_pb2().ModelInstanceGroup.Kind.KIND_CPU
    group.count = max(1, instances)
    local.parameters["intra_op_num_threads"].string_value = str(max(0, threads))
    return local


def policy_candidates(config: Any, available: list[int]) -> tuple[list[int], int]:
    """Versions in the order the version policy prefers them, and how many of them to serve.

    ``latest { num_versions: n }`` (and no policy: latest 1) walks every version newest first and
    serves the first ``n`` that are valid, so a bad newest version leaves the previous ones serving;
    ``all`` and ``specific`` serve every valid version they select.
    """
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which in (None, "latest"):
        limit = max(1, int(policy.latest.num_versions)) if which == "latest" else 1
        return sorted(available, reverse=True), limit
    chosen = sorted(served_versions(config, available), reverse=True)
    return chosen, len(chosen)


def fingerprint(version_dir: Path) -> dict[str, list[int]]:
    """``{file name: [size, mtime_ns]}`` of a version's files: what makes it this version's content."""
    out = {}
    for entry in sorted(version_dir.iterdir()):
        if entry.is_file() and entry.name != "model.py" and not entry.name.startswith("."):
            st = entry.stat()
            out[entry.name] = [st.st_size, st.st_mtime_ns]
    return out
