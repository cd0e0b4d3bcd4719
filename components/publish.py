"""After training (:mod:`linkedout.job.publish`, :mod:`linkedout.job.deploy`): compare with the serving model and
decide, export (ONNX, model repository, S3), deploy (an InferenceService canary, or the local stack)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compare_with_serving(workdir: str, features: str, split: str, variant: str, model_name: str, metric: str,
                         s3_endpoint: str, metrics: Output[Metrics], decision: Output[Artifact]) -> bool:
    """Deploy only if the new model is at least as good as the serving one on the validation ``metric``.

    Returns the decision (one output: what ``dsl.If`` tests); ``decision`` holds the record with the reason.
    """
    from linkedout.job.publish import compare

    out = compare(workdir=workdir, features=features, split=split, variant=variant, model_name=model_name,
                  metric=metric, s3_endpoint=s3_endpoint, record=decision.path)
    metrics.log_metric(f"candidate {metric}", out["candidate"])
    if out["serving"] is not None:
        metrics.log_metric(f"serving {metric}", out["serving"])
    decision.metadata["reason"] = out["reason"]
    return bool(out["deploy"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_model(workdir: str, data: str, features: str, split: str, variant: str, model_name: str,
                 upload_uri: str, s3_endpoint: str, decision: Input[Artifact],
                 ) -> NamedTuple("Exported", [("version", int), ("repository", str)]):
    """ONNX encoder and ranker as a new model-repository version (unless already there), uploaded to ``upload_uri``."""
    from collections import namedtuple

    from linkedout.job.publish import export

    out = export(workdir=workdir, data=data, features=features, split=split, variant=variant,
                 model_name=model_name, decision=decision.path, upload_uri=upload_uri, s3_endpoint=s3_endpoint)
    return namedtuple("Exported", ["version", "repository"])(out["version"], out["uploaded_to"] or out["repository"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy(model_name: str, version: int, storage_uri: str, canary_percent: int, namespace: str, name: str, image: str,
           kube_api: str) -> dict:
    """Render the InferenceService with a canary percentage and apply it with the Kubernetes Python client."""
    from linkedout.job.deploy import deploy

    return deploy(model_name=model_name, version=version, storage_uri=storage_uri, canary_percent=canary_percent,
                  namespace=namespace, name=name, image=image, kube_api=kube_api)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def serve_locally(workdir: str, split: str, model_name: str, version: int, k: int, feast_repo: str) -> dict:
    """The local stand-in of ``deploy``: the local stack (Triton, KServe transformer, Feast) answers a gRPC query."""
    from linkedout.job.deploy import serve_locally

    return serve_locally(workdir=workdir, split=split, model_name=model_name, version=version, k=k,
                         feast_repo=feast_repo)
