"""LinkedOut's Kubeflow Pipelines components: thin, typed wrappers over :mod:`linkedout.steps`.

Each component calls one step function and only moves values between it and KFP: parameters in,
a small dict or a ``NamedTuple`` out, ``Output[Metrics]`` logged from what the step returned, an
``Output[Model]`` or ``Output[HTML]`` written where KFP says. There is no logic here: the steps
are tested without KFP, and the fingerprints of the stage functions they call decide what a run
reuses (which is why every task runs with KFP's cache off: see ``pipelines/``).

They are lightweight Python components: KFP embeds each function's source in the compiled
pipeline and runs it in the project's image (``Dockerfile``; the image is set per task by the
pipelines, ``IMAGE`` here is only the default of a component used on its own), where the
``linkedout`` package is installed; ``install_kfp_package=False`` because the image already has
kfp (a dependency of the package), so no task installs anything at start.
"""

from components.data import validate_dataset
from components.extraction import collect_index, extract_shards, plan_shards
from components.publish import compare_with_serving, deploy, export_model, push_to_feast, serve_locally
from components.training import evaluate, plan_training, report, train, training_data

__all__ = [
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
