"""The local Triton: its environment, the Python-backend twin repository, the launcher, versions.

Unit tests (config rewriting, twin sync, ONNX checks, platform errors) run anywhere. The integration
tests start the real ``tritonserver`` of nvidia-pytriton on 127.0.0.1 in its cached environment
(``~/.cache/linkedout`` or ``$LINKEDOUT_CACHE``; created on first use, which needs the package index)
and query it with ``tritonclient.grpc``. Where the binary cannot run they are skipped with the
reason, unless ``LINKEDOUT_REQUIRE_TRITON=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import serving_toy as toy
from process_checks import group_pids, wait_until

from linkedout.export.model_config import config_to_dict, parse_config, read_config
from linkedout.serving.local import process
from linkedout.serving.local.control import ModelControl, ModelLoadError, ModelServerError, VersionRejected
from linkedout.serving.local.model_server import refresh_served_model
from linkedout.serving.local.triton import LocalTriton
from linkedout.serving.local.triton_env import (
    PlatformUnsupported,
    TritonEnvironment,
    TritonInstall,
    TritonInstallError,
    TritonUnavailable,
    check_binary,
    check_platform,
)
from linkedout.serving.local.triton_model import check_model
from linkedout.serving.local.triton_repo import LocalRepository, to_python_backend
from linkedout.serving.local.versions import served_versions, version_numbers

ROOT = Path(__file__).resolve().parents[1]
RANKER = "toy_ranker"
ENCODER = "toy_encoder"
K = 20


def publish_ranker(repo: Path, version: int, *, seed: int, k: int = K) -> Path:
    return toy.publish_version(repo / RANKER, version, lambda p: toy.export_ranker(p, k=k, seed=seed))


def publish_corrupt(repo: Path, version: int) -> Path:
    return toy.publish_version(repo / RANKER, version, lambda p: p.write_bytes(b"\x08\x07 truncated onnx"))


def make_repository(root: Path, *, queue_delay_us: int = 100) -> Path:
    """A production repository: toy_ranker version 1 and toy_encoder version 1."""
    repo = root / "model_repository"
    toy.write_model(repo, RANKER, toy.ranker_config(RANKER, k=K, queue_delay_us=queue_delay_us))
    publish_ranker(repo, 1, seed=1)
    toy.write_model(repo, ENCODER, toy.encoder_config(ENCODER))
    toy.publish_version(repo / ENCODER, 1, lambda p: toy.export_encoder(p, seed=1))
    return repo


def histories(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(1, 201, size=(batch, 10)).astype(np.int64)  # (B, T)
    h[0, :4] = 0  # left padding
    return h


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


def ort_ranker(onnx_path: Path, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, scores = ort.InferenceSession(str(onnx_path)).run(None, {"history": history})
    return rows, scores


# -- unit: configs, twin, checks, platform ------------------------------------------------------------


def test_python_backend_config_keeps_the_serving_contract() -> None:
    prod = parse_config(toy.ranker_config(RANKER, k=K, queue_delay_us=250, num_versions=3))
    local = to_python_backend(prod, threads=2)
    assert local.backend == "python" and local.platform == ""
    assert [g.kind for g in local.instance_group] == [type(local.instance_group[0]).Kind.KIND_CPU]
    assert local.max_batch_size == 64
    assert local.dynamic_batching.max_queue_delay_microseconds == 250
    assert local.version_policy.latest.num_versions == 3
    assert [(t.name, t.data_type, list(t.dims)) for t in local.input] == [(i.name, i.data_type, list(i.dims))
                                                                          for i in prod.input]
    assert [(t.name, list(t.dims)) for t in local.output] == [("rows", [K]), ("scores", [K])]
    assert local.parameters["intra_op_num_threads"].string_value == "2"
    # Triton's own parser takes it back unchanged.
    assert parse_config(str(local)) == local


def test_malformed_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nmax_batch_size: sixty-four\n')
    with pytest.raises(ValueError, match=r"config\.pbtxt: not a valid Triton model configuration"):
        read_config(path)
    with pytest.raises(ValueError, match="missing"):
        read_config(tmp_path / "absent" / "config.pbtxt")


def test_version_policy_selection() -> None:
    latest2 = parse_config("version_policy { latest { num_versions: 2 } }")
    assert served_versions(latest2, [1, 3, 7]) == [3, 7]
    assert served_versions(parse_config(""), [1, 3, 7]) == [7]  # Triton's default: latest 1
    assert served_versions(parse_config("version_policy { all { } }"), [1, 3]) == [1, 3]
    assert served_versions(parse_config("version_policy { specific { versions: [1, 4] } }"), [1, 3]) == [1]


def test_onnx_checks_name_the_problem(tmp_path: Path) -> None:
    config = config_to_dict(parse_config(toy.ranker_config(RANKER, k=K)))
    good, wrong_k, corrupt = tmp_path / "good.onnx", tmp_path / "k30.onnx", tmp_path / "bad.onnx"
    toy.export_ranker(good, k=K)
    toy.export_ranker(wrong_k, k=30)
    corrupt.write_bytes(b"not a model")
    assert check_model(str(good), config) is None
    why = check_model(str(wrong_k), config)
    assert why is not None and "output 'rows'" in why and "30" in why
    why = check_model(str(corrupt), config)
    assert why is not None and "onnxruntime cannot load" in why
    renamed = dict(config, input=[dict(config["input"][0], name="user_history")])
    why = check_model(str(good), renamed)
    assert why is not None and "input 'user_history' of config.pbtxt is not in the ONNX graph" in why
    assert "needs input 'history'" in why
    retyped = dict(config, input=[dict(config["input"][0], data_type="TYPE_INT32")])
    why = check_model(str(good), retyped)
    assert why is not None and "TYPE_INT32" in why and "TYPE_INT64" in why


def test_twin_sync_is_incremental(tmp_path: Path) -> None:
    repo = make_repository(tmp_path)
    (repo / RANKER / ".9.tmp").mkdir()  # a publish in progress is not a version
    twin = LocalRepository(repo, tmp_path / "twin", validate=False)
    first = twin.sync()
    assert first.models[RANKER].added == [1] and first.models[ENCODER].added == [1]
    local = read_config(tmp_path / "twin" / RANKER / "config.pbtxt")
    assert local.backend == "python"
    src, dst = repo / RANKER / "1" / "model.onnx", tmp_path / "twin" / RANKER / "1" / "model.onnx"
    assert os.stat(src).st_ino == os.stat(dst).st_ino  # hard link, no copy
    model_py = (tmp_path / "twin" / RANKER / "1" / "model.py").read_text()
    assert "class TritonPythonModel" in model_py
    again = twin.sync()
    assert not again.models[RANKER].changed and not again.models[ENCODER].changed
    publish_ranker(repo, 2, seed=2)
    publish_ranker(repo, 3, seed=3)
    third = twin.sync([RANKER]).models[RANKER]
    assert third.added == [2, 3] and third.removed == [1]  # latest 2
    assert version_numbers(tmp_path / "twin" / RANKER) == [2, 3]
    shutil.rmtree(repo / RANKER / "3")  # roll back
    back = twin.sync([RANKER]).models[RANKER]
    assert back.removed == [3] and back.added == [1] and back.versions == [1, 2]
    shutil.rmtree(repo / ENCODER)
    assert twin.sync().removed_models == [ENCODER]
    assert not (tmp_path / "twin" / ENCODER).exists()
    # An ensemble is copied as it is: its config, its (empty) version directories, no model.py.
    ensemble = ('name: "chain" platform: "ensemble" max_batch_size: 64 '
                'input [ { name: "history" data_type: TYPE_INT64 dims: [ 10 ] } ] '
                'output [ { name: "rows" data_type: TYPE_INT64 dims: [ 20 ] } ] '
                'ensemble_scheduling { step [ { model_name: "toy_ranker" model_version: -1 '
                'input_map { key: "history" value: "history" } output_map { key: "rows" value: "rows" } } ] }')
    toy.write_model(repo, "chain", ensemble)
    (repo / "chain" / "1").mkdir()
    assert twin.sync(["chain"]).models["chain"].added == [1]
    assert read_config(tmp_path / "twin" / "chain" / "config.pbtxt") == parse_config(ensemble)
    assert list((tmp_path / "twin" / "chain" / "1").iterdir()) == [tmp_path / "twin" / "chain" / "1" / ".source.json"]


def test_platform_errors_say_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    import linkedout.serving.local.triton_env as triton_env

    monkeypatch.setattr(triton_env.platform, "machine", lambda: "aarch64")
    with pytest.raises(PlatformUnsupported, match="Linux x86-64 only; this is linux aarch64"):
        check_platform()
    monkeypatch.setattr(triton_env.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(triton_env, "glibc_version", lambda: (2, 31))
    with pytest.raises(PlatformUnsupported, match=r"glibc >= 2\.35 \(manylinux_2_35\); this system has glibc 2\.31"):
        check_platform()
    assert issubclass(PlatformUnsupported, TritonUnavailable)


@pytest.mark.integration
@pytest.mark.slow
def test_pip_failure_is_a_clear_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No index (as offline): creation fails naming pip and the package, and removes the half-built env."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels-here"))
    env = TritonEnvironment(tmp_path / "cache")
    with pytest.raises(TritonInstallError, match=r"pip install .*numpy==1\.26\.4.* failed") as info:
        env.ensure()
    assert "PIP_FIND_LINKS" in str(info.value)
    assert not env.root.exists() and env.installed() is None


# -- integration: the real tritonserver ----------------------------------------------------------------


@pytest.fixture(scope="module")
def environment() -> TritonEnvironment:
    env = TritonEnvironment()
    try:
        env.ensure()
    except TritonUnavailable as e:
        if os.environ.get("LINKEDOUT_REQUIRE_TRITON") == "1":
            pytest.fail(f"the local Triton must run here (LINKEDOUT_REQUIRE_TRITON=1): {e}")
        pytest.skip(f"the local Triton cannot run here: {e}")
    return env


@pytest.fixture
def served(tmp_path: Path, environment: TritonEnvironment) -> Iterator[tuple[Path, LocalTriton]]:
    repo = make_repository(tmp_path)
    triton = LocalTriton(LocalRepository(repo, tmp_path / "serving" / "triton_repository", environment=environment),
                         models=[RANKER, ENCODER], log_path=tmp_path / "serving" / "triton.log")
    with triton:
        yield repo, triton


def grpc_client(triton: LocalTriton):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(triton.grpc_url)


def infer_ranker(triton: LocalTriton, history: np.ndarray, version: str = "") -> tuple[np.ndarray, np.ndarray, str]:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("history", list(history.shape), "INT64")
    tensor.set_data_from_numpy(history)
    result = grpc_client(triton).infer(RANKER, [tensor], model_version=version, client_timeout=30)
    return result.as_numpy("rows"), result.as_numpy("scores"), result.get_response().model_version


@pytest.mark.integration
def test_serves_the_onnx_files_like_onnxruntime(served: tuple[Path, LocalTriton]) -> None:
    import tritonclient.grpc as grpcclient

    repo, triton = served
    assert triton.server_version() == "2.51.0"
    for port in triton.ports.values():  # HTTP, gRPC, metrics
        bound = listening_addresses(port)
        assert bound and bound <= {"0100007F", "0000000000000000FFFF00000100007F"}, f"listens on {bound}"
    assert triton.ready_versions(RANKER) == [1] and triton.ready(RANKER, 1)
    history = histories(3)
    rows, scores, version = infer_ranker(triton, history)
    want_rows, want_scores = ort_ranker(repo / RANKER / "1" / "model.onnx", history)
    assert version == "1"
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)
    for b in range(3):
        assert not set(rows[b]) & set(history[b]) and 0 not in rows[b]  # history and padding masked
    # The encoder: id_rows [N] travels as dims [1] reshaped to [] in the ONNX graph.
    rng = np.random.default_rng(1)
    ids = np.array([0, 7, 3], dtype=np.int64)
    feats = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
    inputs = [grpcclient.InferInput("id_rows", [3, 1], "INT64"), grpcclient.InferInput("features", [3, 3, 4, 8], "FP32")]
    inputs[0].set_data_from_numpy(ids[:, None])
    inputs[1].set_data_from_numpy(feats)
    result = grpc_client(triton).infer(ENCODER, inputs, client_timeout=30)
    want = ort.InferenceSession(str(repo / ENCODER / "1" / "model.onnx")).run(None, {"id_rows": ids, "features": feats})
    for name, ref in zip(("embedding", "gate", "contributions"), want):
        np.testing.assert_allclose(result.as_numpy(name), ref, rtol=1e-5, atol=1e-6)
    # A malformed request is refused by Triton itself, naming the input.
    bad = grpcclient.InferInput("history", [1, 9], "INT64")
    bad.set_data_from_numpy(np.ones((1, 9), dtype=np.int64))
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="history"):
        grpc_client(triton).infer(RANKER, [bad], client_timeout=30)
    with pytest.raises(ModelLoadError, match="nope"):
        triton.load("nope")
    assert triton.ready(RANKER)


@pytest.mark.integration
def test_dynamic_batching_splits_answers_back_per_request(tmp_path: Path, environment: TritonEnvironment) -> None:
    """Concurrent requests are run as one batch by the generic model and each gets its own rows back."""
    import tritonclient.grpc as grpcclient

    repo = make_repository(tmp_path, queue_delay_us=200_000)
    triton = LocalTriton(LocalRepository(repo, tmp_path / "twin", environment=environment), models=[RANKER])
    with triton:
        client = grpc_client(triton)
        history = histories(8, seed=5)
        results: list[object] = [None] * 8

        def done(b: int):  # type: ignore[no-untyped-def]
            return lambda result, error: results.__setitem__(b, error or result)

        for b in range(8):
            tensor = grpcclient.InferInput("history", [1, 10], "INT64")
            tensor.set_data_from_numpy(history[b:b + 1])
            client.async_infer(RANKER, [tensor], callback=done(b))
        assert wait_until(lambda: all(r is not None for r in results), timeout=30)
        want_rows, _ = ort_ranker(repo / RANKER / "1" / "model.onnx", history)
        for b, result in enumerate(results):
            np.testing.assert_array_equal(result.as_numpy("rows")[0], want_rows[b])  # type: ignore[attr-defined]
        stats = client.get_inference_statistics(RANKER).model_stats[0]
        assert stats.inference_count == 8
        assert stats.execution_count < 8  # batched


@pytest.mark.integration
def test_new_version_serves_without_restart(served: tuple[Path, LocalTriton]) -> None:
    repo, triton = served
    pid = triton.pid
    publish_ranker(repo, 2, seed=2)
    assert triton.refresh(RANKER) == [1, 2]  # version_policy latest 2
    loads = triton.log_path.read_text().count(f"loading: {RANKER}:")
    assert triton.refresh(RANKER) == [1, 2]  # nothing changed: no reload
    assert triton.log_path.read_text().count(f"loading: {RANKER}:") == loads
    history = histories(2)
    rows, _, version = infer_ranker(triton, history)
    assert version == "2"
    np.testing.assert_array_equal(rows, ort_ranker(repo / RANKER / "2" / "model.onnx", history)[0])
    rows1, _, version1 = infer_ranker(triton, history, version="1")
    assert version1 == "1"
    np.testing.assert_array_equal(rows1, ort_ranker(repo / RANKER / "1" / "model.onnx", history)[0])
    assert not np.array_equal(rows, rows1)
    publish_ranker(repo, 3, seed=3)
    # What `linkedout catalog add` does from its own process, knowing only the stack's stack.json entry.
    assert refresh_served_model(json.loads(json.dumps(triton.describe())), RANKER) == [2, 3]
    assert not triton.ready(RANKER, 1)
    assert triton.pid == pid and triton.running()


@pytest.mark.integration
def test_bad_versions_are_refused_and_the_old_ones_keep_serving(served: tuple[Path, LocalTriton]) -> None:
    repo, triton = served
    publish_ranker(repo, 2, seed=2)
    triton.refresh(RANKER)
    bad = {
        "corrupt": (lambda: publish_corrupt(repo, 3), "onnxruntime cannot load"),
        # top-30 where config.pbtxt says 20
        "shape": (lambda: publish_ranker(repo, 3, seed=3, k=30),
                  "output 'rows': config.pbtxt says INT64 [-1, 20], the ONNX graph has [batch, 30]"),
    }
    for publish, reason in bad.values():
        shutil.rmtree(repo / RANKER / "3", ignore_errors=True)
        publish()
        with pytest.raises(VersionRejected) as info:
            triton.refresh(RANKER)
        assert reason in str(info.value) and info.value.rejected.keys() == {3}
        assert info.value.serving == [1, 2]
        assert triton.ready_versions(RANKER) == [1, 2]
        assert infer_ranker(triton, histories(1))[2] == "2"
    # A good version 4 fixes it: the latest two *valid* versions serve; 3 is skipped (and logged).
    publish_ranker(repo, 4, seed=4)
    assert triton.refresh(RANKER) == [2, 4]
    assert triton.last_sync is not None and triton.last_sync.rejected.keys() == {3}


@pytest.mark.integration
def test_triton_itself_keeps_the_old_versions_on_a_failed_reload(tmp_path: Path, environment: TritonEnvironment) -> None:
    """Verified behaviour of Triton 2.51, explicit mode: a reload whose new version fails to load
    answers 400 with the reason, and the versions that served keep serving (no unload)."""
    repo = make_repository(tmp_path)
    publish_ranker(repo, 2, seed=2)
    unchecked = LocalRepository(repo, tmp_path / "twin", environment=environment, validate=False)
    with LocalTriton(unchecked, models=[RANKER]) as triton:
        assert triton.ready_versions(RANKER) == [1, 2]
        publish_corrupt(repo, 3)
        unchecked.sync([RANKER])  # version 3 reaches Triton unchecked
        with pytest.raises(ModelLoadError, match="version 3") as info:
            triton.load(RANKER)
        assert "Protobuf parsing failed" in info.value.reason
        assert triton.ready_versions(RANKER) == [1, 2]
        index = {m["version"]: m for m in triton.control.index() if m["name"] == RANKER}
        assert index["3"]["state"] == "UNAVAILABLE" and "onnxruntime cannot load" in index["3"]["reason"]
        assert infer_ranker(triton, histories(1))[2] == "2"


@pytest.mark.integration
def test_rollback_serves_the_previous_version(served: tuple[Path, LocalTriton]) -> None:
    repo, triton = served
    for v in (2, 3):
        publish_ranker(repo, v, seed=v)
    assert triton.refresh(RANKER) == [2, 3]
    shutil.rmtree(repo / RANKER / "3")
    assert triton.refresh(RANKER) == [1, 2]
    history = histories(2)
    rows, _, version = infer_ranker(triton, history)
    assert version == "2"
    np.testing.assert_array_equal(rows, ort_ranker(repo / RANKER / "2" / "model.onnx", history)[0])


@pytest.mark.integration
def test_stop_leaves_no_process(tmp_path: Path, environment: TritonEnvironment) -> None:
    repo = make_repository(tmp_path)
    triton = LocalTriton(LocalRepository(repo, tmp_path / "twin", environment=environment), models=[RANKER])
    triton.start()
    pid = triton.pid
    assert pid is not None
    group = group_pids(pid)
    assert pid in group and len(group) >= 2  # tritonserver and its Python-backend stub
    assert triton.stop() == 0
    assert not process.pid_alive(pid) and group_pids(pid) == []
    assert not ModelControl(triton.http_url, timeout=1).live()


PARENT = """
import json, sys, time
from pathlib import Path
from linkedout.serving.local.triton import LocalTriton
from linkedout.serving.local.triton_repo import LocalRepository
triton = LocalTriton(LocalRepository(Path(sys.argv[1]), Path(sys.argv[2])), models=["toy_ranker"]).start()
print(json.dumps({"pid": triton.pid}), flush=True)
time.sleep(600)
"""


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_triton_dies_with_its_parent(tmp_path: Path, environment: TritonEnvironment, sig: signal.Signals) -> None:
    repo = make_repository(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), LINKEDOUT_PROGRESS="0")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(repo), str(tmp_path / "twin")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, "the parent did not start Triton"
        pid = json.loads(line)["pid"]
        group = group_pids(pid)
        assert pid in group
        parent.send_signal(sig)
        parent.wait(timeout=10)
        assert wait_until(lambda: not any(process.pid_alive(p) for p in group), timeout=20), \
            f"left behind: {[p for p in group if process.pid_alive(p)]}"
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.integration
def test_early_exit_raises_with_the_log(tmp_path: Path, environment: TritonEnvironment) -> None:
    repo = make_repository(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        triton = LocalTriton(LocalRepository(repo, tmp_path / "twin", environment=environment), http_port=port)
        started = time.monotonic()
        with pytest.raises(ModelServerError, match="exited with code") as info:
            triton.start()
        assert time.monotonic() - started < 60
    assert "HTTP" in str(info.value) or "address" in str(info.value).lower()
    assert not triton.running()


@pytest.mark.integration
def test_a_missing_library_is_named(environment: TritonEnvironment) -> None:
    install = environment.ensure()
    stripped = TritonInstall(**{**install.__dict__, "library_path": ()})
    with pytest.raises(PlatformUnsupported, match=r"tritonserver cannot run here: missing shared libraries .*libtritonserver"):
        check_binary(stripped)


@pytest.mark.integration
@pytest.mark.slow
def test_racing_processes_create_the_environment_once(tmp_path: Path) -> None:
    """Two processes ensure() a fresh cache at once: one builds (with progress), the other waits, both use it."""
    code = ("import json, sys; from pathlib import Path; from linkedout.utils import configure_logging;"
            "from linkedout.serving.local.triton_env import TritonEnvironment; configure_logging();"
            "print(json.dumps(str(TritonEnvironment(Path(sys.argv[1])).ensure().root)))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache")], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=1200) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    roots = {json.loads(out.strip().splitlines()[-1]) for out, _ in outs}
    assert len(roots) == 1
    errs = [err for _, err in outs]
    assert sum("creating the local Triton environment" in e for e in errs) == 1
    assert sum("waiting for another process" in e for e in errs) == 1
    assert any("Triton environment: 100%" in e for e in errs)  # the progress bar of the creation
    install = TritonEnvironment(tmp_path / "cache").installed()
    assert install is not None and str(install.root) in roots
    check_binary(install)
