"""The ``train_and_deploy`` pipeline: one model trained on a feature store, deployed only if it is at least as good.

``validate the dataset -> training data from Feast -> plan -> train (GPU, torchrun) -> evaluate
(Output[Metrics]) -> report (Output[HTML]) -> compare with the serving model -> dsl.If(at least as
good on the validation metric): export ONNX + model repository (uploaded to S3) -> Feast -> deploy
the InferenceService as a canary``. ``python -m pipelines.train_and_deploy`` writes
``pipelines/train_and_deploy.yaml``.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at definition.

from typing import Any

from kfp import dsl

import components as c
from components.images import Images, images
from pipelines import fragments
from pipelines.fragments import SERVED_VARIANT
from pipelines.tasks import GPU_TOLERATIONS, H100_NODE_SELECTOR, LIGHT, on_cpu


def build(img: Images) -> Any:
    """The pipeline with ``img``'s images."""

    @dsl.pipeline(name="train-and-deploy", description="LinkedOut: train one model on extracted features, evaluate "
                                                       "it, and deploy it as a canary if it is at least as good as "
                                                       "the serving one")
    def train_and_deploy(
        dataset: str,
        features: str,
        workdir: str = "/work/linkedout",
        work_pvc: str = "linkedout-work",
        variant: str = SERVED_VARIANT,
        model_name: str = "linkedout",
        epochs: int = 100,
        seed: int = 42,
        train_gpus: int = 8,
        accelerator: str = "nvidia.com/gpu",
        gpu_node_selector: dict = H100_NODE_SELECTOR,
        gpu_tolerations: list = GPU_TOLERATIONS,
        metric: str = "NDCG@10",
        deploy_to: str = "kserve",
        canary_percent: int = 10,
        model_repository_uri: str = "s3://linkedout-models/model_repository",
        namespace: str = "linkedout",
        inference_service: str = "linkedout",
        kube_api: str = "",
        feast_repo: str = "",
        query_k: int = 10,
        s3_endpoint: str = "",
        force: bool = False,
    ) -> None:
        p = dict(locals(), preset="")
        data = fragments.validate(img, p).outputs["data"]
        features_uri = features  # an extracted feature store (a directory or s3://), e.g. the extract pipeline's
        split = fragments.training_data(img, p, data, features_uri).outputs["Output"]
        planned = on_cpu(c.plan_training(workdir=workdir, data=data, features=features_uri, split=split,
                                         variants=[variant], model_variant=variant, seed=seed, epochs=epochs,
                                         force=force, s3_endpoint=s3_endpoint), img, work_pvc, LIGHT,
                         name="plan training")
        model, ev = fragments.train_and_evaluate(img, p, data=data, features=features_uri, split=split, variant=variant)
        model.after(planned)
        rep = fragments.report(img, p, data=data, features=features_uri, split=split,
                               run_dirs=[ev.outputs["Output"]])
        fragments.publishing(img, p, data=data, features=features_uri, split=split, variant=variant, after=rep)

    return train_and_deploy


#: The images this module's pipeline was built with (pipelines.compile.build reuses it for them).
IMAGES = images()
train_and_deploy = build(IMAGES)

if __name__ == "__main__":
    from pipelines.compile import main

    main("train_and_deploy")
