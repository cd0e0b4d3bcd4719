"""The online half of LinkedOut (docs/serving.md): the production request path, and its local stand-ins.

The production request path (this package; import the submodule you need):

- :mod:`.transformer`: ``LinkedOutTransformer``, the KServe transformer (``python -m
  linkedout.serving.transformer``; imports kserve): ``preprocess`` reads Feast, ``predict`` calls
  Triton, ``postprocess`` filters and explains.
- :mod:`.engine`: ``RecommendationEngine``, the recommendation logic of those three phases, with no
  server in it.
- :mod:`.request`: request parsing and checks (``parse_request``, ``RequestError``).
- :mod:`.routing`: A/B routing (``Router``, ``RoutingConfig``: salted hash, sticky).
- :mod:`.catalog`: ``ServedCatalogs``, the catalogues of the served ranker versions (videos, retrieval index),
  loaded once and followed as videos are added in place.
- :mod:`.ranker`: ``TritonRanker``, the transformer's Triton client (kserve's gRPC client).
- :mod:`.request_log`: the JSONL request log; :mod:`.metrics`: the Prometheus metrics.
- :mod:`.kserve_server`: ``BoundModelServer``, a ``kserve.ModelServer`` bound to ``--bind_address``.
- :mod:`.client`: ``RecommendClient``, the transformer's gRPC client (``tritonclient``; for the CLI,
  tests and benchmarks, never imported by the transformer process: kserve#3099).

The local stand-ins that replace a cluster on one machine (``linkedout serve``) are
:mod:`linkedout.serving.local`: the Triton launcher and its environment, the Python-backend twin
repository, the KServe fallback predictor, the stack. Production modules never import them.
"""

#: the event loops a server of this package can run on: KServe's ``--event-loop`` choices (``auto``:
#: uvloop where installed; ``kserve_server.event_loop_factory``)
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
