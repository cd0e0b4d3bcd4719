"""The online half of LinkedOut (docs/serving.md).

Local model serving (the embedded default of DESIGN.md §2):

- :mod:`.triton_env`: the local Triton's own virtual environment (the ``tritonserver`` binary of the
  ``nvidia-pytriton`` wheel, numpy < 2, onnxruntime), created on first use under the cache directory.
- :mod:`.model_config`: ``config.pbtxt`` read and written with Triton's ``ModelConfig`` protobuf.
- :mod:`.triton_repo`: the Python-backend twin of a production model repository, synced version by
  version, every new version validated before Triton can see it.
- :mod:`.triton_model`: the generic Python-backend model (copied as ``model.py`` into every version)
  and the ONNX-against-config checks it shares with the validator and the fallback predictor.
- :mod:`.triton`: ``LocalTriton``, the launcher (explicit model control, readiness, clean stop), and
  ``ModelControl``, the HTTP repository API client that works against Triton and the fallback alike.
- :mod:`.predictor` (imports kserve; run as ``python -m linkedout.serving.predictor``): the KServe
  fallback predictor serving the same repository; :mod:`.local_predictor` launches it.

Nothing here is imported by ``linkedout/__init__``; import the submodule you need.
"""
