"""Serving the published model: the InferenceService canary on a cluster (:func:`deploy`), or its local
stand-in, the local stack answering one gRPC query (:func:`serve_locally`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from linkedout.ab.deploy import (
    DEFAULT_IMAGE,
    apply_inference_service,
    custom_objects_api,
    render_inference_service,
)
from linkedout.job.split import load_split
from linkedout.job.step import step
from linkedout.serving.client import RecommendClient
from linkedout.serving.client import format_table as format_answers
from linkedout.serving.local import LocalStack, StackSettings
from linkedout.utils import atomic_write_text, get_logger
from linkedout.workdir import Workdir

log = get_logger(__name__)

def serve_and_query(workdir: Path, *, name: str, users: list[str], k: int = 10) -> list[Any]:
    """Start the local stack of ``workdir``, ask it for ``users``' recommendations over gRPC, stop it.

    Returns the answers (``linkedout.serving.client.Recommendation``).
    """
    with LocalStack(StackSettings(workdir=workdir, default_model=name)) as stack:
        client = RecommendClient(stack.info["transformer"]["grpc"], model=name)
        try:
            return client.recommend(users, k, explain=True)
        finally:
            client.close()


@step("deploy")
def deploy(model_name: str, version: int, storage_uri: str, canary_percent: int = 10, namespace: str = "linkedout",
           name: str = "linkedout", image: str = "", kube_api: str = "") -> dict[str, Any]:
    """Render the InferenceService serving ``storage_uri`` as release ``MODEL-vVERSION`` with ``canary_percent`` of
    the traffic and apply it (create, or merge-patch) with the Kubernetes Python client; ``kube_api``: an API
    server URL (``kubectl proxy``), default the pod's service account."""
    if not storage_uri:
        raise ValueError("deploy: model_repository_uri must name where the model repository was uploaded "
                         "(s3://bucket/prefix): KServe's predictor loads it from there")
    isvc = render_inference_service(name=name, namespace=namespace, storage_uri=storage_uri, default_model=model_name,
                                    release=f"{model_name}-v{int(version)}", canary_percent=int(canary_percent),
                                    image=image or DEFAULT_IMAGE)
    applied = apply_inference_service(isvc, custom_objects_api(host=kube_api or None))
    meta = applied.get("metadata") or {}
    print(f"== deployed {model_name} v{version} to InferenceService {namespace}/{name} with {canary_percent} % "
          "of the traffic", flush=True)
    return {"inference_service": f"{namespace}/{name}", "release": f"{model_name}-v{int(version)}",
            "canary_percent": int(canary_percent), "resource_version": meta.get("resourceVersion"),
            "generation": meta.get("generation")}


@step("serve-locally")
def serve_locally(workdir: str, split: str, model_name: str = "linkedout", version: int = 0, k: int = 10,
                feast_repo: str = "") -> dict[str, Any]:
    """The local stand-in of the deploy step: start the local stack of ``W`` (Triton, the KServe transformer,
    Feast) on loopback, ask it for the first test user's top ``k`` over gRPC, stop it; the answer is
    printed and written to ``W/serving/answer.json``."""
    work = Workdir.of(workdir)
    if feast_repo and Path(feast_repo) != work.feast:
        raise ValueError("serve locally: the local stack reads W/feast; leave feast_repo empty")
    user = str(load_split(split).test.user_ids[0])
    print(f"== serving {model_name!r} (version {version}) locally; asking for user {user} over gRPC", flush=True)
    answers = serve_and_query(Path(workdir), name=model_name, users=[user], k=int(k))
    print(format_answers(answers), flush=True)
    record = {"model": model_name, "version": int(version), "user": user, "time": time.time(),
              "answers": [a.to_dict() for a in answers]}
    atomic_write_text(work.answer, json.dumps(record, indent=2))
    first = answers[0]
    return {"user": user, "items": [int(i) for i in first.items], "model_version": first.model_version}
