"""The InferenceService for a model version and a canary percentage, and applying it to a cluster.

:func:`render_inference_service` is a plain function of explicit inputs (a :class:`ServingDeployment`)
that returns the object as a dict; the pipeline's deploy step calls it and then
:func:`apply_inference_service` (Kubernetes Python client, ``CustomObjectsApi``: create, or merge-patch
when it exists). With the defaults it returns exactly the InferenceService of
``manifests/overlays/production`` (``tests/test_manifests.py`` renders both and compares), so the
hand-applied manifests and the pipeline's deployments never drift apart.

The shape (docs/serving.md): a transformer (our image, ``python -m linkedout.serving.transformer``,
one ``args`` entry per flag) in front of a Triton predictor (runtime ``kserve-tritonserver`` named
explicitly, protocol v2 over gRPC on an h2c port, the ONNX model repository on S3, GPUs on the H100
pool). ``canary_percent`` sets the predictor's ``canaryTrafficPercent``: KServe then gives that share
of the traffic to the new predictor revision and the rest to the previous one.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from linkedout.utils import get_logger

log = get_logger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"

#: Release of the images built from this tree (``Dockerfile``), = the package version.
IMAGE_TAG = "0.1.0"
DEFAULT_IMAGE = f"ghcr.io/linkedout/linkedout:{IMAGE_TAG}-cpu"
#: NVIDIA Triton release of the kserve-tritonserver runtime (tritonclient 2.73 = Triton 26.08).
TRITON_RUNTIME_VERSION = "26.08-py3"
H100_NODE_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU_TOLERATIONS = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)

#: Transformer ports (kserve's defaults): REST + /metrics + health on 8080, gRPC on 8081.
HTTP_PORT, GRPC_PORT = 8080, 8081
#: Triton ports in the kserve-tritonserver runtime: REST + health on 8080, gRPC 9000, metrics 8002.
TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8080, 9000, 8002

#: Seconds a call to the Kubernetes API may take to connect, and again to answer, before it is an error.
API_TIMEOUT_S = 15
#: ``_request_timeout`` of the Kubernetes client's calls: (connect, read) seconds. (The client takes an
#: int or a pair; it silently ignores a float, and a silent API server then blocks a call for ever.)
API_TIMEOUT = (API_TIMEOUT_S, API_TIMEOUT_S)

FEAST_DIR = "/etc/linkedout/feast"
ROUTING_DIR = "/etc/linkedout/routing"

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def image_is_pinned(image: str) -> bool:
    """True if ``image`` names an explicit tag (not ``latest``) or a digest."""
    if "@sha256:" in image:
        return bool(re.search(r"@sha256:[0-9a-f]{64}$", image))
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


@dataclass(frozen=True)
class ServingDeployment:
    """Everything that varies between deployments of the InferenceService; defaults = production.

    Attributes:
        name / namespace: the InferenceService; environment: its ``app.kubernetes.io/environment`` label.
        storage_uri: the Triton model repository (docs/serving.md §1), also the transformer's
            ``--model_repository`` (it reads the catalogue files there).
        default_model: the model NAME served when no routing config applies (``--default_model``).
        release: free text naming what is rolled out (e.g. ``linkedout-v3``), set as the predictor's
            ``linkedout.io/release`` annotation; changing it makes a new predictor revision.
        canary_percent: None = no canary (all traffic to the latest revision); 0..100 = the share of
            the new predictor revision.
        image: the transformer image (the slim CPU image of ``Dockerfile``), pinned by tag or digest.
        triton_runtime_version: the NVIDIA Triton image tag of the kserve-tritonserver runtime.
        gpus: GPUs per Triton replica (on the H100 pool: ``node_selector`` and ``tolerations``).
        predictor_replicas / transformer_replicas: (min, max) replicas of each component.
        feast_timeout_ms, predictor_timeout_s, predictor_retries, max_batch_size, max_k, batch_window_ms,
            catalog_poll_s, retrieval_threads: transformer flags.
        request_log: the transformer's ``--request_log``; ``/dev/stdout`` hands it to the cluster's
            log pipeline (``linkedout ab analyze --mixed-log`` reads ``kubectl logs`` output).
        request_log_max_mb, request_log_backups: its rotation when it is a file (0: never; a pipe never is).
    """

    name: str = "linkedout"
    namespace: str = "linkedout"
    environment: str | None = "production"
    storage_uri: str = "s3://linkedout-models/model_repository"
    default_model: str = "linkedout"
    release: str | None = None
    canary_percent: int | None = None
    image: str = DEFAULT_IMAGE
    triton_runtime_version: str = TRITON_RUNTIME_VERSION
    gpus: int = 1
    node_selector: dict[str, str] = field(default_factory=lambda: dict(H100_NODE_SELECTOR))
    tolerations: tuple[dict[str, str], ...] = GPU_TOLERATIONS
    predictor_replicas: tuple[int, int] = (2, 8)
    transformer_replicas: tuple[int, int] = (2, 16)
    service_account: str = "linkedout-serving"
    feast_timeout_ms: int = 50
    predictor_timeout_s: int = 1
    predictor_retries: int = 1
    max_batch_size: int = 64
    max_k: int = 100
    batch_window_ms: float = 2.0
    catalog_poll_s: float = 1.0
    retrieval_threads: int = 1
    request_log: str | None = "/dev/stdout"
    request_log_max_mb: float = 0.0
    request_log_backups: int = 4

    def __post_init__(self) -> None:
        w = "ServingDeployment"
        for f in ("name", "namespace", "service_account"):
            if not _DNS1123.match(str(getattr(self, f))):
                raise ValueError(f"{w}.{f} must be a DNS-1123 label, got {getattr(self, f)!r}")
        if not re.match(r"^(s3|gs|pvc|https?)://\S+$", self.storage_uri):
            raise ValueError(f"{w}.storage_uri must be a URI such as s3://bucket/prefix, got {self.storage_uri!r}")
        if self.canary_percent is not None and (isinstance(self.canary_percent, bool)
                                                or not isinstance(self.canary_percent, int)
                                                or not 0 <= self.canary_percent <= 100):
            raise ValueError(f"{w}.canary_percent must be None or an integer in [0, 100], got {self.canary_percent!r}")
        if not image_is_pinned(self.image):
            raise ValueError(f"{w}.image must be pinned by a tag other than 'latest' or a digest, got {self.image!r}")
        if not self.triton_runtime_version or self.triton_runtime_version == "latest":
            raise ValueError(f"{w}.triton_runtime_version must be a pinned Triton release, "
                             f"got {self.triton_runtime_version!r}")
        if self.gpus < 0:
            raise ValueError(f"{w}.gpus must be >= 0, got {self.gpus}")
        for f in ("predictor_replicas", "transformer_replicas"):
            lo, hi = getattr(self, f)
            if not 0 <= lo <= hi or hi < 1:
                raise ValueError(f"{w}.{f} must be (min, max) with 0 <= min <= max and max >= 1, got {(lo, hi)}")
        for f in ("feast_timeout_ms", "predictor_timeout_s", "max_batch_size", "max_k", "retrieval_threads",
                  "request_log_backups"):
            if getattr(self, f) < 1:
                raise ValueError(f"{w}.{f} must be >= 1, got {getattr(self, f)}")
        if self.predictor_retries < 0:
            raise ValueError(f"{w}.predictor_retries must be >= 0, got {self.predictor_retries}")
        for f in ("batch_window_ms", "request_log_max_mb"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"{w}.{f} must be >= 0, got {getattr(self, f)}")
        if not self.catalog_poll_s > 0:
            raise ValueError(f"{w}.catalog_poll_s must be > 0, got {self.catalog_poll_s}")


def transformer_args(d: ServingDeployment) -> list[str]:
    """The transformer's ``args``: one ``--flag=value`` per flag of docs/serving.md §3.

    ``--predictor_host`` is left to KServe, which appends the predictor's service in the namespace.
    """
    args = [
        f"--model_name={d.name}",
        "--predictor_protocol=grpc-v2",
        f"--predictor_request_timeout_seconds={d.predictor_timeout_s}",
        f"--predictor_request_retries={d.predictor_retries}",
        f"--http_port={HTTP_PORT}",
        f"--grpc_port={GRPC_PORT}",
        f"--model_repository={d.storage_uri}",
        f"--feast_repo={FEAST_DIR}",
        f"--feast_timeout_ms={d.feast_timeout_ms}",
        f"--routing={ROUTING_DIR}/routing.yaml",
        f"--default_model={d.default_model}",
    ]
    if d.request_log:
        args += [f"--request_log={d.request_log}", f"--request_log_max_mb={d.request_log_max_mb:g}",
                 f"--request_log_backups={d.request_log_backups}"]
    args += [f"--max_batch_size={d.max_batch_size}", f"--max_k={d.max_k}", f"--batch_window_ms={d.batch_window_ms:g}",
             f"--catalog_poll_s={d.catalog_poll_s:g}", f"--retrieval_threads={d.retrieval_threads}",
             "--bind_address=0.0.0.0"]
    return args


def _restricted(read_only_root: bool) -> dict[str, Any]:
    sc: dict[str, Any] = {"allowPrivilegeEscalation": False}
    if read_only_root:
        sc["readOnlyRootFilesystem"] = True
    sc["capabilities"] = {"drop": ["ALL"]}
    return sc


def _pod_security(uid: int, fs_group: bool) -> dict[str, Any]:
    sc: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid}
    if fs_group:
        sc["fsGroup"] = uid
    sc["seccompProfile"] = {"type": "RuntimeDefault"}
    return sc


def _http_probe(path: str, port: int, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, **timing}


def _scrape(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _secret_env(name: str, key: str) -> dict[str, Any]:
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}


def render_inference_service(d: ServingDeployment | None = None, **overrides: Any) -> dict[str, Any]:
    """The InferenceService of ``d`` (or of ``ServingDeployment(**overrides)``) as a dict.

    ``render_inference_service(storage_uri="s3://...", release="linkedout-v3", canary_percent=10)``
    is what the pipeline's deploy step applies for a canary of release ``linkedout-v3``.
    """
    if d is None:
        d = ServingDeployment(**overrides)
    elif overrides:
        raise TypeError("pass either a ServingDeployment or keyword overrides, not both")
    labels = {"app.kubernetes.io/part-of": "linkedout"}
    if d.environment:
        labels["app.kubernetes.io/environment"] = d.environment
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": d.name,
            "namespace": d.namespace,
            "labels": labels,
            "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
        },
        "spec": {"predictor": _predictor_spec(d), "transformer": _transformer_spec(d)},
    }


def _predictor_spec(d: ServingDeployment) -> dict[str, Any]:
    """The Triton predictor: ONNX repository, GPUs on the H100 pool, the canary share."""
    gpu = {"nvidia.com/gpu": str(d.gpus)} if d.gpus else {}
    predictor_annotations = _scrape(TRITON_METRICS_PORT)
    if d.release:
        predictor_annotations["linkedout.io/release"] = d.release
    predictor: dict[str, Any] = {
        "minReplicas": d.predictor_replicas[0],
        "maxReplicas": d.predictor_replicas[1],
        "scaleMetric": "concurrency",
        "scaleTarget": 32,
        "serviceAccountName": d.service_account,
        "annotations": predictor_annotations,
    }
    if d.gpus:
        predictor["nodeSelector"] = dict(d.node_selector)
        predictor["tolerations"] = [dict(t) for t in d.tolerations]
    predictor["securityContext"] = _pod_security(1000, fs_group=True)
    if d.canary_percent is not None:
        predictor["canaryTrafficPercent"] = d.canary_percent
    predictor["model"] = {
        "modelFormat": {"name": "onnx"},
        "runtime": "kserve-tritonserver",
        "runtimeVersion": d.triton_runtime_version,
        "protocolVersion": "v2",
        "storageUri": d.storage_uri,
        "args": ["--strict-readiness=true", "--exit-on-error=false"],
        "ports": [{"name": "h2c", "containerPort": TRITON_GRPC_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "4", "memory": "16Gi", **gpu},
                      "limits": {"cpu": "8", "memory": "32Gi", **gpu}},
        "readinessProbe": _http_probe("/v2/health/ready", TRITON_HTTP_PORT, periodSeconds=5, failureThreshold=3),
        "livenessProbe": _http_probe("/v2/health/live", TRITON_HTTP_PORT, initialDelaySeconds=30,
                                     periodSeconds=10, failureThreshold=6),
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return predictor


def _transformer_spec(d: ServingDeployment) -> dict[str, Any]:
    """The transformer: our image, its flags, the Feast and routing config mounts."""
    return {
        "minReplicas": d.transformer_replicas[0],
        "maxReplicas": d.transformer_replicas[1],
        "scaleMetric": "concurrency",
        "scaleTarget": 16,
        "serviceAccountName": d.service_account,
        "annotations": _scrape(HTTP_PORT),
        "securityContext": _pod_security(10001, fs_group=False),
        "containers": [{
            "name": "kserve-container",
            "image": d.image,
            "command": ["python", "-m", "linkedout.serving.transformer"],
            "args": transformer_args(d),
            "env": [_secret_env("linkedout-redis", "REDIS_PASSWORD"), {"name": "HOME", "value": "/tmp"}],
            "envFrom": [{"secretRef": {"name": "linkedout-s3"}}],
            "ports": [{"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
            "readinessProbe": _http_probe("/v2/health/ready", HTTP_PORT, periodSeconds=5, failureThreshold=3),
            "livenessProbe": _http_probe("/v2/health/live", HTTP_PORT, initialDelaySeconds=20, periodSeconds=10,
                                         failureThreshold=6),
            "securityContext": _restricted(read_only_root=True),
            "volumeMounts": [
                {"name": "feast-config", "mountPath": FEAST_DIR, "readOnly": True},
                {"name": "routing", "mountPath": ROUTING_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }],
        "volumes": [
            {"name": "feast-config", "configMap": {"name": "linkedout-feast"}},
            {"name": "routing", "configMap": {"name": "linkedout-routing"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }


def render_routing_configmap(routing_yaml: str, namespace: str = "linkedout",
                             name: str = "linkedout-routing") -> dict[str, Any]:
    """The ConfigMap the transformer's ``--routing`` file comes from (mounted without subPath)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "linkedout"}},
        "data": {"routing.yaml": routing_yaml},
    }


def apply_inference_service(isvc: dict[str, Any], api: Any = None) -> dict[str, Any]:
    """Create ``isvc`` in its namespace, or merge-patch the existing one; returns the server's object.

    ``api`` is a ``kubernetes.client.CustomObjectsApi`` (default: from the in-cluster config, else
    ``~/.kube/config``). Needs the verbs of ``manifests/base/rbac.yaml``: create, patch (and get).
    A merge patch replaces lists whole and removes keys set to None: a rendered object without
    ``canaryTrafficPercent`` must remove it, so the patch sets it to None explicitly when absent.
    """
    from kubernetes.client.exceptions import ApiException

    api = api if api is not None else custom_objects_api()
    ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, isvc, _request_timeout=API_TIMEOUT)
        log.info("created InferenceService %s/%s", ns, name)
        return dict(created)
    except ApiException as e:
        if e.status != 409:
            raise
    patch = copy.deepcopy(isvc)
    patch["spec"]["predictor"].setdefault("canaryTrafficPercent", None)
    patched = api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, patch, _request_timeout=API_TIMEOUT)
    log.info("patched InferenceService %s/%s (canaryTrafficPercent=%s)", ns, name,
             isvc["spec"]["predictor"].get("canaryTrafficPercent"))
    return dict(patched)


class ClusterConfigError(RuntimeError):
    """No Kubernetes cluster is configured: no usable kubeconfig and not running inside a cluster. The
    message (one line) says what was tried and why it failed."""


def custom_objects_api(kubeconfig: str | None = None, context: str | None = None,
                       host: str | None = None) -> Any:
    """A ``CustomObjectsApi``: ``host`` (e.g. ``http://127.0.0.1:8001`` of ``kubectl proxy``), or a
    kubeconfig file/context, or the in-cluster service account, else the kubeconfig of ``KUBECONFIG``
    (default ``~/.kube/config``), in that order of preference. Nothing is sent to the cluster yet;
    :class:`ClusterConfigError` when none of them names a cluster."""
    from kubernetes import client, config

    if host:
        if not re.match(r"^https?://[^/\s]+", host):
            raise ValueError(f"the Kubernetes API server URL must be http(s)://host[:port], got {host!r}")
        cfg = client.Configuration()
        cfg.host = host
        return client.CustomObjectsApi(client.ApiClient(cfg))
    in_cluster = None
    try:
        if kubeconfig or context:
            config.load_kube_config(config_file=kubeconfig, context=context)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException as e:
                in_cluster = e
                config.load_kube_config()
    except (config.ConfigException, yaml.YAMLError) as e:  # no file, an empty or malformed one, no such context
        raise ClusterConfigError(_no_cluster(kubeconfig, context, in_cluster, e)) from None
    return client.CustomObjectsApi()


def _no_cluster(kubeconfig: str | None, context: str | None, in_cluster: Exception | None, error: Exception) -> str:
    """One line: why neither the in-cluster service account nor the kubeconfig gave a cluster."""
    if kubeconfig:
        files, named = kubeconfig, f"the kubeconfig {kubeconfig}"
    elif os.environ.get("KUBECONFIG"):
        files = os.environ["KUBECONFIG"]
        named = f"the kubeconfig {files} (KUBECONFIG)"
    else:
        files = str(Path("~/.kube/config").expanduser())
        named = f"the kubeconfig {files} (the default: KUBECONFIG is not set)"
    if not any(Path(f).expanduser().is_file() for f in files.split(os.pathsep) if f):
        why = f"{named} does not exist"
    else:
        why = f"{named} cannot be used" + (f" with the context {context}" if context else "") + \
            f": {' '.join(str(error).split())}"
    if in_cluster is not None:
        why = f"not running inside a cluster ({' '.join(str(in_cluster).split()).rstrip('.')}), and {why}"
    return f"no Kubernetes cluster is configured: {why}"
