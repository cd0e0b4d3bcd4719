"""The main job, stage by stage: its one definition.

``linkedout run`` runs the ``linkedout`` Kubeflow pipeline (``pipelines/linkedout.py``) through
kfp.local; on a cluster the same pipeline runs on KFP. Each of its tasks is a thin component
(``components/``) over one of the stage functions below, listed here in the order data flows. A
stage function takes plain values (locations as strings, configs as dicts: :mod:`.params`) and
returns a small dict; it decides itself what is reused, from a fingerprint of its inputs stored
beside its outputs (:mod:`linkedout.fingerprint`): equal -> reused, different -> redone (derived
stages) or refused with what differs (``force``: redone).

========================  =======================================  =====================================
stage (module.function)   what it makes                            reused when / refused when
========================  =======================================  =====================================
dataset.validate_dataset  the dataset (generated for a preset)     the same preset; another is refused
extraction.plan_shards    the shard plan; the store reconciled     changed videos re-extracted; another
                          with the dataset                         extraction config or dataset refused
extraction.extract_shards one group of shards (GPU)                complete shards are skipped
extraction.collect_index  index.json, failures.json                --max-failed-share exceeded: stops
feast.training_data       the interactions through Feast's         the split is rebuilt when the data or
                          offline store -> the leave-one-out split the shards change
training.plan_training    every run directory checked first        a run of other inputs is refused
training.train            a trained run (torchrun on GPUs)         finished runs reused, killed resumed
evaluation.evaluate       eval.json (full catalogue)               evaluated again when anything changed
report.report             summary.json, report.html                rewritten when an evaluation changed
publish.compare           the deploy decision (validation metric)  -
publish.export            ONNX encoder + ranker, a new version     not when the newest is this checkpoint
feast.push_to_feast       histories and the version's videos       not when already published
deploy.deploy             the InferenceService canary              -
deploy.serve_locally      the local stack answers a gRPC query     -
========================  =======================================  =====================================

The other modules: :mod:`.step` (the step wrapper: logging, error records for the local runner),
:mod:`.params` (the parameters, each declared once), :mod:`.variants` (the models trained),
:mod:`.split` (the leave-one-out split), :mod:`.catalog` (the live catalogue: ``linkedout catalog
add``, not a stage), :mod:`.defaults` (the embedded default's configs, what ``model_repository/`` holds). The work directory's layout is :class:`linkedout.workdir.Workdir`.

The stage modules are imported by name (:func:`stage`): a task imports only its own stage's
dependencies (Feast alone costs seconds of start-up).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A stage of the main job: its step name (the task's label) and its function, ``linkedout.job.MODULE.FUNCTION``."""

    name: str
    module: str
    function: str

    def load(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(importlib.import_module(f"linkedout.job.{self.module}"), self.function)
        return fn


#: The main job's stages in the order data flows.
STAGES: tuple[Stage, ...] = (
    Stage("validate-dataset", "dataset", "validate_dataset"),
    Stage("plan-shards", "extraction", "plan_shards"),
    Stage("extract-shards", "extraction", "extract_shards"),
    Stage("collect-index", "extraction", "collect_index"),
    Stage("training-data", "feast", "training_data"),
    Stage("plan-training", "training", "plan_training"),
    Stage("train", "training", "train"),
    Stage("evaluate", "evaluation", "evaluate"),
    Stage("report", "report", "report"),
    Stage("compare-with-serving", "publish", "compare"),
    Stage("export", "publish", "export"),
    Stage("push-to-feast", "feast", "push_to_feast"),
    Stage("deploy", "deploy", "deploy"),
    Stage("serve-locally", "deploy", "serve_locally"),
)


def stage(name: str) -> Callable[..., Any]:
    """The function of stage ``name`` (a step name of :data:`STAGES`)."""
    for s in STAGES:
        if s.name == name:
            return s.load()
    raise KeyError(f"no stage {name!r}; the stages are {[s.name for s in STAGES]}")
