"""Parts shared by the pipelines, added to the pipeline being defined (``p``: its parameters by name)."""

from __future__ import annotations

from typing import Any

from kfp import dsl

import components as c
from components.images import Images
from linkedout.job.extraction import backbone_defaults, extraction_defaults
from linkedout.job.params import DEPLOY, SERVED_VARIANT, training_defaults
from linkedout.job.variants import DEFAULT_VARIANTS
from pipelines.tasks import GPU_EXTRACT, GPU_TRAIN, LIGHT, MEDIUM, on_cpu, on_gpus

#: The pipelines' parameter defaults, from the library's config dataclasses (:mod:`linkedout.job.params`):
#: ``extraction`` / ``backbone`` / ``training`` are every field of ``ExtractionConfig`` / ``BackboneConfig`` /
#: the main job's ``TrainConfig``; the deploy parameters' defaults are ``DeployConfig``'s.
EXTRACTION = extraction_defaults()
BACKBONE = backbone_defaults()
TRAINING = training_defaults()
VARIANTS = list(DEFAULT_VARIANTS)

__all__ = ["BACKBONE", "DEPLOY", "EXTRACTION", "SERVED_VARIANT", "TRAINING", "VARIANTS"]


def validate(img: Images, p: dict[str, Any]) -> Any:
    task = c.validate_dataset(workdir=p["workdir"], dataset=p["dataset"], preset=p["preset"], force=p["force"])
    return on_cpu(task, img, p["work_pvc"], MEDIUM, name="validate the dataset")


def extraction(img: Images, p: dict[str, Any], data: Any) -> Any:
    """plan shards -> ParallelFor(groups): extract shards on the GPU pool (retried) -> collect the index."""
    plan = c.plan_shards(workdir=p["workdir"], data=data, features=p["features"], extraction=p["extraction"],
                         backbone=p["backbone"], groups=p["extract_workers"], gpus=p["extract_gpus"],
                         retry_failed=p["retry_failed"], force=p["force"], s3_endpoint=p["s3_endpoint"])
    on_cpu(plan, img, p["work_pvc"], LIGHT, name="plan shards")
    with dsl.ParallelFor(plan.output, name="shard-groups") as group:
        shard = c.extract_shards(plan=group.plan, group=group.group, gpus=p["extract_gpus"],
                                 accelerator=p["accelerator"], s3_endpoint=p["s3_endpoint"])
        on_gpus(shard, img, p["work_pvc"], accelerator=p["accelerator"], count=p["extract_gpus"],
                node_selector=p["gpu_node_selector"], tolerations=p["gpu_tolerations"], resources=GPU_EXTRACT,
                name="extract shards")
        shard.set_retry(num_retries=3, backoff_duration="10s", backoff_factor=2.0, backoff_max_duration="300s")
    index = c.collect_index(results=dsl.Collected(shard.output),
                            max_failed_share=p["max_failed_share"], s3_endpoint=p["s3_endpoint"])
    return on_cpu(index, img, p["work_pvc"], LIGHT, name="collect the index")


def plan_training(img: Images, p: dict[str, Any], *, data: Any, features: Any, split: Any, variants: Any,
                  model_variant: Any) -> Any:
    task = c.plan_training(workdir=p["workdir"], data=data, features=features, split=split, variants=variants,
                           model_variant=model_variant, training=p["training"], force=p["force"],
                           s3_endpoint=p["s3_endpoint"])
    return on_cpu(task, img, p["work_pvc"], LIGHT, name="plan training")


def training_data(img: Images, p: dict[str, Any], data: Any, features: Any) -> Any:
    task = c.training_data(workdir=p["workdir"], data=data, features=features, feast_repo=p["feast_repo"],
                           force=p["force"], s3_endpoint=p["s3_endpoint"])
    return on_cpu(task, img, p["work_pvc"], MEDIUM, name="training data from Feast")


def train_and_evaluate(img: Images, p: dict[str, Any], *, data: Any, features: Any, split: Any,
                       variant: Any) -> tuple[Any, Any]:
    """train (GPU, torchrun over the node's GPUs, retried) -> evaluate (Output[Metrics])."""
    model = c.train(workdir=p["workdir"], data=data, features=features, split=split, variant=variant,
                    training=p["training"], gpus=p["train_gpus"], accelerator=p["accelerator"], force=p["force"],
                    s3_endpoint=p["s3_endpoint"])
    on_gpus(model, img, p["work_pvc"], accelerator=p["accelerator"], count=p["train_gpus"],
            node_selector=p["gpu_node_selector"], tolerations=p["gpu_tolerations"], resources=GPU_TRAIN,
            name="train", shm="64Gi")
    model.set_retry(num_retries=2, backoff_duration="10s", backoff_factor=2.0, backoff_max_duration="300s")
    ev = c.evaluate(workdir=p["workdir"], data=data, features=features, split=split, variant=variant,
                    s3_endpoint=p["s3_endpoint"], model=model.outputs["model"])
    on_cpu(ev, img, p["work_pvc"], MEDIUM, name="evaluate")
    return model, ev


def report(img: Images, p: dict[str, Any], *, data: Any, features: Any, split: Any, run_dirs: Any) -> Any:
    task = c.report(workdir=p["workdir"], data=data, features=features, split=split, run_dirs=run_dirs,
                    s3_endpoint=p["s3_endpoint"])
    return on_cpu(task, img, p["work_pvc"], MEDIUM, name="report")


def publishing(img: Images, p: dict[str, Any], *, data: Any, features: Any, split: Any, variant: Any,
               after: Any) -> None:
    """compare with the serving model -> dsl.If(at least as good): export + upload, Feast, then deploy:
    an InferenceService canary (``deploy_to == "kserve"``) or the local stack answering a query (``"local"``).
    Nothing of this runs with ``deploy_to == "none"``."""
    with dsl.If(p["deploy_to"] != "none", name="publish"):
        decision = c.compare_with_serving(workdir=p["workdir"], features=features, split=split, variant=variant,
                                          model_name=p["model_name"], metric=p["metric"],
                                          s3_endpoint=p["s3_endpoint"]).after(after)
        on_cpu(decision, img, p["work_pvc"], MEDIUM, name="compare with the serving model")
        with dsl.If(decision.outputs["Output"] == True, name="at-least-as-good"):  # noqa: E712 (a KFP condition)
            exported = c.export_model(workdir=p["workdir"], data=data, features=features, split=split,
                                      variant=variant, model_name=p["model_name"],
                                      decision=decision.outputs["decision"],
                                      upload_uri=p["model_repository_uri"], s3_endpoint=p["s3_endpoint"])
            on_cpu(exported, img, p["work_pvc"], MEDIUM, name="export ONNX and the model repository")
            # not retried: the export is deterministic, and its upload's transient S3 errors are retried by
            # boto3 inside the step; missing credentials are a configuration error, which a retry cannot mend
            version = exported.outputs["version"]
            feast = c.push_to_feast(workdir=p["workdir"], data=data, model_name=p["model_name"], version=version,
                                    feast_repo=p["feast_repo"])
            on_cpu(feast, img, p["work_pvc"], MEDIUM, name="push to Feast", redis=True)
            with dsl.If(p["deploy_to"] == "kserve", name="on-kserve"):
                rollout = c.deploy(model_name=p["model_name"], version=version, storage_uri=p["model_repository_uri"],
                                   canary_percent=p["canary_percent"], namespace=p["namespace"],
                                   name=p["inference_service"], image=img.cpu, kube_api=p["kube_api"]).after(feast)
                on_cpu(rollout, img, p["work_pvc"], LIGHT, name="deploy (canary)")
                rollout.set_retry(num_retries=2, backoff_duration="10s", backoff_factor=2.0)
            with dsl.Elif(p["deploy_to"] == "local", name="on-the-local-stack"):
                serve = c.serve_locally(workdir=p["workdir"], split=split, model_name=p["model_name"],
                                        version=version, k=p["query_k"], feast_repo=p["feast_repo"]).after(feast)
                on_cpu(serve, img, p["work_pvc"], MEDIUM, name="serve locally and query")
