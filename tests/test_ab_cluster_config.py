"""``linkedout ab status|promote|rollback`` without a usable cluster: one line saying what is missing.

Issue 17, defect 11: with no kubeconfig the commands printed the Kubernetes client's 38-line
``ConfigException`` traceback. Nothing here reaches a network: the kubeconfig is missing, empty,
malformed or names an unknown context, and the one API server is a silent socket on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkedout.ab import deploy, rollout
from linkedout.cli import main

ROOT = Path(__file__).resolve().parents[1]

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: here
  cluster: {server: "http://127.0.0.1:9"}
contexts:
- name: here
  context: {cluster: here, user: me}
current-context: here
users:
- name: me
  user: {token: abc}
"""


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment naming no cluster: KUBECONFIG is a missing file, HOME an empty directory, not in a pod."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env |= {"KUBECONFIG": str(tmp_path / "missing" / "config"), "HOME": str(home),
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for k in [k for k in os.environ if k.startswith("KUBERNETES_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("KUBECONFIG", env["KUBECONFIG"])
    monkeypatch.setenv("HOME", env["HOME"])
    return env


@pytest.mark.parametrize("command", [["promote"], ["rollback"], ["rollback", "--dry-run"]])
def test_no_kubeconfig_is_one_line(no_cluster: dict[str, str], command: list[str]) -> None:
    run = subprocess.run([sys.executable, "-m", "linkedout", "ab", *command], capture_output=True, text=True,
                         env=no_cluster, cwd=ROOT, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("linkedout ab: error: no Kubernetes cluster is configured: "), lines[0]
    assert f"the kubeconfig {no_cluster['KUBECONFIG']} (KUBECONFIG) does not exist" in lines[0]
    assert "not running inside a cluster" in lines[0]
    assert "--kubeconfig FILE" in lines[0] and "--server URL" in lines[0]
    assert run.stdout == ""


@pytest.mark.parametrize(("text", "extra", "why"), [
    (None, [], r"the kubeconfig \S+ does not exist"),
    ("", [], r"the kubeconfig \S+ cannot be used: .*empty"),
    ("not: [valid", [], r"the kubeconfig \S+ cannot be used: while parsing"),
    (KUBECONFIG, ["--context", "elsewhere"], r"cannot be used with the context elsewhere: .*elsewhere"),
])
def test_an_unusable_kubeconfig_is_one_line(no_cluster: dict[str, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], text: str | None,
                                            extra: list[str], why: str) -> None:
    config = tmp_path / "kubeconfig"
    if text is not None:
        config.write_text(text)
    assert main(["ab", "status", "--kubeconfig", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("linkedout ab: error: no Kubernetes cluster is configured: "), err
    assert re.search(why, err), err
    with pytest.raises(deploy.ClusterConfigError, match=why):
        deploy.custom_objects_api(str(config), *extra[1:])


def test_a_server_url_without_scheme_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ab", "status", "--server", "127.0.0.1:8001"]) == 2
    err = capsys.readouterr().err
    assert err == "linkedout ab: error: the Kubernetes API server URL must be http(s)://host[:port], got '127.0.0.1:8001'\n"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_a_silent_api_server_is_an_error_within_the_timeout(silent_server: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The client ignored the float timeout: a silent API server blocked ``ab status`` for ever."""
    monkeypatch.setattr(rollout, "API_TIMEOUT", (1, 1), raising=False)
    api = deploy.custom_objects_api(host=silent_server)
    api.api_client.configuration.retries = 0
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            rollout.status(api, "linkedout", "linkedout")
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "ab status still waiting for a silent API server after 30 s"
    assert len(outcome) == 1 and isinstance(outcome[0], rollout.RolloutError), outcome
    assert str(outcome[0]).startswith(f"cannot reach the Kubernetes API at {silent_server}: ReadTimeoutError")
