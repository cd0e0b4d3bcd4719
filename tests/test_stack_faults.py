"""Faults of the local stack (``linkedout serve``): what is refused before anything starts, and what
the running stack survives.

The first tests need no model: the stack refuses a port in use and a work directory another stack
serves before it starts a process. The integration tests start the real stack (``linkedout serve`` as
a child process) on a toy repository and break one part at a time; the valid requests around each
fault are answered, and nothing is left running once the stack stops.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ServingRepo
from process_checks import group_pids, wait_until

from linkedout.export import Catalog
from linkedout.job.feast import publish_features
from linkedout.serving.client import RecommendClient, RecommendError
from linkedout.serving.local import LocalStack, StackError, StackSettings, read_stack
from linkedout.serving.local.control import ModelServerError
from linkedout.serving.local.process import reason_line
from linkedout.serving.local.stack import LOCK_NAME, TransformerProcess


def fake_workdir(root: Path) -> Path:
    """A work directory whose repository lists a ranker (enough for the checks made before any start)."""
    (root / "model_repository" / "linkedout_ranker").mkdir(parents=True)
    (root / "model_repository" / "linkedout_ranker" / "config.pbtxt").write_text("")
    return root


@pytest.fixture
def listener() -> Iterator[int]:
    """A port a server listens on with ``SO_REUSEPORT``, as gRPC's do by default."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("flag", ["grpc_port", "http_port"])
def test_a_port_in_use_is_refused_naming_it_before_anything_starts(tmp_path: Path, listener: int, flag: str) -> None:
    work = fake_workdir(tmp_path)
    stack = LocalStack(StackSettings(workdir=work, **{flag: listener}))  # type: ignore[arg-type]
    with pytest.raises(StackError, match=rf"port {listener} \(transformer .*\) on 127.0.0.1 is already in use"):
        stack.start()
    assert stack.server is None and stack.transformer is None
    assert not list((work / "serving").glob("*.log"))  # nothing was started
    stack.lock()  # and the work directory was released
    stack.stop()


def test_the_same_port_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="port 18765 is given twice"):
        LocalStack(StackSettings(workdir=fake_workdir(tmp_path), http_port=18765, grpc_port=18765)).start()


def test_the_transformers_grpc_server_never_shares_a_port(listener: int) -> None:
    """gRPC's SO_REUSEPORT default would let a second server share the port: the option turns it off."""
    code = """if True:
        import concurrent.futures, grpc, sys
        from linkedout.serving.kserve_server import grpc_server_options
        limits = {"grpc_max_send_message_length": 1 << 20, "grpc_max_receive_message_length": 1 << 20}
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(1), options=grpc_server_options(limits))
        try:
            print(server.add_insecure_port(sys.argv[1]))
        except RuntimeError:
            print(0)
    """
    out = subprocess.run([sys.executable, "-c", code, f"127.0.0.1:{listener}"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "0", out.stderr


def test_a_second_stack_on_the_same_workdir_is_refused_and_leaves_the_first_ones_files(tmp_path: Path) -> None:
    work = fake_workdir(tmp_path)
    first = LocalStack(StackSettings(workdir=work))
    first.lock()
    stack_json = work / "serving" / "stack.json"
    stack_json.write_text(json.dumps({"pid": os.getpid(), "transformer": {"grpc": "127.0.0.1:1"}}))
    second = LocalStack(StackSettings(workdir=work))
    with pytest.raises(StackError, match=rf"another `linkedout serve` \(pid {os.getpid()}\) already serves {work}"):
        second.start()
    second.stop()
    assert stack_json.is_file() and read_stack(work)["transformer"]["grpc"] == "127.0.0.1:1"
    first.stop()


def test_a_catalogue_of_an_older_format_is_refused_at_once_saying_what_to_do(tmp_path: Path) -> None:
    """An old work directory: the operator is told why at start, not left waiting on the transformer."""
    work = fake_workdir(tmp_path)
    version = work / "model_repository" / "linkedout_ranker" / "1"
    version.mkdir()
    (version / "catalog.json").write_text(json.dumps({"format": 1, "num_items": 3}))
    stack = LocalStack(StackSettings(workdir=work))
    with pytest.raises(StackError, match=r"linkedout has no catalogue version .* can serve: .*1/catalog.json: "
                                         r"catalogue format 1, this version reads \d+ \(export the model again\)"):
        stack.start()
    assert stack.server is None and stack.transformer is None
    stack.lock()  # the work directory was released
    stack.stop()


def test_a_repository_with_no_catalogue_version_is_refused_naming_it(tmp_path: Path) -> None:
    stack = LocalStack(StackSettings(workdir=fake_workdir(tmp_path)))
    with pytest.raises(StackError, match=r"linkedout_ranker holds no version with a catalog.json \(export one first\)"):
        stack.start()
    assert stack.server is None


def test_a_stale_stack_json_says_the_stack_is_not_running(tmp_path: Path) -> None:
    """After a SIGKILL the stack.json stays; its PID may even be alive again (reused), but nobody holds the lock."""
    work = fake_workdir(tmp_path)
    (work / "serving").mkdir()
    (work / "serving" / LOCK_NAME).write_text("1\n")
    (work / "serving" / "stack.json").write_text(json.dumps({"pid": os.getpid(), "transformer": {"grpc": "x:1"}}))
    with pytest.raises(StackError, match="the stack is not running"):
        read_stack(work)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    (work / "serving" / "stack.json").write_text(json.dumps({"pid": int(dead.stdout), "transformer": {}}))
    (work / "serving" / LOCK_NAME).unlink()
    with pytest.raises(StackError, match="the stack is not running"):
        read_stack(work)
    out = subprocess.run([sys.executable, "-m", "linkedout", "recommend", "--workdir", str(work), "--user", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "the stack is not running" in out.stderr


def test_a_start_up_error_is_one_line_with_the_reason_of_this_start_then_the_log(tmp_path: Path) -> None:
    log_path = tmp_path / "serving" / "transformer.log"
    log_path.parent.mkdir()
    log_path.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: an earlier run's failure\n")
    transformer = TransformerProcess(["--predictor_host", "127.0.0.1:1", "--model_repository", str(tmp_path / "none")],
                                     model="linkedout", host="127.0.0.1", http_port=0, grpc_port=0, log_path=log_path,
                                     startup_timeout=120)
    with pytest.raises(ModelServerError) as err:
        transformer.start()
    message = str(err.value)
    assert "\n" not in message and "earlier run" not in message
    assert message.startswith("the transformer exited with code 1 while starting: ")
    assert f"--model_repository: {tmp_path / 'none'} is not a directory (log {log_path})" in message


@pytest.mark.parametrize(("log", "reason"), [
    ("Traceback (most recent call last):\n  File \"a.py\", line 3, in f\n    raise OSError('x')\n"
     "OSError: [Errno 98] address already in use\n", "OSError: [Errno 98] address already in use"),
    ("I1203 starting\nE1203 12:00:00.1 1 main.cc:245] failed to start HTTP service: Address in use\n"
     "I1203 12:00:00.2 exiting\n", "E1203 12:00:00.1 1 main.cc:245] failed to start HTTP service: Address in use"),
    ("INFO boot\nlinkedout transformer: routing: unknown model\n", "linkedout transformer: routing: unknown model"),
])
def test_the_reason_line_of_a_log(log: str, reason: str) -> None:
    assert reason_line(log) == reason


def test_a_server_killed_by_a_signal_is_said_so_not_its_logs_last_error(tmp_path: Path) -> None:
    """Triton killed outright: its log's last error line ("DCGM unable to start", written at boot) is not why."""
    log_path = tmp_path / "triton.log"
    log_path.write_text('W1207 metrics.cc:798] "DCGM unable to start: DCGM initialization error"\n')
    child = TransformerProcess([], model="m", host="127.0.0.1", http_port=1, grpc_port=2, log_path=log_path,
                               startup_timeout=1)
    child._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child._log_offset = 0
    try:
        os.kill(child._proc.pid, signal.SIGKILL)
        child._proc.wait(timeout=10)
        assert child.failure() == f"killed by SIGKILL (log {log_path})"
    finally:
        child._proc.kill()
    child._proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    child._proc.wait(timeout=30)
    assert child.failure() == f'W1207 metrics.cc:798] "DCGM unable to start: DCGM initialization error" (log {log_path})'


# -- integration: the real stack, one fault at a time --------------------------------------------------


@dataclass
class Running:
    workdir: Path
    proc: subprocess.Popen[bytes]
    output: Path
    routing: Path
    client: RecommendClient
    history: np.ndarray  # an explicit history of one known video
    user: str  # a user with a history in Feast

    def info(self) -> dict[str, Any]:
        return read_stack(self.workdir)


def serve(workdir: Path, output: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(output, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "linkedout", "serve", "--workdir", str(workdir), *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def running(serving_repo: ServingRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("faults")
    shutil.copytree(serving_repo.root, work / "model_repository")
    publish_features(serving_repo.toy.data, work / "model_repository", work / "feast", name="linkedout")
    routing = work / "routing.yaml"
    routing.write_text("experiment: e\nsalt: s\nvariants:\n  - {name: a, model: linkedout}\n")
    output = work / "serve.out"
    proc = serve(work, output, "--routing", str(routing))
    try:
        assert wait_until(lambda: proc.poll() is not None or _up(work), timeout=300, interval=0.5), output.read_text()
        assert proc.poll() is None, output.read_text()
        client = RecommendClient(read_stack(work)["transformer"]["grpc"], timeout=5.0)
        video = int(Catalog.load(work / "model_repository" / "linkedout_ranker" / "1").ids[0])
        user = str(serving_repo.toy.split.test.user_ids[0])
        yield Running(work, proc, output, routing, client, np.array([[video]]), user)
        client.close()
    finally:
        stop(proc)


def _up(workdir: Path) -> bool:
    try:
        read_stack(workdir)
        return True
    except StackError:
        return False


def answered(r: Running, *, history: bool = False, timeout: float = 60.0) -> Any:
    """The first answer within ``timeout`` s (UNAVAILABLE meanwhile is expected, nothing else)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return r.client.recommend([r.user], k=5, history=r.history if history else None)[0]
        except RecommendError as e:
            assert e.status == "StatusCode.UNAVAILABLE", str(e)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.integration
def test_a_second_stack_on_the_same_port_or_workdir_is_refused(running: Running, tmp_path: Path) -> None:
    before = answered(running)
    grpc_port = running.info()["transformer"]["grpc"].rsplit(":", 1)[1]
    out = subprocess.run([sys.executable, "-m", "linkedout", "serve", "--workdir", str(fake_workdir(tmp_path / "w")),
                          "--grpc-port", grpc_port], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and f"port {grpc_port} (transformer gRPC, --grpc-port) on 127.0.0.1 is already in use" \
        in out.stderr and "Ctrl-C" not in out.stdout
    out = subprocess.run([sys.executable, "-m", "linkedout", "serve", "--workdir", str(running.workdir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "already serves" in out.stderr
    assert running.info()["pid"] == running.proc.pid  # stack.json still names the first stack
    for _ in range(6):  # every answer from the first stack (a shared port would answer some from the other)
        assert answered(running).items == before.items


@pytest.mark.integration
def test_a_routing_edit_that_cannot_serve_is_refused(running: Running) -> None:
    for bad in ("{name: b, model: nosuchmodel}", "{name: b, model: linkedout, version: 9}"):
        running.routing.write_text(f"experiment: e2\nsalt: s\nvariants:\n  - {bad}\n")
        time.sleep(2.5)  # the transformer looks at the file once a second
        rec = answered(running)
        assert rec.variant == "a" and rec.items
    log = (running.workdir / "serving" / "transformer.log").read_text()
    assert log.count("routing config change ignored") >= 2 and "no version 9" in log
    running.routing.write_text("experiment: e\nsalt: s\nvariants:\n  - {name: a, model: linkedout}\n")


@pytest.mark.integration
def test_a_locked_online_store_delays_nothing_that_does_not_read_it(running: Running) -> None:
    shm = next(running.workdir.joinpath("feast").rglob("online.db-shm"))  # SQLite's WAL index
    ready_url = running.info()["transformer"]["http"] + "/v2/models/linkedout/ready"
    assert not answered(running).cold_start
    with open(shm, "r+b") as f:
        # its lock bytes (write, checkpoint, recover, the 5 read marks): a reader waits ~10 s, then fails
        assert wait_until(lambda: _try_lock(f), timeout=10)
        other = RecommendClient(running.info()["transformer"]["grpc"], timeout=20.0)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reading = pool.submit(other.recommend, [running.user], 5)  # in flight: reads the locked store
            time.sleep(0.05)
            t0 = time.perf_counter()
            assert answered(running, history=True).items  # an explicit history: no store read
            with urllib.request.urlopen(ready_url, timeout=5) as resp:
                assert resp.status == 200
            assert time.perf_counter() - t0 < 1.5
            with pytest.raises(RecommendError, match="UNAVAILABLE"):
                reading.result(timeout=30)
        other.close()
        t0 = time.perf_counter()
        with pytest.raises(RecommendError, match="feature store did not answer within 200 ms") as err:
            running.client.recommend([running.user], k=5)
        assert err.value.status == "StatusCode.UNAVAILABLE" and time.perf_counter() - t0 < 1.5
        fcntl.lockf(f, fcntl.LOCK_UN, 8, 120)
    assert not answered(running, timeout=30).cold_start  # the store is back: histories again


def _try_lock(f: Any) -> bool:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 120)
        return True
    except OSError:  # a reader holds a read mark this instant
        return False


@pytest.mark.integration
def test_a_killed_model_server_is_restarted_by_the_stack(running: Running) -> None:
    before = answered(running)
    old = running.info()["model_server"]["pid"]
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: running.info()["model_server"]["pid"] != old, timeout=180, interval=0.5), \
        running.output.read_text()[-3000:]
    assert answered(running, timeout=120).items == before.items
    assert running.proc.poll() is None
    assert not group_pids(old)  # the dead server's helpers went with it
    assert "died: killed by SIGKILL" in (running.output.read_text())


@pytest.mark.integration
def test_nothing_is_left_running_once_the_stack_stops(running: Running) -> None:
    info = running.info()
    pids = [info["transformer"]["pid"], info["model_server"]["pid"]]
    stop(running.proc)
    assert running.proc.returncode == 0
    assert wait_until(lambda: not any(group_pids(p) for p in pids), timeout=30)
    assert not (running.workdir / "serving" / "stack.json").exists()
    with pytest.raises(StackError, match="no local stack runs"):
        read_stack(running.workdir)


def test_free_ports_are_distinct_and_skip_the_ports_given() -> None:
    """Two probes closed one after the other may get the same port from the OS: a transformer once got
    one port for REST and gRPC and its REST server never bound. ``free_ports`` holds its probes."""
    from linkedout.serving.local.process import free_ports

    for _ in range(200):
        got = free_ports({"http": 0, "grpc": 0, "metrics": 0, "given": 8080})
        assert got["given"] == 8080 and len({got["http"], got["grpc"], got["metrics"], 8080}) == 4


def test_a_server_that_does_not_speak_http_on_the_port_is_named_a_port_clash() -> None:
    """What a gRPC server on the REST port looks like to the readiness probe: a clear error, not BadStatusLine."""
    from linkedout.serving.local.control import ModelControl, ModelServerError

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00")  # an HTTP/2 SETTINGS frame

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(answer)
            with pytest.raises(ModelServerError, match="another server holds this port"):
                ModelControl(f"http://127.0.0.1:{port}", timeout=5).ready("linkedout")
