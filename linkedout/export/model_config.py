"""``config.pbtxt`` read, parsed and formatted through Triton's own ``ModelConfig`` protobuf message.

The one format of every ``config.pbtxt`` LinkedOut writes: the exporter's (``repository.config_pbtxt``
builds the message) and the local Triton's Python-backend twin (``linkedout.serving.local``) both
go through :func:`format_config`.

The message class comes from ``tritonclient/grpc/model_config_pb2.py``, loaded by file path so that
the ``tritonclient.grpc`` package (its gRPC service protos clash with kserve's: kserve#3099) is
never imported: this module is safe in a process that imports kserve too (the KServe fallback
predictor). The class is the very one ``tritonclient.grpc.model_config_pb2`` defines (same
descriptor pool). Protobuf only: no torch, no server.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format, text_format

__all__ = ["CONFIG_NAME", "ModelConfigError", "config_to_dict", "format_config", "model_config_pb2", "new_config",
           "parse_config", "read_config"]

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
    """``config`` as ``config.pbtxt`` text: protobuf text format, short lists (``dims: [6, 64]``)."""
    return str(text_format.MessageToString(config, use_short_repeated_primitives=True))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form Triton hands a Python-backend model (``args["model_config"]``), field names kept."""
    return dict(json_format.MessageToDict(config, preserving_proto_field_name=True))
