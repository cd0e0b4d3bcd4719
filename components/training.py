"""Training data from Feast, the training plan, training (GPU, torchrun), evaluation, the report."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Model, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def training_data(workdir: str, data: str, features: str, feast_repo: str, force: bool, s3_endpoint: str,
                  metrics: Output[Metrics]) -> str:
    """The dataset's interactions through Feast's offline store -> the leave-one-out split; returns its directory."""
    from linkedout import steps

    out = steps.training_data(workdir=workdir, data=data, features=features, feast_repo=feast_repo, force=force,
                              s3_endpoint=s3_endpoint)
    for key in ("users", "videos", "interactions"):
        metrics.log_metric(key, out[key])
    return out["split"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_training(workdir: str, data: str, features: str, split: str, variants: list, model_variant: str, seed: int,
                  epochs: int, force: bool, s3_endpoint: str) -> list:
    """Check every variant's run directory before training starts; returns one item per variant to train
    (``{"variant", "data", "features", "split"}``), what the ``ParallelFor`` iterates."""
    from linkedout import steps

    return steps.plan_training(workdir=workdir, data=data, features=features, split=split, variants=variants,
                               model_variant=model_variant, seed=seed, epochs=epochs, force=force,
                               s3_endpoint=s3_endpoint)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(workdir: str, data: str, features: str, split: str, variant: str, seed: int, epochs: int, gpus: int,
          accelerator: str, force: bool, s3_endpoint: str, model: Output[Model]) -> str:
    """Train one variant on all GPUs of the node (torchrun); the best checkpoint is the ``Output[Model]``.

    ``accelerator`` is the task's GPU type (an input so that KFP passes it into the loop).
    """
    from linkedout import steps

    out = steps.train(workdir=workdir, data=data, features=features, split=split, variant=variant,
                      model_dir=model.path, seed=seed, epochs=epochs, gpus=gpus, force=force, s3_endpoint=s3_endpoint)
    model.metadata.update({k: v for k, v in out.items() if v is not None})
    model.metadata["framework"] = "pytorch"
    return out["run_dir"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(workdir: str, data: str, features: str, split: str, variant: str, s3_endpoint: str, model: Input[Model],
             metrics: Output[Metrics]) -> str:
    """Full-catalogue test metrics of the trained model (HR/NDCG@k, warm and cold); returns its run directory."""
    import os

    from linkedout import steps

    checkpoint = os.path.join(model.path, model.metadata.get("checkpoint", "best.pt"))
    out = steps.evaluate(workdir=workdir, data=data, features=features, split=split, variant=variant,
                         checkpoint=checkpoint, s3_endpoint=s3_endpoint)
    for key, value in out["metrics"].items():
        metrics.log_metric(key, value)
    metrics.metadata["model"] = out["model"]
    return out["run_dir"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(workdir: str, data: str, features: str, split: str, run_dirs: list, s3_endpoint: str,
           html: Output[HTML], metrics: Output[Metrics]) -> NamedTuple("Report", [("report", str)]):
    """The HTML report (metrics table, training curves, gate heatmaps) of the runs, and their test HR/NDCG@10."""
    from collections import namedtuple

    from linkedout import steps

    out = steps.report(workdir=workdir, data=data, features=features, split=split, run_dirs=run_dirs,
                       html=html.path, s3_endpoint=s3_endpoint)
    for row in out["rows"]:
        for key in ("HR@10", "NDCG@10"):
            value = (row.get("overall") or {}).get(key)
            if isinstance(value, (int, float)):
                metrics.log_metric(f"{row['model']} {key}", value)
    return namedtuple("Report", ["report"])(out["report"])
