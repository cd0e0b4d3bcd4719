"""A/B experiments and rollouts: the experiment file, routing config, manifests, canary patches, analysis.

- ``experiment``: the experiment file (:func:`load_experiment`), validated on load;
- ``routing``: the transformer's routing config written from it, and the reference bucketing rule;
- ``deploy``: :func:`~linkedout.ab.deploy.render_inference_service` (model version + canary percent
  -> InferenceService) and applying it with the Kubernetes Python client;
- ``rollout``: ``ab status|promote|rollback`` on a live InferenceService;
- ``manifests`` / ``validate``: rendering the kustomize overlays and validating every object offline;
- ``logs`` / ``analysis`` / ``stats`` / ``plot``: ``ab analyze`` (per-variant metric with intervals,
  lift, guardrails, sample-ratio mismatch, an always-valid sequential test, the decision);
- ``simulate``: simulated users against the transformer's gRPC interface.

Nothing here is imported by the transformer process except ``experiment`` and ``routing`` (pure
Python + PyYAML); ``kubernetes`` and ``tritonclient`` are imported inside the functions that use them.
"""

from linkedout.ab.experiment import Experiment, Guardrails, Variant, load_experiment
from linkedout.ab.routing import assign_variant, routing_config

__all__ = ["Experiment", "Guardrails", "Variant", "assign_variant", "load_experiment", "routing_config"]
