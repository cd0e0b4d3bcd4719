"""The KServe fallback predictor, serving the production repository, queried with ``tritonclient``.

The predictor runs as a subprocess (``python -m linkedout.serving.local.predictor``): this process imports
``tritonclient.grpc`` and must never import kserve (kserve#3099).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import serving_toy as toy
from process_checks import group_pids, wait_until

from linkedout.serving.local import process
from linkedout.serving.local.control import ModelLoadError
from linkedout.serving.local.model_server import LocalPredictor, refresh_served_model, start_model_server
from linkedout.serving.local.triton_env import PlatformUnsupported, TritonEnvironment, TritonInstall

ROOT = Path(__file__).resolve().parents[1]
RANKER = "toy_ranker"
ENCODER = "toy_encoder"


def make_repository(root: Path) -> Path:
    repo = root / "model_repository"
    toy.write_model(repo, RANKER, toy.ranker_config(RANKER, k=20))
    toy.publish_version(repo / RANKER, 1, lambda p: toy.export_ranker(p, k=20, seed=1))
    toy.write_model(repo, ENCODER, toy.encoder_config(ENCODER))
    toy.publish_version(repo / ENCODER, 1, lambda p: toy.export_encoder(p, seed=1))
    return repo


def publish_ranker(repo: Path, version: int, *, seed: int) -> None:
    toy.publish_version(repo / RANKER, version, lambda p: toy.export_ranker(p, k=20, seed=seed))


def histories(batch: int) -> np.ndarray:
    h = np.random.default_rng(0).integers(1, 201, size=(batch, 10)).astype(np.int64)  # (B, T)
    h[0, :3] = 0
    return h


def ort_rows(path: Path, history: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(["rows"], {"history": history})[0]


def infer(url: str, history: np.ndarray, version: str = "") -> tuple[np.ndarray, str]:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("history", list(history.shape), "INT64")
    tensor.set_data_from_numpy(history)
    result = grpcclient.InferenceServerClient(url).infer(RANKER, [tensor], model_version=version, client_timeout=30)
    return result.as_numpy("rows"), result.get_response().model_version


def test_import_hygiene() -> None:
    """The launcher side never imports kserve; the predictor never imports tritonclient.grpc; the
    transformer (production) imports neither tritonclient nor the local stand-ins."""
    launcher = ("import sys, linkedout.serving.local, linkedout.serving.local.triton_repo;"
                "assert 'kserve' not in sys.modules, 'kserve imported'")
    predictor = ("import sys, linkedout.serving.local.predictor;"
                 "assert 'tritonclient.grpc' not in sys.modules, 'tritonclient.grpc imported'")
    transformer = ("import sys, linkedout.serving.transformer;"
                   "bad = [m for m in sys.modules if m.startswith(('tritonclient', 'linkedout.serving.local'))];"
                   "assert not bad, bad")
    for code in (launcher, predictor, transformer):
        out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].rsplit(":", 1)
                if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
                    found.add(address)
    return found


@pytest.fixture
def predictor(tmp_path: Path) -> Iterator[tuple[Path, LocalPredictor]]:
    repo = make_repository(tmp_path)
    with LocalPredictor(repo, models=[RANKER, ENCODER], poll_interval=0.5, threads=1) as server:
        yield repo, server


@pytest.mark.integration
def test_serves_the_repository_like_onnxruntime(predictor: tuple[Path, LocalPredictor]) -> None:
    import tritonclient.grpc as grpcclient

    repo, server = predictor
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::ffff:127.0.0.1
    for port in server.ports.values():
        bound = listening_addresses(port)
        assert bound and bound <= loopback, f"must listen on 127.0.0.1 only, listens on {bound}"
    history = histories(3)
    rows, version = infer(server.grpc_url, history)
    assert version == "1"
    np.testing.assert_array_equal(rows, ort_rows(repo / RANKER / "1" / "model.onnx", history))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_model_ready(RANKER) and client.is_model_ready(RANKER, "1")
    assert not client.is_model_ready(RANKER, "2")
    metadata = client.get_model_metadata(RANKER)
    assert list(metadata.versions) == ["1"] and [i.name for i in metadata.inputs] == ["history"]
    # The encoder, with id_rows [N] sent as [N, 1] (config dims [1] reshaped to []).
    ids = np.array([0, 4], dtype=np.int64)
    feats = np.random.default_rng(3).standard_normal((2, 3, 4, 8)).astype(np.float32)
    inputs = [grpcclient.InferInput("id_rows", [2, 1], "INT64"), grpcclient.InferInput("features", [2, 3, 4, 8], "FP32")]
    inputs[0].set_data_from_numpy(ids[:, None])
    inputs[1].set_data_from_numpy(feats)
    result = client.infer(ENCODER, inputs, client_timeout=30)
    want = ort.InferenceSession(str(repo / ENCODER / "1" / "model.onnx")).run(None, {"id_rows": ids, "features": feats})
    np.testing.assert_allclose(result.as_numpy("embedding"), want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("gate"), want[1], rtol=1e-5, atol=1e-6)
    # REST (JSON), unversioned and versioned.
    body = json.dumps({"inputs": [{"name": "history", "shape": [3, 10], "datatype": "INT64",
                                   "data": history.ravel().tolist()}]}).encode()
    for path in (f"/v2/models/{RANKER}/infer", f"/v2/models/{RANKER}/versions/1/infer"):
        request = urllib.request.Request(server.http_url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert answer["model_version"] == "1"
        out = {o["name"]: o for o in answer["outputs"]}
        np.testing.assert_array_equal(np.array(out["rows"]["data"]).reshape(3, 20), rows)


@pytest.mark.integration
def test_malformed_requests_are_invalid_argument_naming_the_input(predictor: tuple[Path, LocalPredictor]) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    _, server = predictor
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def call(name: str, shape: list[int], dtype: str, data: np.ndarray, version: str = "") -> str:
        tensor = grpcclient.InferInput(name, shape, dtype)
        tensor.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException) as info:
            client.infer(RANKER, [tensor], model_version=version, client_timeout=30)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        return str(info.value.message())

    assert "expected shape [-1, 10], got [1, 9]" in call("history", [1, 9], "INT64", np.ones((1, 9), np.int64))
    assert "expected INT64, got INT32" in call("history", [1, 10], "INT32", np.ones((1, 10), np.int32))
    assert "unexpected input 'hist'" in call("hist", [1, 10], "INT64", np.ones((1, 10), np.int64))
    assert "batch 65 is outside 1..64" in call("history", [65, 10], "INT64", np.ones((65, 10), np.int64))
    assert "version '7'" in call("history", [1, 10], "INT64", np.ones((1, 10), np.int64), version="7")
    assert infer(server.grpc_url, histories(1))[1] == "1"  # and it still serves


@pytest.mark.integration
def test_versions_live_refused_and_rolled_back(predictor: tuple[Path, LocalPredictor]) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    repo, server = predictor
    pid = server.pid
    # A new version is picked up by the repository watch, with no call at all ...
    publish_ranker(repo, 2, seed=2)
    assert wait_until(lambda: server.ready_versions(RANKER) == [1, 2], timeout=30)
    history = histories(2)
    rows, version = infer(server.grpc_url, history)
    assert version == "2"
    np.testing.assert_array_equal(rows, ort_rows(repo / RANKER / "2" / "model.onnx", history))
    assert infer(server.grpc_url, history, version="1")[1] == "1"
    # ... and at once on a repository-API load.
    publish_ranker(repo, 3, seed=3)
    assert refresh_served_model(server.describe(), RANKER) == [2, 3]  # as from another process
    # A corrupt version 4: the load says why, versions 2 and 3 keep serving.
    toy.publish_version(repo / RANKER, 4, lambda p: p.write_bytes(b"\x08\x07 truncated onnx"))
    with pytest.raises(ModelLoadError, match=r"version 4: onnxruntime cannot load .*serving versions \[2, 3\]"):
        server.refresh(RANKER)
    assert server.ready_versions(RANKER) == [2, 3]
    assert infer(server.grpc_url, history)[1] == "3"
    index = {m["version"]: m for m in server.control.index() if m["name"] == RANKER}
    assert index["4"]["state"] == "UNAVAILABLE" and "onnxruntime cannot load" in index["4"]["reason"]
    with pytest.raises(InferenceServerException, match="version 4"):  # tritonclient's own load call
        grpcclient.InferenceServerClient(server.grpc_url).load_model(RANKER)
    # Roll back: drop versions 4 and 3; 1 and 2 serve again.
    shutil.rmtree(repo / RANKER / "4")
    shutil.rmtree(repo / RANKER / "3")
    assert server.refresh(RANKER) == [1, 2]
    assert infer(server.grpc_url, history)[1] == "2"
    assert server.pid == pid


@pytest.mark.integration
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    server = LocalPredictor(make_repository(tmp_path), models=[RANKER]).start()
    pid = server.pid
    assert pid is not None and process.pid_alive(pid)
    started = time.monotonic()
    assert server.stop() == 0  # a clean exit on SIGTERM, not the SIGKILL fallback
    assert time.monotonic() - started < server.stop_timeout
    assert not process.pid_alive(pid) and group_pids(pid) == []


class NoTriton(TritonEnvironment):
    """An environment that reports the binary cannot run (as on a non-Linux or old-glibc host)."""

    def ensure(self) -> TritonInstall:
        raise PlatformUnsupported("the tritonserver binary of nvidia-pytriton==0.7.0 is built for Linux x86-64 "
                                  "only; this is darwin arm64")


@pytest.mark.integration
def test_falls_back_to_the_predictor_where_triton_cannot_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = make_repository(tmp_path)
    server = start_model_server(repo, tmp_path / "serving", models=[RANKER], environment=NoTriton(tmp_path))
    try:
        assert isinstance(server, LocalPredictor)
        assert "cannot run here" in caplog.text and "darwin arm64" in caplog.text
        history = histories(2)
        rows, version = infer(server.grpc_url, history)
        assert version == "1"
        np.testing.assert_array_equal(rows, ort_rows(repo / RANKER / "1" / "model.onnx", history))
        assert server.describe()["kind"] == "kserve-predictor"
    finally:
        server.stop()
