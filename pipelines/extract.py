"""The ``extract`` pipeline: a dataset's videos -> LinkedOut features, shard groups in parallel on the GPU pool.

``validate the dataset -> plan shards -> ParallelFor(shard groups): extract shards (GPU, retried)
-> collect the index (dsl.Collected)``. A re-run skips complete shards; a store of another
extraction config or dataset is refused unless ``force``. ``python -m pipelines.extract`` writes
``pipelines/extract.yaml``.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's types at definition.

from typing import Any

from kfp import dsl

from components.images import Images, images
from pipelines import fragments
from pipelines.fragments import BACKBONE, EXTRACTION
from pipelines.tasks import GPU_TOLERATIONS, H100_NODE_SELECTOR


def build(img: Images) -> Any:
    """The pipeline with ``img``'s images."""

    @dsl.pipeline(name="extract", description="LinkedOut feature extraction: a frozen video LLM's hidden states of "
                                              "every video, in shards, on the GPU pool")
    def extract(
        workdir: str = "/work/linkedout",
        work_pvc: str = "linkedout-work",
        dataset: str = "",
        preset: str = "small",
        features: str = "",
        extraction: dict = EXTRACTION,
        backbone: dict = BACKBONE,
        extract_workers: int = 8,
        extract_gpus: int = 1,
        accelerator: str = "nvidia.com/gpu",
        gpu_node_selector: dict = H100_NODE_SELECTOR,
        gpu_tolerations: list = GPU_TOLERATIONS,
        max_failed_share: float = 0.01,
        retry_failed: bool = False,
        force: bool = False,
        s3_endpoint: str = "",
    ) -> str:
        p = dict(locals())
        data = fragments.validate(img, p)
        return fragments.extraction(img, p, data.outputs["data"]).outputs["Output"]

    return extract


#: The images this module's pipeline was built with (pipelines.compile.build reuses it for them).
IMAGES = images()
extract = build(IMAGES)

if __name__ == "__main__":
    from pipelines.compile import main

    main("extract")
