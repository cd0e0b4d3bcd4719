"""Prometheus metrics of the transformer, on the model server's ``/metrics`` endpoint (REST port).

Names and labels are part of the serving contract (docs/serving.md §3); dashboards and the A/B
guardrails read them. Beside them on the same endpoint, KServe times the transformer's three phases
(``request_preprocess_seconds``, ``request_predict_seconds``, ``request_postprocess_seconds``, by
``model_name``): Feast is read in the first (``FEAST_LATENCY``), Triton called in the second
(``TRITON_LATENCY``) and the catalogue's top-K retrieved after it (``RETRIEVAL_LATENCY``). Concurrent requests share those calls (``linkedout.serving.batching``):
``COALESCED`` counts how many requests went in each.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Histogram

__all__ = ["COALESCED", "COLD_START", "ERRORS", "FEAST_LATENCY", "LATENCY", "REQUESTS", "RETRIEVAL_LATENCY",
           "TRITON_LATENCY", "child"]

# 0.5 ms .. 2.5 s: the end-to-end budget is a few ms, outages end at their timeouts
_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5)

REQUESTS = Counter("linkedout_requests_total", "Users served (one per user of a request)", ["variant"])
ERRORS = Counter("linkedout_request_errors_total", "Failed requests by reason", ["variant", "reason"])
LATENCY = Histogram("linkedout_request_latency_seconds", "Whole-request latency in the transformer", ["variant"],
                    buckets=_BUCKETS)
FEAST_LATENCY = Histogram("linkedout_feast_latency_seconds", "Feast online read of user histories",
                          buckets=_BUCKETS)
TRITON_LATENCY = Histogram("linkedout_triton_latency_seconds", "Triton ranker call", ["model"], buckets=_BUCKETS)
RETRIEVAL_LATENCY = Histogram("linkedout_retrieval_latency_seconds",
                              "Top-K retrieval from the catalogue's index (exact or ANN), per coalesced batch",
                              ["model"], buckets=_BUCKETS)
COLD_START = Counter("linkedout_cold_start_total", "Users answered with the cold-start list", ["variant"])
COALESCED = Histogram("linkedout_coalesced_batch_size", "Requests joined into one Feast read or Triton call",
                      ["call"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per label set (``labels`` checks and locks on every call)."""
    return metric.labels(*labels)
