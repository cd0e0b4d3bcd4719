"""A/B experiments and rollouts: the experiment file, routing config, manifests, canary patches, analysis.

- ``experiment``: the experiment file (:func:`load_experiment`), validated on load: the arms it
  compares (:class:`Arm`: a model version and its share of the traffic), the metric, guardrails and horizon;
- ``routing``: the transformer's routing config written from it, and the reference bucketing rule
  (:func:`assign_arm`);
- ``deploy``: :func:`~linkedout.ab.deploy.render_inference_service` (model version + canary percent
  -> InferenceService) and applying it with the Kubernetes Python client;
- ``rollout``: ``ab status|promote|rollback`` on a live InferenceService;
- ``manifests`` / ``validate``: rendering the kustomize overlays and validating every object offline;
- ``logs`` / ``analysis`` / ``stats`` / ``plot``: ``ab analyze`` (per-arm metric with intervals,
  lift, guardrails, sample-ratio mismatch, an always-valid sequential test, the decision);
- ``simulate``: simulated users against the transformer's gRPC interface.

The transformer process imports nothing here (it reads the routing config with its own
``linkedout.serving.routing``); ``kubernetes``, ``tritonclient`` and ``matplotlib`` are imported
inside the functions that use them.
"""

from linkedout.ab.experiment import Arm, Experiment, Guardrails, load_experiment
from linkedout.ab.routing import assign_arm, routing_config

__all__ = ["Arm", "Experiment", "Guardrails", "assign_arm", "load_experiment", "routing_config"]
