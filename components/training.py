"""Training (:mod:`linkedout.job.training`): the plan, training (GPU, torchrun); evaluation
(:mod:`linkedout.job.evaluation`) and the report (:mod:`linkedout.job.report`)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Model, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_training(workdir: str, data: str, features: str, split: str, variants: list, model_variant: str,
                  training: dict, force: bool, s3_endpoint: str) -> list:
    """Check every variant's run directory before training starts; returns one item per variant to train
    (``{"variant", "data", "features", "split"}``), what the ``ParallelFor`` iterates. ``training``:
    ``TrainConfig`` fields over the main job's schedule."""
    from linkedout.job.training import plan_training

    return plan_training(workdir=workdir, data=data, features=features, split=split, variants=variants,
                         model_variant=model_variant, training=training, force=force, s3_endpoint=s3_endpoint)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(workdir: str, data: str, features: str, split: str, variant: str, training: dict, gpus: int,
          accelerator: str, force: bool, s3_endpoint: str, model: Output[Model]) -> str:
    """Train one variant on the task's GPUs (torchrun); the best checkpoint is the ``Output[Model]``.

    ``accelerator`` is the task's GPU type (an input so that KFP passes it into the loop).
    """
    from linkedout.job.training import train

    out = train(workdir=workdir, data=data, features=features, split=split, variant=variant, model_dir=model.path,
                training=training, gpus=gpus, force=force, s3_endpoint=s3_endpoint)
    model.metadata.update({k: v for k, v in out.items() if v is not None})
    model.metadata["framework"] = "pytorch"
    return out["run_dir"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(workdir: str, data: str, features: str, split: str, variant: str, s3_endpoint: str, model: Input[Model],
             metrics: Output[Metrics]) -> str:
    """Full-catalogue test metrics of the trained model (HR/NDCG@k, warm and cold); returns its run directory."""
    import os

    from linkedout.job.evaluation import evaluate

    checkpoint = os.path.join(model.path, model.metadata.get("checkpoint", "best.pt"))
    out = evaluate(workdir=workdir, data=data, features=features, split=split, variant=variant,
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

    from linkedout.job.report import report

    out = report(workdir=workdir, data=data, features=features, split=split, run_dirs=run_dirs,
                 html=html.path, s3_endpoint=s3_endpoint)
    for row in out["rows"]:
        for key in ("HR@10", "NDCG@10"):
            value = (row.get("overall") or {}).get(key)
            if isinstance(value, (int, float)):
                metrics.log_metric(f"{row['model']} {key}", value)
    return namedtuple("Report", ["report"])(out["report"])
