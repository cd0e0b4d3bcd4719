"""Submit a compiled pipeline to a Kubeflow Pipelines API server (``kfp.Client``).

What ``linkedout pipeline submit --host URL ...`` does: read the pipeline's parameters from its
compiled YAML, check and convert ``key=value`` arguments against them (an unknown key, a value of
the wrong type or a missing required parameter is an error naming it, before anything is sent),
then create (or reuse) the experiment and create the run with ``kfp.Client``, KFP's cache off
(the stage functions' fingerprints decide what is reused), under the service account that may
deploy (``linkedout-pipeline``, ``manifests/base/rbac.yaml``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipelines import PIPELINES

HERE = Path(__file__).resolve().parent
SERVICE_ACCOUNT = "linkedout-pipeline"


def package_of(pipeline: str) -> Path:
    """``pipeline``: a compiled YAML file, or the name of one of ours (``linkedout`` -> ``pipelines/linkedout.yaml``)."""
    if pipeline in PIPELINES:
        return HERE / f"{pipeline}.yaml"
    path = Path(pipeline)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline {pipeline!r}: neither one of {list(PIPELINES)} nor a compiled YAML file")
    return path


def parameters_of(package: str | Path) -> dict[str, dict[str, Any]]:
    """``{name: {"type": KFP parameter type, "default": value, "required": bool}}`` of a compiled pipeline."""
    with open(package, encoding="utf-8") as f:
        spec = next(iter(yaml.safe_load_all(f)))
    try:
        params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f"{package} is not a compiled KFP pipeline (no root.inputDefinitions)") from None
    return {name: {"type": p.get("parameterType", "STRING"), "default": p.get("defaultValue"),
                   "required": not p.get("isOptional", False) and "defaultValue" not in p}
            for name, p in params.items()}


def parse_arguments(package: str | Path, items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> typed arguments of the pipeline in ``package`` (``ValueError`` naming the key)."""
    params = parameters_of(package)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key not in params:
            raise ValueError(f"{Path(package).name} has no parameter {key!r}; it has: {', '.join(sorted(params))}")
        out[key] = convert(key, params[key]["type"], text)
    missing = sorted(k for k, p in params.items() if p["required"] and k not in out)
    if missing:
        raise ValueError(f"{Path(package).name} needs {', '.join(f'{k}=...' for k in missing)}")
    return out


def convert(key: str, kind: str, text: str) -> Any:
    """A ``key=value`` argument's value as the parameter type ``kind`` (STRING, NUMBER_INTEGER, ...) wants."""
    try:
        if kind == "STRING":
            return text
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"parameter {key}: {text!r} is not a {kind.lower().replace('_', ' ')} ({e})") from None
    want = {"LIST": list, "STRUCT": dict}.get(kind)
    if want is not None and not isinstance(value, want):
        raise ValueError(f"parameter {key}: expected a JSON {'list' if want is list else 'object'}, got {text!r}")
    return value


def submit(host: str, pipeline: str, arguments: Mapping[str, Any], *, experiment: str = "linkedout",
           run_name: str | None = None, namespace: str | None = None, service_account: str = SERVICE_ACCOUNT,
           token: str | None = None, pipeline_root: str | None = None) -> dict[str, Any]:
    """Create a run of ``pipeline`` (a name of ours or a YAML file) on the KFP API server at ``host``.

    Returns ``{"run_id", "experiment_id", "pipeline", "url"}``.
    """
    from kfp import Client

    package = package_of(pipeline)
    params = parameters_of(package)
    unknown = sorted(set(arguments) - set(params))
    if unknown:
        raise ValueError(f"{package.name} has no parameter(s) {unknown}")
    client = Client(host=host, existing_token=token, **({"namespace": namespace} if namespace else {}))
    result = client.create_run_from_pipeline_package(
        str(package), arguments=dict(arguments), run_name=run_name, experiment_name=experiment, namespace=namespace,
        enable_caching=False, service_account=service_account or None, pipeline_root=pipeline_root)
    run = result.run_info
    return {"run_id": result.run_id, "experiment_id": getattr(run, "experiment_id", None), "pipeline": str(package),
            "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}
