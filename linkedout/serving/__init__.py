"""The online half of LinkedOut (docs/serving.md): model serving, and (to come) the KServe transformer.

Local model serving, the embedded default of DESIGN.md §2 (import the submodule you need):

- :mod:`.local_server`: ``start_model_server`` (local Triton, else the KServe fallback predictor),
  ``LocalPredictor``, ``refresh_served_model`` (a running server picks up new versions).
- :mod:`.triton`: ``LocalTriton`` (the real ``tritonserver`` on loopback, explicit model control) and
  ``ModelControl`` (the v2 HTTP repository API, for Triton and the predictor alike).
- :mod:`.triton_env`: Triton's own virtual environment, created on first use under the cache directory.
- :mod:`.triton_repo`: the Python-backend twin of a production repository, new versions validated.
- :mod:`.triton_model`: the generic Python-backend model (each version's ``model.py``) and its checks.
- :mod:`.model_config`: ``config.pbtxt`` through Triton's ``ModelConfig`` protobuf.
- :mod:`.predictor` (imports kserve; ``python -m linkedout.serving.predictor``), :mod:`.kserve_server`
  (a ``kserve.ModelServer`` bound to ``--bind_address``).
- :mod:`.process` (child processes that die with their parent), :mod:`.toy` (toy ONNX models).
"""
