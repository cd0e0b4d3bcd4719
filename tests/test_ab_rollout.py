"""``ab status|promote|rollback`` and the deploy step's create-or-patch, through the Kubernetes Python client.

The API server here is a loopback **stand-in**: a small HTTP server that stores one
InferenceService, answers GET/POST/PATCH on its REST path, applies JSON merge patches (RFC 7386)
with the API server's optimistic-concurrency check on ``metadata.resourceVersion``, and records
every request. It checks what the client sends (paths, content types, patch bodies); it is not
KServe and does not roll revisions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from loopback import JsonHandler, serve

from linkedout.ab import deploy, rollout
from linkedout.cli import main

PATH = "/apis/serving.kserve.io/v1beta1/namespaces/linkedout/inferenceservices"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class StandIn:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.version = 100

    def store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[obj["metadata"]["name"]] = obj
        return obj


@pytest.fixture
def api_server() -> Iterator[tuple[StandIn, str]]:
    state = StandIn()

    class Handler(JsonHandler):
        def _record(self) -> Any:
            body = self.read_json()
            state.requests.append({"method": self.command, "path": self.path,
                                   "content_type": self.headers.get("Content-Type"), "body": body})
            return body

        def _status(self, code: int, reason: str) -> None:
            self.reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                               "code": code})

        def do_GET(self) -> None:
            self._record()
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            if not self.path.startswith(PATH + "/") or name not in state.objects:
                return self._status(404, "NotFound")
            self.reply(200, state.objects[name])

        def do_POST(self) -> None:
            body = self._record()
            if body["metadata"]["name"] in state.objects:
                return self._status(409, "AlreadyExists")
            self.reply(201, state.store(body))

        def do_PATCH(self) -> None:
            body = self._record()
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            if name not in state.objects:
                return self._status(404, "NotFound")
            if self.headers.get("Content-Type") != "application/merge-patch+json":
                return self._status(415, "UnsupportedMediaType")
            current = state.objects[name]
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv is not None and rv != current["metadata"]["resourceVersion"]:
                return self._status(409, "Conflict")
            self.reply(200, state.store(merge_patch(current, body)))

    with serve(Handler) as url:
        yield state, url


def live_isvc(canary: int | None) -> dict[str, Any]:
    obj = deploy.render_inference_service(canary_percent=canary, release="linkedout-v3")
    obj["status"] = {
        "url": "http://linkedout.linkedout.example.com",
        "conditions": [{"type": "Ready", "status": "True"}],
        "components": {"predictor": {
            "latestReadyRevision": "linkedout-predictor-00003", "latestCreatedRevision": "linkedout-predictor-00003",
            "previousRolledoutRevision": "linkedout-predictor-00002",
            "traffic": [{"revisionName": "linkedout-predictor-00003", "percent": canary or 100, "latestRevision": True},
                        {"revisionName": "linkedout-predictor-00002", "percent": 100 - (canary or 100),
                         "latestRevision": False, "tag": "prev"}]}},
    }
    return obj


def test_patches() -> None:
    assert rollout.promote_patch("7") == {"spec": {"predictor": {"canaryTrafficPercent": None}},
                                          "metadata": {"resourceVersion": "7"}}
    assert rollout.rollback_patch("7") == {"spec": {"predictor": {"canaryTrafficPercent": 0}},
                                           "metadata": {"resourceVersion": "7"}}
    assert rollout.rollback_patch(None, "transformer") == {"spec": {"transformer": {"canaryTrafficPercent": 0}}}
    with pytest.raises(ValueError, match="component"):
        rollout.promote_patch("7", "explainer")
    # applied to the object, promote removes the field and rollback pins 0
    isvc = live_isvc(10)
    assert "canaryTrafficPercent" not in merge_patch(isvc, rollout.promote_patch("1"))["spec"]["predictor"]
    assert merge_patch(isvc, rollout.rollback_patch("1"))["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_status_promote_rollback_through_the_client(api_server: tuple[StandIn, str]) -> None:
    state, url = api_server
    state.store(live_isvc(10))
    api = deploy.custom_objects_api(host=url)
    s = rollout.status(api, "linkedout", "linkedout")
    assert s.ready and s.release == "linkedout-v3" and s.storage_uri == "s3://linkedout-models/model_repository"
    p = s.component("predictor")
    assert p.canary_percent == 10 and p.previous_rolled_out == "linkedout-predictor-00002"
    assert [(t.revision, t.percent) for t in p.traffic] == [("linkedout-predictor-00003", 10),
                                                            ("linkedout-predictor-00002", 90)]
    assert "canaryTrafficPercent=10" in rollout.format_status(s)

    after = rollout.rollback(api, "linkedout", "linkedout")
    assert after.component("predictor").canary_percent == 0
    patch = state.requests[-1]
    assert patch["method"] == "PATCH" and patch["path"] == f"{PATH}/linkedout"
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"] == {"spec": {"predictor": {"canaryTrafficPercent": 0}}, "metadata": {"resourceVersion": "101"}}

    after = rollout.promote(api, "linkedout", "linkedout")
    assert after.component("predictor").canary_percent is None
    assert state.requests[-1]["body"]["spec"] == {"predictor": {"canaryTrafficPercent": None}}
    assert "canaryTrafficPercent" not in state.objects["linkedout"]["spec"]["predictor"]
    n = len(state.requests)
    rollout.promote(api, "linkedout", "linkedout")  # no canary left: read, nothing patched
    assert [r["method"] for r in state.requests[n:]] == ["GET"]


def test_a_stale_patch_is_refused_not_applied(api_server: tuple[StandIn, str]) -> None:
    state, url = api_server
    state.store(live_isvc(10))
    api = deploy.custom_objects_api(host=url)
    with pytest.raises(rollout.RolloutError, match="409 Conflict"):
        api_patch = rollout.rollback_patch("1")  # a resourceVersion read long ago
        rollout.apply_patch(api, "linkedout", "linkedout", api_patch, "rollback")
    assert state.objects["linkedout"]["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_missing_service_and_unreachable_api_are_clear_errors(api_server: tuple[StandIn, str]) -> None:
    _, url = api_server
    api = deploy.custom_objects_api(host=url)
    with pytest.raises(ValueError, match="InferenceService linkedout/nope not found"):
        rollout.status(api, "nope", "linkedout")
    dead = deploy.custom_objects_api(host="http://127.0.0.1:9")
    dead.api_client.configuration.retries = 0
    with pytest.raises(rollout.RolloutError, match="cannot reach the Kubernetes API"):
        rollout.status(dead, "linkedout", "linkedout")


def test_apply_creates_then_patches_and_removes_a_finished_canary(api_server: tuple[StandIn, str]) -> None:
    state, url = api_server
    api = deploy.custom_objects_api(host=url)
    canary = deploy.render_inference_service(canary_percent=10, release="linkedout-v4")
    deploy.apply_inference_service(canary, api)
    assert state.requests[-1]["method"] == "POST" and state.requests[-1]["body"] == canary
    full = deploy.render_inference_service(release="linkedout-v4")
    deploy.apply_inference_service(full, api)
    assert [r["method"] for r in state.requests[-2:]] == ["POST", "PATCH"]
    sent = state.requests[-1]["body"]
    assert sent["spec"]["predictor"]["canaryTrafficPercent"] is None  # explicit: the merge patch removes it
    assert "canaryTrafficPercent" not in state.objects["linkedout"]["spec"]["predictor"]
    assert state.objects["linkedout"]["spec"]["predictor"]["annotations"]["linkedout.io/release"] == "linkedout-v4"


def test_cli_status_promote_rollback(api_server: tuple[StandIn, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, url = api_server
    state.store(live_isvc(20))
    assert main(["ab", "status", "--server", url]) == 0
    assert "canaryTrafficPercent=20" in capsys.readouterr().out
    assert main(["ab", "rollback", "--server", url, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"] == {"predictor": {"canaryTrafficPercent": 0}}
    assert state.objects["linkedout"]["spec"]["predictor"]["canaryTrafficPercent"] == 20  # dry run: unchanged
    assert main(["ab", "promote", "--server", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["components"][0]["canary_percent"] is None
    assert main(["ab", "status", "--server", url, "--name", "nope"]) == 2
    assert "not found" in capsys.readouterr().err
