"""Feast (:mod:`linkedout.job.feast`): the training data read from its offline store; histories and a model
version's videos written to it."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def training_data(workdir: str, data: str, features: str, feast_repo: str, force: bool, s3_endpoint: str,
                  metrics: Output[Metrics]) -> str:
    """The dataset's interactions through Feast's offline store -> the leave-one-out split; returns its directory."""
    from linkedout.job.feast import training_data

    out = training_data(workdir=workdir, data=data, features=features, feast_repo=feast_repo, force=force,
                        s3_endpoint=s3_endpoint)
    for key in ("users", "videos", "interactions"):
        metrics.log_metric(key, out[key])
    return out["split"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def push_to_feast(workdir: str, data: str, model_name: str, version: int, feast_repo: str) -> dict:
    """Users' histories and the version's video embeddings and metadata into Feast."""
    from linkedout.job.feast import push_to_feast

    return push_to_feast(workdir=workdir, data=data, model_name=model_name, version=version, feast_repo=feast_repo)
