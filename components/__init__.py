"""LinkedOut's Kubeflow Pipelines components: thin, typed wrappers over the main job's stage functions.

Each component calls one stage function of :mod:`linkedout.job` (the module its docstring names; the
list in order is :data:`linkedout.job.STAGES`) and only moves values between it and KFP:
parameters in, a small dict or a ``NamedTuple`` out, ``Output[Metrics]`` logged from what the stage
returned, an ``Output[Model]`` or ``Output[HTML]`` written where KFP says. There is no logic here:
the stages are tested without KFP, and their fingerprints decide what a run reuses (which is why
every task runs with KFP's cache off: see ``pipelines/``).

They are lightweight Python components: KFP embeds each function's source in the compiled
pipeline and runs it in the project's image (``Dockerfile``; the image is set per task by the
pipelines, ``IMAGE`` here is only the default of a component used on its own), where the
``linkedout`` package is installed; ``install_kfp_package=False`` because the image already has
kfp (a dependency of the package), so no task installs anything at start. KFP runs a component's
function body alone, so its imports are inside it.
"""

from components.dataset import validate_dataset
from components.extraction import collect_index, extract_shards, plan_shards
from components.feast import push_to_feast, training_data
from components.publish import compare_with_serving, deploy, export_model, serve_locally
from components.training import evaluate, plan_training, report, train

#: The component of each stage of :data:`linkedout.job.STAGES`, by the stage's name.
BY_STAGE = {
    "validate-dataset": validate_dataset,
    "plan-shards": plan_shards,
    "extract-shards": extract_shards,
    "collect-index": collect_index,
    "training-data": training_data,
    "plan-training": plan_training,
    "train": train,
    "evaluate": evaluate,
    "report": report,
    "compare-with-serving": compare_with_serving,
    "export": export_model,
    "push-to-feast": push_to_feast,
    "deploy": deploy,
    "serve-locally": serve_locally,
}

__all__ = [
    "BY_STAGE",
    "collect_index",
    "compare_with_serving",
    "deploy",
    "evaluate",
    "export_model",
    "extract_shards",
    "plan_shards",
    "plan_training",
    "push_to_feast",
    "report",
    "serve_locally",
    "train",
    "training_data",
    "validate_dataset",
]
