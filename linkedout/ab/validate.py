"""Offline validation of rendered Kubernetes objects: schemas, and the rules every object must keep.

Schemas:
- core kinds (Deployment, Service, ConfigMap, RBAC, ...) with ``kubernetes-validate`` in strict
  mode (unknown fields are errors);
- custom resources (InferenceService, TrainJob, TrainingRuntime, ...) against their CRDs'
  ``openAPIV3Schema`` from a directory of JSON schemas (``<kind>-<group's first label>-<version>.json``,
  e.g. ``inferenceservice-serving-v1beta1.json``), made strict by adding ``additionalProperties:
  false`` to every object schema that lists ``properties`` and does not preserve unknown fields, so
  a misspelt ``canaryTrafficPercnt`` fails; their ``metadata`` is checked as core ObjectMeta.

Rules (:func:`policy_problems`), on every container of every object: the image pinned by a tag
other than ``latest`` or by a digest (Triton's image through ``runtimeVersion``); CPU and memory
requests and limits; not running as root (``runAsNonRoot`` on the pod or the container) with no
privilege escalation; and no plaintext secret anywhere (no Secret with data, no secret-looking
environment variable with a literal value, no literal password or key in any string).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from linkedout.ab.deploy import image_is_pinned
from linkedout.ab.manifests import repo_root

KUBERNETES_VERSION = "1.37"

_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY)", re.I)
_LITERAL_SECRETS = (
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"password\s*[=:]\s*(?![$\s\"']|\$\{|\$\()[^\s,\"']+", re.I), "a literal password"),
    (re.compile(r"://[^/\s:@]+:[^/\s@$]+@"), "credentials inside a URL"),
)


@dataclass(frozen=True)
class Problem:
    """One finding: which object, where in it, what is wrong."""

    obj: str  # "Kind/namespace/name"
    path: str  # JSON-pointer-like path inside the object
    message: str

    def __str__(self) -> str:
        return f"{self.obj} {self.path}: {self.message}"


def object_ref(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('namespace', '-')}/{meta.get('name', '?')}"


# ---------------------------------------------------------------------------------------- schemas


def schema_file(schemas_dir: Path, api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return schemas_dir / f"{kind.lower()}-{group.split('.')[0]}-{version}.json"


def strictify(schema: Any) -> Any:
    """A copy of ``schema`` where objects with ``properties`` reject unknown fields."""
    s = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


@cache
def _load_strict_schema(path: str) -> Any:
    return strictify(json.loads(Path(path).read_text(encoding="utf-8")))


def _path(error: Any) -> str:
    return "/" + "/".join(str(p) for p in error.absolute_path)


def schema_problems(obj: dict[str, Any], schemas_dir: str | Path | None) -> list[Problem]:
    """Validate one object: core kinds with kubernetes-validate (strict), custom resources with their CRD schema."""
    import jsonschema

    ref = object_ref(obj)
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [Problem(ref, "/", "apiVersion and kind are required")]
    core = _core_validator(api_version, kind)
    if core is not None:
        return [Problem(ref, _path(e), e.message)
                for e in sorted(core.iter_errors(obj), key=lambda e: list(e.absolute_path))]
    if schemas_dir is None:
        return [Problem(ref, "/", f"custom resource {api_version} {kind}: no schema directory given")]
    path = schema_file(Path(schemas_dir), api_version, kind)
    if not path.is_file():
        return [Problem(ref, "/", f"no schema for {api_version} {kind} (looked for {path})")]
    validator = jsonschema.Draft202012Validator(_load_strict_schema(str(path)))
    problems = [Problem(ref, _path(e), e.message)
                for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))]
    # The CRD schema leaves metadata open; check it as the core ObjectMeta it is.
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata") or {}}
    meta = _core_validator("v1", "ConfigMap")
    assert meta is not None
    problems += [Problem(ref, _path(e), e.message) for e in meta.iter_errors(carrier)]
    return problems


@cache
def _core_validator(api_version: str, kind: str) -> Any:
    """kubernetes-validate's strict schema of a core kind as a reusable validator; None if not a core kind.

    The same schema files and registry as ``kubernetes_validate.validate(..., strict=True)``, loaded once.
    """
    import jsonschema
    import referencing
    from kubernetes_validate.utils import all_versions, major_minor, schema_contents

    version = [v for v in all_versions() if major_minor(v) <= KUBERNETES_VERSION][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = schema_contents(f"{schema_dir}/{kind.lower()}-{api}.json", KUBERNETES_VERSION)
    except FileNotFoundError:
        return None
    definitions = schema_contents(f"{schema_dir}/_definitions.json", KUBERNETES_VERSION)
    registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = referencing.Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


# ------------------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class ContainerSite:
    """A container found in an object, with the pod spec around it."""

    path: str
    container: dict[str, Any]
    pod: dict[str, Any]
    runtime_image: bool = False  # KServe predictor `model`: the image comes from the serving runtime


def containers(obj: dict[str, Any]) -> Iterator[ContainerSite]:
    """Every container of ``obj``: pod templates at any depth, and a KServe predictor's ``model``.

    Lists under ``podSpecOverrides`` (TrainJob) are partial overrides, not containers, and are skipped.
    """

    def walk(node: Any, path: str) -> Iterator[ContainerSite]:
        if isinstance(node, dict):
            for key, value in node.items():
                sub = f"{path}/{key}"
                if key == "podSpecOverrides":
                    continue
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for i, c in enumerate(value):
                        if isinstance(c, dict):
                            yield ContainerSite(f"{sub}/{i}", c, node)
                elif key == "model" and isinstance(value, dict) and "modelFormat" in value:
                    yield ContainerSite(sub, value, node, runtime_image=True)
                else:
                    yield from walk(value, sub)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}/{i}")

    yield from walk(obj.get("spec") or {}, "/spec")


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}/{i}")


def policy_problems(obj: dict[str, Any]) -> list[Problem]:
    """The rules of the module docstring, for one object."""
    ref, out = object_ref(obj), []
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        out.append(Problem(ref, "/data", "a Secret with values is rendered: secrets never come from git"))
    for site in containers(obj):
        c, p = site.container, site.path
        if site.runtime_image:
            rv = c.get("runtimeVersion")
            if not rv or rv == "latest":
                out.append(Problem(ref, f"{p}/runtimeVersion", "the serving runtime's image must be pinned "
                                   "(runtimeVersion set, not 'latest')"))
            if c.get("image") and not image_is_pinned(c["image"]):
                out.append(Problem(ref, f"{p}/image", f"image {c['image']!r} is not pinned by tag or digest"))
        else:
            image = c.get("image")
            if not image:
                out.append(Problem(ref, f"{p}/image", "container has no image"))
            elif not image_is_pinned(image):
                out.append(Problem(ref, f"{p}/image", f"image {image!r} is not pinned by tag or digest"))
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(kind) or {})]
            if missing:
                out.append(Problem(ref, f"{p}/resources/{kind}", f"no {' and '.join(missing)} {kind}"))
        csc, psc = c.get("securityContext") or {}, site.pod.get("securityContext") or {}
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if non_root is not True or uid == 0:
            out.append(Problem(ref, f"{p}/securityContext", "must run as non-root (runAsNonRoot: true, uid != 0)"))
        if csc.get("allowPrivilegeEscalation") is not False:
            out.append(Problem(ref, f"{p}/securityContext/allowPrivilegeEscalation", "must be false"))
        if csc.get("privileged"):
            out.append(Problem(ref, f"{p}/securityContext/privileged", "must not be privileged"))
        for i, env in enumerate(c.get("env") or ()):
            if _SECRET_ENV.search(str(env.get("name", ""))) and env.get("value"):
                out.append(Problem(ref, f"{p}/env/{i}", f"{env['name']} has a literal value: use valueFrom "
                                   "(a Secret)"))
    if obj.get("kind") == "TrainJob":
        trainer = (obj.get("spec") or {}).get("trainer") or {}
        if trainer.get("image") and not image_is_pinned(trainer["image"]):
            out.append(Problem(ref, "/spec/trainer/image", f"image {trainer['image']!r} is not pinned"))
        rpn = trainer.get("resourcesPerNode") or {}
        for kind in ("requests", "limits"):
            if not all(r in (rpn.get(kind) or {}) for r in ("cpu", "memory")):
                out.append(Problem(ref, f"/spec/trainer/resourcesPerNode/{kind}", "cpu and memory must be set"))
    for path, text in _strings({k: v for k, v in obj.items() if k != "status"}, ""):
        for pattern, what in _LITERAL_SECRETS:
            if pattern.search(text):
                out.append(Problem(ref, path, f"contains {what}"))
    return out


def validate_objects(objects: list[dict[str, Any]], schemas_dir: str | Path | None) -> list[Problem]:
    """Schema and rule problems of every object (empty list: all valid)."""
    problems: list[Problem] = []
    for obj in objects:
        problems += schema_problems(obj, schemas_dir)
        problems += policy_problems(obj)
    return problems


def default_schemas_dir(root: str | Path | None = None) -> Path | None:
    """``<repo>/../shared/k8s-schemas`` when it exists (where CI lays the CRD schemas), else None."""
    d = Path(root) if root is not None else repo_root().parent / "shared" / "k8s-schemas"
    return d if d.is_dir() else None
