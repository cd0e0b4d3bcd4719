"""Faults of the local stack (``linkedout serve``): what is refused before anything starts, and what
the running stack survives.

The first tests need no model: the stack refuses a port in use and a work directory another stack
serves before it starts a process. The integration tests start the real stack (``linkedout serve`` as
a child process) on a toy repository and break one part at a time; the valid requests around each
fault are answered, and nothing is left running once the stack stops.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
