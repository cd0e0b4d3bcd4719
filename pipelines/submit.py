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
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kfp import Client
from kfp_server_api.exceptions import ApiException

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


#: Seconds to wait for the KFP API server to accept a connection and to answer each request.
DEFAULT_TIMEOUT = 30.0


class SubmitError(ConnectionError):
    """The KFP API server could not be reached or refused the run; the message names the host and why."""


def submit(host: str, pipeline: str, arguments: Mapping[str, Any], *, experiment: str = "linkedout",
           run_name: str | None = None, namespace: str | None = None, service_account: str = SERVICE_ACCOUNT,
           token: str | None = None, pipeline_root: str | None = None,
           timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Create a run of ``pipeline`` (a name of ours or a YAML file) on the KFP API server at ``host``.

    Every connection and every request is bounded by ``timeout`` seconds (kfp's client has no timeout
    of its own: a server that accepts and never answers would hang it); an unreachable host, a refused
    port, an HTTP error or a timeout raise :class:`SubmitError`, one line naming the host. Returns
    ``{"run_id", "experiment_id", "pipeline", "url"}``.
    """
    package = package_of(pipeline)
    params = parameters_of(package)
    unknown = sorted(set(arguments) - set(params))
    if unknown:
        raise ValueError(f"{package.name} has no parameter(s) {unknown}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    _probe(host, timeout, token)  # kfp's constructor asks the health endpoint unbounded: reach it first
    try:
        client = Client(host=host, existing_token=token, **({"namespace": namespace} if namespace else {}))
        _bound(client, timeout)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=dict(arguments), run_name=run_name, experiment_name=experiment,
            namespace=namespace, enable_caching=False, service_account=service_account or None,
            pipeline_root=pipeline_root)
    except ApiException as e:
        raise SubmitError(f"KFP API at {host} answered HTTP {e.status} {e.reason}".rstrip()) from None
    except (OSError, urllib3.exceptions.HTTPError) as e:
        raise SubmitError(f"KFP API at {host} is unreachable: {_reason(e, timeout)}") from None
    run = result.run_info
    return {"run_id": result.run_id, "experiment_id": getattr(run, "experiment_id", None), "pipeline": str(package),
            "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}


def _bound(client: Client, timeout: float) -> None:
    """Bound every later request of ``client`` by ``timeout`` (connect, read). kfp's client passes no timeout,
    and its REST layer hands urllib3 an explicit ``timeout=None`` (so neither a pool default nor
    ``socket.setdefaulttimeout`` applies: a silent server hung it for ever); its ``_request_timeout``
    argument is the one knob, filled in here for every call."""
    rest = client._run_api.api_client.rest_client  # one ApiClient behind every API of the client
    request = rest.request

    def bounded(*args: Any, **kwargs: Any) -> Any:
        kwargs["_request_timeout"] = kwargs.get("_request_timeout") or (timeout, timeout)
        return request(*args, **kwargs)

    rest.request = bounded


def _probe(host: str, timeout: float, token: str | None) -> None:
    """Reach ``host``'s health endpoint once, bounded by ``timeout`` (kfp's client asks it with no bound, and
    retries an error for 25 s): a host that cannot be reached, that accepts and never answers, or that
    answers with an error (but 401/403, which kfp's credentials may pass) is a :class:`SubmitError` naming it."""
    request = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        e.close()
        if e.code not in (401, 403):  # kfp's own credentials may get past those; anything else is no KFP API
            raise SubmitError(f"KFP API at {host} answered HTTP {e.code} {e.reason} on /apis/v2beta1/healthz: "
                              "is that the pipeline endpoint?") from None
    except (OSError, ValueError) as e:
        cause = e.reason if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException) else e
        raise SubmitError(f"KFP API at {host} is unreachable: {_reason(cause, timeout)}") from None


def _reason(e: BaseException, timeout: float) -> str:
    """The innermost cause of a connection error, in a few words."""
    while isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        e = e.reason
    if isinstance(e, (TimeoutError, socket.timeout, urllib3.exceptions.TimeoutError)):
        return f"no answer within {timeout:g} s"
    if isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError)) \
            or isinstance(e.__context__, socket.gaierror):
        return "unknown host"
    if isinstance(e, (ConnectionRefusedError, urllib3.exceptions.NewConnectionError)):
        return "connection refused"
    return str(e).splitlines()[0] if str(e) else type(e).__name__
