"""LinkedOut's Kubeflow pipelines, and the local runner of the main job.

- :mod:`pipelines.extract`: the feature extraction, a ``ParallelFor`` over shard groups on the GPU
  pool and a fan-in (``dsl.Collected``);
- :mod:`pipelines.train_and_deploy`: training data from Feast -> train -> evaluate -> report ->
  compare with the serving model -> (``dsl.If`` at least as good) export, Feast, canary deploy;
- :mod:`pipelines.linkedout`: the whole chain (the main job): extraction, every variant trained
  and evaluated (a ``ParallelFor``), the report, and the publishing of the main model.

Each module compiles itself (``python -m pipelines.linkedout``; the YAML beside it is in git and
a test compiles again and compares). :mod:`pipelines.local` runs a pipeline through
``kfp.local`` (what ``linkedout run`` does); :mod:`pipelines.submit` sends one to a KFP API server
(what ``linkedout pipeline submit`` does). Only this package and ``components/`` import kfp.
"""

PIPELINES = ("extract", "train_and_deploy", "linkedout")
