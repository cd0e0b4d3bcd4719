"""Canary rollouts of the InferenceService: status, promote, rollback (Kubernetes Python client).

KServe splits a component's traffic between its latest revision and the previous rolled-out one by
``spec.<component>.canaryTrafficPercent``:

- **promote**: remove ``canaryTrafficPercent`` -> 100 % to the latest revision;
- **rollback**: set it to 0 -> 100 % to the previous revision (the new one stays for inspection).

The patches are JSON merge patches that carry the ``resourceVersion`` read just before, so a patch
made on a stale view of the object is refused by the API server (409) instead of silently
overwriting someone else's change. :func:`promote_patch` and :func:`rollback_patch` return them
so they can be inspected (``--dry-run``) and tested.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from linkedout.ab.deploy import API_TIMEOUT, GROUP, PLURAL, VERSION
from linkedout.utils import get_logger

log = get_logger(__name__)

COMPONENTS = ("predictor", "transformer")


class RolloutError(RuntimeError):
    """The Kubernetes API refused or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class RevisionTraffic:
    revision: str
    percent: int
    latest: bool
    tag: str | None = None


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    canary_percent: int | None  # spec: None = no canary in progress
    latest_ready: str | None
    latest_created: str | None
    previous_rolled_out: str | None
    traffic: tuple[RevisionTraffic, ...] = ()


@dataclass(frozen=True)
class RolloutStatus:
    """What ``linkedout ab status`` prints: per component, the spec's canary and the live traffic."""

    name: str
    namespace: str
    resource_version: str | None
    ready: bool
    url: str | None
    storage_uri: str | None
    release: str | None
    conditions: tuple[tuple[str, str, str], ...]  # (type, status, message)
    components: tuple[ComponentStatus, ...] = field(default_factory=tuple)

    def component(self, name: str) -> ComponentStatus:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"InferenceService {self.namespace}/{self.name} has no {name} component")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_status(isvc: dict[str, Any]) -> RolloutStatus:
    """Read the canary state out of an InferenceService object (as the API returns it)."""
    meta, spec, status = isvc.get("metadata", {}), isvc.get("spec", {}), isvc.get("status") or {}
    comps = []
    for c in COMPONENTS:
        if c not in spec:
            continue
        cs = (status.get("components") or {}).get(c) or {}
        traffic = tuple(
            RevisionTraffic(revision=str(t.get("revisionName", "")), percent=int(t.get("percent") or 0),
                            latest=bool(t.get("latestRevision", False)), tag=t.get("tag"))
            for t in cs.get("traffic") or ())
        comps.append(ComponentStatus(
            name=c, canary_percent=spec[c].get("canaryTrafficPercent"),
            latest_ready=cs.get("latestReadyRevision"), latest_created=cs.get("latestCreatedRevision"),
            previous_rolled_out=cs.get("previousRolledoutRevision"), traffic=traffic))
    conditions = tuple((str(c.get("type")), str(c.get("status")), str(c.get("message", "")))
                       for c in status.get("conditions") or ())
    ready = any(t == "Ready" and s == "True" for t, s, _ in conditions)
    predictor = spec.get("predictor", {})
    return RolloutStatus(
        name=meta.get("name", ""), namespace=meta.get("namespace", ""),
        resource_version=meta.get("resourceVersion"), ready=ready, url=status.get("url"),
        storage_uri=(predictor.get("model") or {}).get("storageUri"),
        release=(predictor.get("annotations") or {}).get("linkedout.io/release"),
        conditions=conditions, components=tuple(comps))


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}")


def promote_patch(resource_version: str | None, component: str = "predictor") -> dict[str, Any]:
    """Merge patch that removes ``canaryTrafficPercent``: all traffic to the latest revision."""
    _check_component(component)
    patch: dict[str, Any] = {"spec": {component: {"canaryTrafficPercent": None}}}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    return patch


def rollback_patch(resource_version: str | None, component: str = "predictor") -> dict[str, Any]:
    """Merge patch that sets ``canaryTrafficPercent`` to 0: all traffic to the previous revision."""
    _check_component(component)
    patch: dict[str, Any] = {"spec": {component: {"canaryTrafficPercent": 0}}}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    return patch


def unreachable(api: Any, error: Exception) -> RolloutError:
    """The error for a call that got no answer (refused, timed out after the client's retries): the API's
    address and the last cause, on one line."""
    cause = getattr(error, "reason", None) or error  # urllib3's MaxRetryError wraps the last try's error
    return RolloutError(f"cannot reach the Kubernetes API at {api.api_client.configuration.host}: "
                        f"{type(cause).__name__}: {' '.join(str(cause).split())}")


def get_inference_service(api: Any, name: str, namespace: str) -> dict[str, Any]:
    """GET the InferenceService; a missing one is a ValueError naming it, an unreachable API a RuntimeError."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return dict(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                     _request_timeout=API_TIMEOUT))
    except HTTPError as e:
        raise unreachable(api, e) from None
    except ApiException as e:
        if e.status == 404:
            raise ValueError(f"InferenceService {namespace}/{name} not found") from None
        raise RolloutError(f"reading InferenceService {namespace}/{name} failed: "
                           f"HTTP {e.status} {e.reason}") from None


def status(api: Any, name: str, namespace: str) -> RolloutStatus:
    """The canary state of the live InferenceService (:func:`parse_status` of a GET)."""
    return parse_status(get_inference_service(api, name, namespace))


def apply_patch(api: Any, name: str, namespace: str, patch: dict[str, Any], what: str) -> RolloutStatus:
    """Merge-patch the InferenceService with ``patch`` and return its new status.

    ``what`` names the operation in messages. A patch carrying a stale ``resourceVersion`` is
    refused by the API server (409) and raises ``RolloutError``, as does an unreachable API.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        obj = api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch,
                                                 _request_timeout=API_TIMEOUT)
    except HTTPError as e:
        raise unreachable(api, e) from None
    except ApiException as e:
        if e.status == 409:
            raise RolloutError(f"{what} of InferenceService {namespace}/{name} refused: it changed since it "
                               "was read (409 Conflict); run the command again") from None
        raise RolloutError(f"{what} of InferenceService {namespace}/{name} failed: HTTP {e.status} {e.reason}") \
            from None
    log.info("%s: InferenceService %s/%s patched with %s", what, namespace, name, patch["spec"])
    return parse_status(dict(obj))


def promote(api: Any, name: str, namespace: str, component: str = "predictor") -> RolloutStatus:
    """Send all traffic to the latest revision. Without a canary in progress, nothing is patched."""
    current = status(api, name, namespace)
    if current.component(component).canary_percent is None:
        log.info("InferenceService %s/%s: no canary in progress on the %s; nothing to promote",
                 namespace, name, component)
        return current
    return apply_patch(api, name, namespace, promote_patch(current.resource_version, component), "promote")


def rollback(api: Any, name: str, namespace: str, component: str = "predictor") -> RolloutStatus:
    """Send all traffic back to the previous revision (canaryTrafficPercent 0)."""
    current = status(api, name, namespace)
    return apply_patch(api, name, namespace, rollback_patch(current.resource_version, component), "rollback")


def format_status(s: RolloutStatus) -> str:
    """A few readable lines: readiness, release, and each component's revisions and traffic."""
    lines = [f"InferenceService {s.namespace}/{s.name}: {'Ready' if s.ready else 'NOT ready'}"
             + (f"  {s.url}" if s.url else ""),
             f"  storageUri: {s.storage_uri}   release: {s.release or '-'}"]
    for c in s.components:
        canary = "no canary (100 % latest)" if c.canary_percent is None else f"canaryTrafficPercent={c.canary_percent}"
        lines.append(f"  {c.name}: {canary}; latest ready {c.latest_ready or '-'}, "
                     f"previous rolled out {c.previous_rolled_out or '-'}")
        for t in c.traffic:
            lines.append(f"    {t.percent:3d} %  {t.revision}{'  (latest)' if t.latest else ''}"
                         + (f"  tag {t.tag}" if t.tag else ""))
    for typ, st, msg in s.conditions:
        if st != "True":
            lines.append(f"  condition {typ}={st}" + (f": {msg}" if msg else ""))
    return "\n".join(lines)
