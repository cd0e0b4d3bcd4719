"""The extraction as a fan-out: plan the shards, extract a group of shards (GPU), collect the index."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_shards(workdir: str, data: str, features: str, layers: list, prompts: list, frames: int, frame_size: int,
                tokens: int, text_tokens: int, dtype: str, frame_sampling: str, batch_size: int, shard_size: int,
                decode_workers: int, backbone: str, backbone_dtype: str, backbone_seed: int, backbone_options: dict,
                groups: int, gpus: int, retry_failed: bool, force: bool, s3_endpoint: str) -> list:
    """Plan the shards of the feature store (``features``, default ``WORKDIR/features``) into ``groups`` groups;
    returns one item per group (the plan's path and the group number), what the ``ParallelFor`` iterates."""
    from linkedout import steps

    out = steps.plan_shards(workdir=workdir, data=data, features=features, layers=layers, prompts=prompts,
                            frames=frames, frame_size=frame_size, tokens=tokens, text_tokens=text_tokens, dtype=dtype,
                            frame_sampling=frame_sampling, batch_size=batch_size, shard_size=shard_size,
                            decode_workers=decode_workers, backbone=backbone, backbone_dtype=backbone_dtype,
                            backbone_seed=backbone_seed, backbone_options=backbone_options, groups=groups, gpus=gpus,
                            retry_failed=retry_failed, force=force, s3_endpoint=s3_endpoint)
    return out["items"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract_shards(plan: str, group: int, gpus: int, accelerator: str, s3_endpoint: str) -> dict:
    """Extract the shards of group ``group`` of the plan that are not complete yet (GPU; retried, a retry resumes).

    ``gpus`` and ``accelerator`` are the task's GPU request (they are inputs so that KFP passes the
    pipeline parameters that set it into the loop).
    """
    from linkedout import steps

    return steps.extract_shards(plan=plan, group=int(group), gpus=gpus, s3_endpoint=s3_endpoint)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def collect_index(results: list, max_failed_share: float, s3_endpoint: str, metrics: Output[Metrics]) -> str:
    """The fan-in: every planned shard complete, ``index.json`` and ``failures.json`` written; returns the store."""
    from linkedout import steps

    out = steps.collect_index(results=results, max_failed_share=max_failed_share, s3_endpoint=s3_endpoint)
    for key in ("videos", "failed", "failed_share", "shards", "shards_written", "encoded"):
        metrics.log_metric(key, out[key])
    return out["features"]
