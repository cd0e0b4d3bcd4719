"""Interpretability and reporting: per-video layer gate weights and contributions, the HTML report.

- ``contributions``: which backbone layers a video's embedding is made of (gate weights and actual
  contributions);
- ``runs``: the run files a report reads (``metrics.jsonl``, ``eval.json``, ``config.json``);
- ``report``: the self-contained HTML page, with its ``figures`` and ``setup_tables``.
"""

from linkedout.interpret.contributions import (
    Contributions,
    contributions_from_arrays,
    default_layer_names,
    layer_contributions,
)
from linkedout.interpret.report import write_report
from linkedout.interpret.runs import (
    EVAL_SCHEMA,
    RunRecord,
    count_parameters,
    eval_record,
    load_run,
    read_metrics_jsonl,
    write_eval_json,
)

__all__ = [
    "EVAL_SCHEMA",
    "Contributions",
    "RunRecord",
    "contributions_from_arrays",
    "count_parameters",
    "default_layer_names",
    "eval_record",
    "layer_contributions",
    "load_run",
    "read_metrics_jsonl",
    "write_eval_json",
    "write_report",
]
