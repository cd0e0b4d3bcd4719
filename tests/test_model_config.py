"""``config.pbtxt`` through Triton's ``ModelConfig`` protobuf: one writer, configurations compared as messages.

The exporter's configs (``linkedout.export.repository.config_pbtxt``) are built as the message and
written in ``linkedout.export.model_config``'s one format; a repository written in another layout of
the same configuration (an older LinkedOut wrote bracketed lists) still takes new versions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import serving_toy as toy

from linkedout.export.graphs import GraphSpec, TensorSpec
from linkedout.export.model_config import ModelConfigError, format_config, parse_config, read_config
from linkedout.export.repository import ModelRepository, RepositoryError, TritonConfig, config_pbtxt

SPEC = GraphSpec((TensorSpec("history", "INT64", (-1, 10)),),
                 (TensorSpec("rows", "INT64", (-1, 20)), TensorSpec("scores", "FP32", (-1, 20))))

OTHER_LAYOUT = """name: "toy_ranker"
backend: "onnxruntime"
max_batch_size: 64
input [
  {
    name: "history"
    data_type: TYPE_INT64
    dims: [ 10 ]
  }
]
output [
  {
    name: "rows"
    data_type: TYPE_INT64
    dims: [ 20 ]
  },
  {
    name: "scores"
    data_type: TYPE_FP32
    dims: [ 20 ]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_GPU
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 100
}
version_policy {
  latest {
    num_versions: 2
  }
}
"""


def test_the_writer_builds_the_message_and_writes_its_one_format() -> None:
    text = config_pbtxt("toy_ranker", SPEC)
    assert text == format_config(parse_config(text))  # the one format: a round trip changes nothing
    assert parse_config(text) == parse_config(OTHER_LAYOUT)
    scalar = GraphSpec((TensorSpec("id_rows", "INT64", (-1,)),), (TensorSpec("embedding", "FP32", (-1, 4)),))
    encoder = parse_config(config_pbtxt("toy_encoder", scalar, TritonConfig(max_queue_delay_us=0)))
    assert list(encoder.input[0].dims) == [1] and encoder.input[0].HasField("reshape")  # [1] -> a scalar
    assert encoder.HasField("dynamic_batching")
    with pytest.raises(ValueError, match="not a Triton data type"):
        config_pbtxt("x", GraphSpec((TensorSpec("a", "FLOAT", (-1, 2)),), ()))
    with pytest.raises(ValueError, match="batch axis"):
        config_pbtxt("x", GraphSpec((TensorSpec("a", "FP32", (2,)),), ()))


def test_malformed_or_missing_configs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="not a valid Triton model configuration"):
        parse_config("max_batch_size: sixty-four", source="x/config.pbtxt")
    with pytest.raises(ModelConfigError, match="missing"):
        read_config(tmp_path / "config.pbtxt")


def test_a_repository_in_another_layout_of_the_same_config_takes_new_versions(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "repo")
    model_dir = repo.model_dir("toy_ranker")
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(OTHER_LAYOUT)
    version = repo.publish("toy_ranker", config_pbtxt("toy_ranker", SPEC), SPEC,
                           lambda d, v: toy.export_ranker(d / "model.onnx", k=20))
    assert version == 2 and repo.versions("toy_ranker") == [1, 2]
    assert repo.config_text("toy_ranker") == OTHER_LAYOUT  # the same configuration: the file is left alone
    with pytest.raises(RepositoryError, match="exists with another configuration"):
        repo.publish("toy_ranker", config_pbtxt("toy_ranker", SPEC, TritonConfig(max_batch_size=8)), SPEC,
                     lambda d, v: toy.export_ranker(d / "model.onnx", k=20))
