"""The local stand-ins that replace a cluster on one machine (``linkedout serve``; docs/serving.md §4).

Production code (the rest of :mod:`linkedout.serving`) never imports this package; it may import
the production modules (the predictor serves through :mod:`linkedout.serving.kserve_server`).

- :mod:`.stack`: ``LocalStack`` (the model server, the transformer process, the repository
  follower), ``StackSettings``, ``StackError``, ``read_stack`` (the running stack's ``stack.json``),
  ``TransformerProcess``.
- :mod:`.model_server`: ``start_model_server`` (local Triton, else the KServe fallback predictor),
  ``LocalPredictor``, ``refresh_served_model`` (a running server picks up new versions).
- :mod:`.control`: what Triton and the predictor share: ``ModelControl`` (the v2 HTTP repository
  API, from any process), ``ServerChild`` (a server child process on loopback ports),
  ``refresh_model`` (the one refresh) and the errors (``ModelServerError``, ``ModelLoadError``,
  ``VersionRejected``).
- :mod:`.triton`: ``LocalTriton`` (the real ``tritonserver`` on loopback, explicit model control).
- :mod:`.triton_env`: Triton's own virtual environment, created on first use under the cache directory.
- :mod:`.triton_repo`: the Python-backend twin of a production repository, new versions validated.
- :mod:`.triton_model`: the Python-backend model (each version's ``model.py``; package data),
  LinkedOut's one onnxruntime runner ``OnnxRunner`` and its checks. Standalone: no linkedout import.
- :mod:`.versions`: Triton's version policy, shared by the twin and the predictor.
- :mod:`.predictor` (imports kserve; ``python -m linkedout.serving.local.predictor``): the KServe
  fallback predictor.
- :mod:`.process`: child processes that die with their parent.

The names the rest of LinkedOut uses are importable from here. Neither kserve nor tritonclient is
imported by them.
"""

from __future__ import annotations

from linkedout.serving.local.model_server import refresh_served_model, start_model_server
from linkedout.serving.local.stack import LocalStack, StackError, StackSettings, read_stack

__all__ = ["LocalStack", "StackError", "StackSettings", "read_stack", "refresh_served_model", "start_model_server"]
