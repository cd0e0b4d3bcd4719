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
from pipelines.fragments import DEFAULT_LAYERS
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
        backbone: str = "tiny",
        backbone_dtype: str = "auto",
        backbone_seed: int = 0,
        backbone_options: dict = {},  # noqa: B006 (KFP parameter defaults)
        layers: list = DEFAULT_LAYERS,
        prompts: list = [],  # noqa: B006
        frames: int = 8,
        frame_size: int = 224,
        tokens: int = 64,
        text_tokens: int = 8,
        dtype: str = "float16",
        frame_sampling: str = "exact",
        extract_batch_size: int = 4,
        shard_size: int = 64,
        decode_workers: int = 2,
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
