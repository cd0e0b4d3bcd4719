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

from components.images import Images, images
from pipelines import fragments
from pipelines.fragments import DEPLOY, SERVED_VARIANT, TRAINING
from pipelines.tasks import GPU_TOLERATIONS, H100_NODE_SELECTOR


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
        model_name: str = DEPLOY.model_name,
        training: dict = TRAINING,
        train_gpus: int = 8,
        accelerator: str = "nvidia.com/gpu",
        gpu_node_selector: dict = H100_NODE_SELECTOR,
        gpu_tolerations: list = GPU_TOLERATIONS,
        metric: str = DEPLOY.metric,
        deploy_to: str = DEPLOY.deploy_to,
        canary_percent: int = DEPLOY.canary_percent,
        model_repository_uri: str = DEPLOY.model_repository_uri,
        namespace: str = DEPLOY.namespace,
        inference_service: str = DEPLOY.inference_service,
        kube_api: str = DEPLOY.kube_api,
        feast_repo: str = DEPLOY.feast_repo,
        query_k: int = DEPLOY.query_k,
        s3_endpoint: str = "",
        force: bool = False,
    ) -> None:
        p = dict(locals(), preset="")
        data = fragments.validate(img, p).outputs["data"]
        features_uri = features  # an extracted feature store (a directory or s3://), e.g. the extract pipeline's
        split = fragments.training_data(img, p, data, features_uri).outputs["Output"]
        planned = fragments.plan_training(img, p, data=data, features=features_uri, split=split, variants=[variant],
                                          model_variant=variant)
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
