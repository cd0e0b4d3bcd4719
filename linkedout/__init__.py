"""LinkedOut: video recommendation from the hidden states of a frozen video LLM (arXiv 2512.16891).

The library's rooms, in the order data flows (a room imports only the ones before it; the map with
one line per module is docs/architecture.md):

``data`` (MicroLens layout, preprocessing, the leave-one-out split, synthetic data) ->
``shards`` (feature shards ``[L, K, D]`` on a directory or S3) -> ``extraction`` (video decoding,
the frozen LLaVA-OneVision backbone, prompt-driven prefill, token compression) -> ``model`` (the
Cross-layer Knowledge-Fusion MoE, the sequence recommender, baselines) -> ``evaluation`` ->
``training`` -> ``interpret`` (gate weights, the HTML report) -> ``export`` (ONNX, the Triton model
repository, the catalog) -> ``featurestore`` (Feast) -> ``serving`` (the KServe transformer;
``serving.local``: the local stand-ins of a cluster) -> ``ab`` (rollouts and experiments) ->
``job`` (the main job's stages, in order) -> ``cli``.

``utils``, ``fingerprint`` and ``workdir`` sit below them all. Only ``serving`` imports kserve,
only the rollout code and the deploy stage import kubernetes, only ``featurestore`` imports Feast;
kfp is imported by ``components/`` and ``pipelines/`` alone (tests/test_architecture.py checks it).
"""

__version__ = "0.1.0"
