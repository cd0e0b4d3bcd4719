"""The compiled Kubeflow pipelines: the YAML in git is what the code compiles to, and it carries the
cluster settings (GPU requests, the H100 pool's node selector and tolerations, retries, caching, images)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopback import serve

from pipelines import PIPELINES
from pipelines.compile import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("compiled")
    return {name: compile_pipeline(name, out / f"{name}.yaml") for name in PIPELINES}


def _tasks(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every task of every DAG (the root and the loop and condition components): ``(task name, task)``."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        yield from dag["tasks"].items()


def _executor(spec: dict[str, Any], task: dict[str, Any]) -> str:
    return spec["components"][task["componentRef"]["name"]].get("executorLabel", "")


@pytest.mark.parametrize("name", PIPELINES)
def test_the_yaml_in_git_is_what_the_code_compiles_to(name: str, compiled: dict[str, Path]) -> None:
    committed = ROOT / "pipelines" / f"{name}.yaml"
    fresh = compiled[name]
    assert _load(fresh) == _load(committed), (
        f"pipelines/{name}.yaml is stale: run `python -m pipelines.{name}` and commit the result")
    # byte for byte too (the header's parameter defaults are written in a stable order)
    assert fresh.read_text() == committed.read_text()


def test_gpu_steps_ask_for_the_h100_pool_and_cpu_steps_do_not() -> None:
    for name, gpu_executors in [("extract", {"exec-extract-shards"}), ("linkedout", {"exec-extract-shards", "exec-train"}),
                                ("train_and_deploy", {"exec-train"})]:
        spec, platform = _load(ROOT / "pipelines" / f"{name}.yaml")
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert params["gpu_node_selector"]["defaultValue"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert params["gpu_tolerations"]["defaultValue"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert params["accelerator"]["defaultValue"] == "nvidia.com/gpu"
        for label, executor in spec["deploymentSpec"]["executors"].items():
            container = executor["container"]
            accel = container.get("resources", {}).get("accelerator")
            if label in gpu_executors:
                count = "extract_gpus" if label == "exec-extract-shards" else "train_gpus"
                assert accel["resourceType"] == "{{$.inputs.parameters['pipelinechannel--accelerator']}}"
                assert accel["resourceCount"] == f"{{{{$.inputs.parameters['pipelinechannel--{count}']}}}}"
                assert container["image"].endswith("-gpu")
                node = k8s[label]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
                tol = k8s[label]["tolerations"][0]["tolerationJson"]["componentInputParameter"]
                assert node.endswith("gpu_node_selector") and tol.endswith("gpu_tolerations")
            else:
                assert accel is None, f"{name}: {label} is a CPU step and asks for a GPU"
                assert container["image"].endswith("-cpu")
                assert "nodeSelector" not in k8s[label] and "tolerations" not in k8s[label]
            assert k8s[label]["pvcMount"][0]["mountPath"] == "/work"  # the work volume
            # the image has the package and kfp: no task installs anything when it starts
            assert "pip install" not in " ".join(container["command"]), label
        if "exec-train" in gpu_executors:  # NCCL's shared memory
            assert k8s["exec-train"]["emptyDirMounts"][0] == {
                "medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "64Gi", "volumeName": "dshm"}


def test_shards_training_and_deploy_are_retried_and_nothing_is_cached() -> None:
    """Not the export: a configuration error there (no S3 credentials) is not transient (it was retried for 35 s)."""
    for name in PIPELINES:
        spec, _ = _load(ROOT / "pipelines" / f"{name}.yaml")
        retries = {}
        for task_name, task in _tasks(spec):
            if "componentRef" not in task or not _executor(spec, task):
                continue
            # KFP's cache is off for every task: an empty cachingOptions is enableCache false
            assert task.get("cachingOptions") == {}, f"{name}: {task_name} has caching {task.get('cachingOptions')}"
            if "retryPolicy" in task:
                retries[task_name] = task["retryPolicy"]["maxRetryCount"]
        want = {"extract": {"extract-shards": 3},
                "train_and_deploy": {"train": 2, "deploy": 2},
                "linkedout": {"extract-shards": 3, "train": 2, "deploy": 2}}[name]
        assert retries == want, name


def test_the_extract_fan_out_and_the_deploy_conditions() -> None:
    spec, _ = _load(ROOT / "pipelines" / "linkedout.yaml")
    root = spec["root"]["dag"]["tasks"]
    for_loops = [t for t in root.values() if "parameterIterator" in t]
    assert {t["parameterIterator"]["items"]["inputParameter"] for t in for_loops} == {
        "pipelinechannel--plan-shards-Output", "pipelinechannel--plan-training-Output"}
    # the fan-in: collect-index takes every shard group's result (dsl.Collected)
    collect = root["collect-index"]["inputs"]["parameters"]["results"]["taskOutputParameter"]
    assert collect["producerTask"].startswith("for-loop")
    conditions = [t["triggerPolicy"]["condition"] for _, t in _tasks(spec) if "triggerPolicy" in t]
    assert "inputs.parameter_values['pipelinechannel--deploy_to'] != 'none'" in conditions
    assert "inputs.parameter_values['pipelinechannel--compare-with-serving-Output'] == true" in conditions
    assert any("'kserve'" in c for c in conditions) and any("'local'" in c for c in conditions)


def test_the_defaults_are_the_main_jobs() -> None:
    from linkedout.job.variants import DEFAULT_VARIANTS

    spec, _ = _load(ROOT / "pipelines" / "linkedout.yaml")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["variants"]["defaultValue"] == list(DEFAULT_VARIANTS)
    assert params["model_variant"]["defaultValue"] == DEFAULT_VARIANTS[0] == "warmcold"
    spec, _ = _load(ROOT / "pipelines" / "train_and_deploy.yaml")
    assert spec["root"]["inputDefinitions"]["parameters"]["variant"]["defaultValue"] == DEFAULT_VARIANTS[0]


@pytest.mark.parametrize("name", PIPELINES)
def test_every_parameter_is_declared_once_in_a_library_config(name: str) -> None:
    """The configs travel whole: ``extraction`` / ``backbone`` / ``training`` default to every field of
    ``ExtractionConfig`` / ``BackboneConfig`` / the main job's ``TrainConfig``, and the deploy parameters
    default to ``DeployConfig``'s; no pipeline names a config field on its own."""
    import dataclasses

    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.job.params import DeployConfig, config_from_dict
    from linkedout.job.variants import main_train_config
    from linkedout.training import TrainConfig

    spec, _ = _load(ROOT / "pipelines" / f"{name}.yaml")
    params = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    configs = {"extraction": ExtractionConfig, "backbone": BackboneConfig, "training": TrainConfig}
    expected = {"extraction": ExtractionConfig(shard_size=64),  # the main job's shards (ExtractionConfig: 256)
                "backbone": BackboneConfig(), "training": main_train_config()}
    for key, cls in configs.items():
        if key in params:
            assert set(params[key]) == {f.name for f in dataclasses.fields(cls) if f.default is not None}
            assert config_from_dict(cls, params[key], key) == expected[key]
    for field in dataclasses.fields(DeployConfig):
        if field.name in params:
            assert params[field.name] == field.default, field.name
    every_field = {f.name for cls in configs.values() for f in dataclasses.fields(cls)}
    assert not every_field & set(params) - {"seed"}, "a config field is a pipeline parameter of its own"


def test_the_images_come_from_one_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.images import images

    monkeypatch.setenv("LINKEDOUT_IMAGE", "registry.example.com/ml/linkedout:1.2.3")
    path = compile_pipeline("linkedout", tmp_path / "x.yaml")
    spec, _ = _load(path)
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert used == {"registry.example.com/ml/linkedout:1.2.3-cpu", "registry.example.com/ml/linkedout:1.2.3-gpu"}
    spec, _ = _load(compile_pipeline("extract", tmp_path / "y.yaml", image="r.io/a/b:9"))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {"r.io/a/b:9-cpu",
                                                                                              "r.io/a/b:9-gpu"}
    for bad in ("r.io/a/b", "r.io/a/b:latest", "r.io/a/b:1.0-gpu"):
        with pytest.raises(ValueError, match="image"):
            images(bad)


# ------------------------------------------------------------------------- submitting to a KFP API server


class _StandIn:
    """A loopback stand-in of the KFP v2beta1 REST API (``http.server`` on 127.0.0.1) that records what
    it is sent and answers the few calls ``kfp.Client`` makes to create a run: the healthz, the
    experiment lookup (none yet) and creation, the run creation and its read-back. It checks what the
    client sends, not what a cluster does with it."""

    def __init__(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        from loopback import JsonHandler

        self.requests: list[dict[str, Any]] = []
        self.url = ""  # set while served (the kfp_api fixture)
        owner = self

        class Handler(JsonHandler):
            def _record(self) -> dict[str, Any]:
                url = urlsplit(self.path)
                rec = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": self.read_json()}
                owner.requests.append(rec)
                return rec

            def do_GET(self) -> None:
                rec = self._record()
                if rec["path"] == "/apis/v2beta1/healthz":
                    self.reply(200, {"multi_user": False})
                elif rec["path"] == "/apis/v2beta1/experiments":
                    self.reply(200, {})  # no experiment of that name yet
                elif rec["path"].startswith("/apis/v2beta1/runs/"):
                    self.reply(200, {"run_id": rec["path"].rsplit("/", 1)[1], "display_name": "r",
                                     "experiment_id": "exp-1", "state": "PENDING",
                                     "created_at": "2026-12-01T21:00:00Z"})
                else:
                    self.reply(404, {"error": f"not in the stand-in: {rec['path']}"})

            def do_POST(self) -> None:
                rec = self._record()
                if rec["path"] == "/apis/v2beta1/experiments":
                    self.reply(200, {"experiment_id": "exp-1", "display_name": rec["body"]["display_name"],
                                     "namespace": rec["body"].get("namespace")})
                elif rec["path"] == "/apis/v2beta1/runs":
                    self.reply(200, {**rec["body"], "run_id": "run-1", "state": "PENDING",
                                     "created_at": "2026-12-01T21:00:00Z"})
                else:
                    self.reply(404, {"error": f"not in the stand-in: {rec['path']}"})

        self.handler = Handler

    def sent(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


@pytest.fixture
def kfp_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_StandIn]:
    from kfp.client import client

    monkeypatch.setenv("HOME", str(tmp_path))  # kfp writes ~/.config/kfp/context.json
    monkeypatch.setattr(client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / ".config" / "kfp" / "context.json"))
    api = _StandIn()
    with serve(api.handler) as url:
        api.url = url
        yield api


def _the_run(api: _StandIn) -> dict[str, Any]:
    runs = api.sent("POST", "/apis/v2beta1/runs")
    assert len(runs) == 1
    return runs[0]["body"]


def test_linkedout_pipeline_submit_sends_the_compiled_pipeline_and_typed_arguments(
        kfp_api: _StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    """``linkedout pipeline submit`` against the stand-in (what is sent, not what a cluster does)."""
    from linkedout.cli import main

    rc = main(["pipeline", "submit", "--host", kfp_api.url, "--run-name", "nightly", "--token", "t0ken",
               "dataset=/work/microlens-100k", 'training={"epochs": 20}', "canary_percent=5",
               'extraction={"layers": [0, 8, 20]}',
               "retry_failed=true", "max_failed_share=0.02"])
    assert rc == 0
    exp = kfp_api.sent("POST", "/apis/v2beta1/experiments")
    assert len(exp) == 1 and exp[0]["body"]["display_name"] == "linkedout"
    lookup = kfp_api.sent("GET", "/apis/v2beta1/experiments")[0]
    assert '"stringValue": "linkedout"' in lookup["query"]["filter"][0]
    run = _the_run(kfp_api)
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    assert run["service_account"] == "linkedout-pipeline"
    # the whole compiled pipeline goes with the run, KFP's cache off for every task
    spec, _ = _load(ROOT / "pipelines" / "linkedout.yaml")
    sent = run["pipeline_spec"]["pipeline_spec"]
    assert sent["pipelineInfo"]["name"] == "linkedout"
    assert sent["root"]["inputDefinitions"] == spec["root"]["inputDefinitions"]
    assert sent["deploymentSpec"] == spec["deploymentSpec"]
    steps = [(n, t.get("cachingOptions")) for n, t in _tasks(sent) if _executor(sent, t)]
    assert len(steps) > 10 and all(c == {} for _, c in steps)  # {}: enableCache false
    assert "platform_spec" in run["pipeline_spec"]  # the kfp-kubernetes settings (GPU pool, volume, secrets)
    assert run["runtime_config"]["parameters"] == {
        "dataset": "/work/microlens-100k", "training": {"epochs": 20}, "canary_percent": 5,
        "extraction": {"layers": [0, 8, 20]},
        "retry_failed": True, "max_failed_share": 0.02}
    every = [r for r in kfp_api.requests if r["path"].startswith("/apis/v2beta1/")]
    assert all(r["headers"].get("authorization") == "Bearer t0ken" for r in every)
    out = capsys.readouterr().out
    assert '"run_id": "run-1"' in out and f"{kfp_api.url}/#/runs/details/run-1" in out


def test_submit_refuses_bad_arguments_before_sending_anything(kfp_api: _StandIn,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from linkedout.cli import main

    for args, message in [(["canary_percent=many"], "parameter canary_percent: 'many' is not a number integer"),
                          (["epochs=20"], "has no parameter 'epochs'"),
                          (["extraction=[0, 4]"], "parameter extraction: expected a JSON object"),
                          (["--pipeline", "train_and_deploy", "canary_percent=1"], "needs dataset=..., features=...")]:
        assert main(["pipeline", "submit", "--host", kfp_api.url, *args]) == 2
        assert message in capsys.readouterr().err
    assert kfp_api.requests == []


def test_kfp_cli_run_submit_sends_the_yaml_and_its_arguments(kfp_api: _StandIn, tmp_path: Path) -> None:
    """The README's ``kfp --endpoint URL run submit -e linkedout -r NAME -f pipelines/linkedout.yaml key=value``
    (kfp 2.17's CLI; ``submit`` is its alias of ``run create``), against the stand-in."""
    import os
    import subprocess
    import sys

    kfp = Path(sys.executable).with_name("kfp")  # the console script the kfp wheel installs
    assert kfp.is_file(), f"no kfp command beside {sys.executable}"
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run([str(kfp), "--endpoint", kfp_api.url, "run", "submit",
                           "-e", "linkedout", "-r", "first-cluster-run", "-f", str(ROOT / "pipelines" / "linkedout.yaml"),
                           'training={"epochs": 20}', "canary_percent=5", "dataset=/work/microlens-100k"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert kfp_api.sent("POST", "/apis/v2beta1/experiments")[0]["body"]["display_name"] == "linkedout"
    run = _the_run(kfp_api)
    assert run["display_name"] == "first-cluster-run"
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "linkedout"
    assert run["runtime_config"]["parameters"] == {"training": {"epochs": 20}, "canary_percent": 5,
                                                   "dataset": "/work/microlens-100k"}
    assert kfp_api.sent("GET", "/apis/v2beta1/runs/run-1")  # the CLI reads the run back to show it
    assert "run-1" in done.stdout


def test_the_main_job_carries_every_extraction_and_backbone_field(tmp_path: Path) -> None:
    """``linkedout run``'s configs reach the pipeline whole (they were cut to the fields the pipeline named);
    the stage rebuilds the same dataclasses from them."""
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.job.params import config_from_dict
    from pipelines.local import local_arguments

    ecfg = ExtractionConfig(shard_size=32, frame_sampling="keyframe", early_exit=False, decode_threads=3)
    bcfg = BackboneConfig(seed=5, tiny_vision_hidden=16)
    args = local_arguments(tmp_path, extraction=ecfg, backbone=bcfg, epochs=3, seed=7)
    assert config_from_dict(ExtractionConfig, args["extraction"], "extraction") == ecfg
    assert config_from_dict(BackboneConfig, args["backbone"], "backbone") == bcfg
    assert args["training"]["epochs"] == 3 and args["training"]["seed"] == 7
    with pytest.raises(ValueError, match=r"extraction: unknown field\(s\) \['frames'\]"):
        config_from_dict(ExtractionConfig, {"frames": 4}, "extraction")


def test_pipelines_local_command_types_its_arguments_like_submit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m pipelines.local NAME --workdir W key=value ...``: values typed by the compiled pipeline,
    unknown keys and bad values refused before anything runs (``run`` is replaced: this is the parsing)."""
    from pipelines import local

    seen: dict[str, Any] = {}
    monkeypatch.setattr(local, "run", lambda name, arguments, workdir: seen.update(name=name, arguments=arguments))
    assert local.main(["extract", "--workdir", str(tmp_path), 'extraction={"shard_size": 32, "layers": [0, 4]}',
                       "retry_failed=true"]) == 0
    assert seen["name"] == "extract"
    assert seen["arguments"]["extraction"] == {"shard_size": 32, "layers": [0, 4]}
    assert seen["arguments"]["retry_failed"] is True and seen["arguments"]["workdir"] == str(tmp_path.resolve())
    for bad, message in ((["extract", "--workdir", str(tmp_path), "bogus=1"], "no parameter 'bogus'"),
                         (["extract", "--workdir", str(tmp_path), "extract_workers=x"], "extract_workers"),
                         (["nosuch", "--workdir", str(tmp_path)], "invalid choice")):
        with pytest.raises(SystemExit) as exc:
            local.main(bad)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def _silent_server() -> tuple[Any, str]:
    """A loopback socket that accepts connections and never answers."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_submit_to_a_server_that_never_answers_stops_within_its_timeout(capsys: pytest.CaptureFixture[str],
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from linkedout.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    sock, url = _silent_server()
    try:
        t0 = time.monotonic()
        assert main(["pipeline", "submit", "--host", url, "--timeout", "1"]) == 2
        took = time.monotonic() - t0
    finally:
        sock.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert took < 20, took  # kfp's client retries a few times, each bounded
    assert len(err) == 1 and url in err[0] and "no answer within 1 s" in err[0]


def test_submit_errors_are_one_line_naming_the_host(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from loopback import JsonHandler

    from linkedout.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{free.getsockname()[1]}"
    free.close()  # nothing listens there now

    class NotFound(JsonHandler):
        def do_GET(self) -> None:
            self.reply(404, {"error": "not found"})

        do_POST = do_GET

    with serve(NotFound) as not_found:
        cases = [(refused, "connection refused"), ("http://no-such-host.invalid:8888", "unknown host"),
                 (not_found, "HTTP 404")]
        for host, reason in cases:
            assert main(["pipeline", "submit", "--host", host, "--timeout", "2"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and host in err[0] and reason in err[0], err


def test_a_config_read_back_from_kfp_keeps_its_types() -> None:
    """KFP passes a dict parameter as a protobuf Struct, whose numbers are floats: the stage gets the config
    it was given, not a ``hidden_size`` of 32.0 that transformers refuses."""
    from google.protobuf import json_format, struct_pb2

    from linkedout.extraction.backbone_config import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.job.extraction import backbone_defaults, extraction_defaults
    from linkedout.job.params import config_from_dict, training_defaults
    from linkedout.job.variants import main_train_config
    from linkedout.training import TrainConfig

    def through_struct(d: dict[str, Any]) -> dict[str, Any]:
        return json_format.MessageToDict(json_format.ParseDict(d, struct_pb2.Struct()))

    cases = [(ExtractionConfig, extraction_defaults(), ExtractionConfig(shard_size=64)),
             (BackboneConfig, backbone_defaults(), BackboneConfig()), (TrainConfig, training_defaults(), main_train_config())]
    for cls, params, want in cases:
        sent = through_struct(params)
        assert any(isinstance(v, float) for v in sent.values())  # what a task receives
        got = config_from_dict(cls, sent, cls.__name__)
        assert got == want
        assert all(type(getattr(got, f)) is type(getattr(want, f)) for f in want.__dataclass_fields__)


def test_submit_to_a_server_that_stops_answering_after_its_health_check_is_bounded(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The health probe answers; every later request hangs: the client's own calls are bounded too."""
    import time

    from loopback import JsonHandler

    from linkedout.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))

    class HealthyThenSilent(JsonHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/apis/v2beta1/healthz"):
                self.reply(200, {"multi_user": False})
            else:
                time.sleep(60)  # never answers within the test (the thread is a daemon)

        do_POST = do_GET

    with serve(HealthyThenSilent) as url:
        t0 = time.monotonic()
        assert main(["pipeline", "submit", "--host", url, "--timeout", "1"]) == 2
        took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert took < 30, took  # each request within --timeout (was: for ever)
    assert len(err) == 1 and url in err[0] and "no answer within 1 s" in err[0], err
