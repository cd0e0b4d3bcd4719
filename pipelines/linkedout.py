"""The ``linkedout`` pipeline: the whole chain, the project's main job.

``validate the dataset -> extraction (plan shards -> ParallelFor(shard groups) on the GPU pool ->
collect the index) -> training data from Feast -> plan training -> ParallelFor(variants): train
(GPU, torchrun) -> evaluate -> report (dsl.Collected; Output[HTML]) -> compare the main model with
the serving one -> dsl.If(at least as good): export + upload, Feast, deploy``: a canary
InferenceService (``deploy_to="kserve"``, the default on a cluster) or the local stack answering a
gRPC query (``"local"``: what ``linkedout run`` does through kfp.local); ``"none"`` stops after
the report. ``python -m pipelines.linkedout`` writes ``pipelines/linkedout.yaml``.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at definition.

from typing import Any

from kfp import dsl

from components.images import Images, images
from pipelines import fragments
from pipelines.fragments import BACKBONE, DEPLOY, EXTRACTION, SERVED_VARIANT, TRAINING, VARIANTS
from pipelines.tasks import GPU_TOLERATIONS, H100_NODE_SELECTOR


def build(img: Images) -> Any:
    """The pipeline with ``img``'s images."""

    @dsl.pipeline(name="linkedout", description="LinkedOut end to end: features of a frozen video LLM, Feast, "
                                                "training and evaluation of the model and its baselines, the "
                                                "report, and a canary deployment of the model if it is at least as "
                                                "good as the serving one")
    def linkedout(
        workdir: str = "/work/linkedout",
        work_pvc: str = "linkedout-work",
        dataset: str = "",
        preset: str = "small",
        features: str = "",
        extraction: dict = EXTRACTION,
        backbone: dict = BACKBONE,
        extract_workers: int = 8,
        extract_gpus: int = 1,
        max_failed_share: float = 0.01,
        retry_failed: bool = False,
        variants: list = VARIANTS,
        model_variant: str = SERVED_VARIANT,
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
    ) -> str:
        p = dict(locals())
        data = fragments.validate(img, p).outputs["data"]
        features_uri = fragments.extraction(img, p, data).outputs["Output"]
        split = fragments.training_data(img, p, data, features_uri).outputs["Output"]
        planned = fragments.plan_training(img, p, data=data, features=features_uri, split=split, variants=variants,
                                          model_variant=model_variant)
        # The loop's tasks take their locations from the loop item, not from the upstream tasks: kfp.local
        # 2.17 replaces every task output given to a ParallelFor with the loop item.
        with dsl.ParallelFor(planned.output, name="variants") as run:
            _, ev = fragments.train_and_evaluate(img, p, data=run.data, features=run.features, split=run.split,
                                                 variant=run.variant)
        rep = fragments.report(img, p, data=data, features=features_uri, split=split,
                               run_dirs=dsl.Collected(ev.outputs["Output"]))
        fragments.publishing(img, p, data=data, features=features_uri, split=split, variant=model_variant, after=rep)
        return rep.outputs["report"]

    return linkedout


#: The images this module's pipeline was built with (pipelines.compile.build reuses it for them).
IMAGES = images()
linkedout = build(IMAGES)

if __name__ == "__main__":
    from pipelines.compile import main

    main("linkedout")
