"""The extraction as a fan-out (:mod:`linkedout.job.extraction`): plan the shards, extract a group of shards
(GPU), collect the index."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_shards(workdir: str, data: str, features: str, extraction: dict, backbone: dict, groups: int, gpus: int,
                retry_failed: bool, force: bool, s3_endpoint: str) -> list:
    """Plan the shards of ``features`` (default ``WORKDIR/features``) into ``groups`` groups; returns one item per
    group (the plan's path and the group number), what the ``ParallelFor`` iterates. ``extraction`` /
    ``backbone``: ``ExtractionConfig`` / ``BackboneConfig`` fields."""
    from linkedout.job.extraction import plan_shards

    out = plan_shards(workdir=workdir, data=data, features=features, extraction=extraction, backbone=backbone,
                      groups=groups, gpus=gpus, retry_failed=retry_failed, force=force, s3_endpoint=s3_endpoint)
    return out["items"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract_shards(plan: str, group: int, gpus: int, accelerator: str, s3_endpoint: str) -> dict:
    """Extract the shards of group ``group`` of the plan that are not complete yet (GPU; retried, a retry resumes).

    ``gpus`` and ``accelerator`` are the task's GPU request (they are inputs so that KFP passes the
    pipeline parameters that set it into the loop).
    """
    from linkedout.job.extraction import extract_shards

    return extract_shards(plan=plan, group=int(group), gpus=gpus, s3_endpoint=s3_endpoint)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def collect_index(results: list, max_failed_share: float, s3_endpoint: str, metrics: Output[Metrics]) -> str:
    """The fan-in: every planned shard complete, ``index.json`` and ``failures.json`` written; returns the store."""
    from linkedout.job.extraction import collect_index

    out = collect_index(results=results, max_failed_share=max_failed_share, s3_endpoint=s3_endpoint)
    for key in ("videos", "failed", "failed_share", "shards", "shards_written", "encoded"):
        metrics.log_metric(key, out[key])
    return out["features"]
