"""LinkedOut: video recommendation from the hidden states of a frozen video LLM.

The library is split by the parts of DESIGN.md: ``data`` (MicroLens layout, preprocessing, synthetic
data), ``extraction`` (video decoding, the frozen LLaVA-OneVision backbone, token compression),
``features`` (feature shards in a local directory or S3), ``model`` (Cross-layer Knowledge-Fusion MoE,
sequence recommender, baselines), ``training``, ``evaluation`` and ``interpret`` (gate heatmaps and
the HTML report). Nothing here imports Kubernetes, KFP or server code.
"""

__version__ = "0.1.0"
