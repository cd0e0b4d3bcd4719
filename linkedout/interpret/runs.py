"""The run files a report is built from: ``metrics.jsonl``, ``eval.json``, ``config.json``.

A run directory (written by the trainer and the evaluator) holds:

``metrics.jsonl``
    One JSON object per line, written by the trainer::

        {"kind": "step" | "epoch", "epoch": int, "step": int, "loss": float,
         "lr": {group: float}, "seq_per_s": float, "eta_s": float,
         "valid": {metric: float}, "time": float}

    ``valid`` (epoch lines) holds the overall full-catalogue validation metrics
    (:meth:`EvalResult.summary`, keys ``HR@10``, ``NDCG@10``, ...).

``eval.json`` (schema version 1; :func:`write_eval_json`)
    The :meth:`~linkedout.evaluation.EvalResult.to_dict` of the test-set evaluation plus who was
    evaluated::

        {
          "schema": 1,
          "model": str,            # display name: "LinkedOut", "SASRec (IDs)", "uniform gate", ...
          "params": int,           # trainable parameters
          "seed": int,             # training seed
          "group": str,            # optional: "model" | "baseline" | "ablation" (table sections)
          "full": {                # full-catalogue protocol, history masked
            "overall": {"HR@5": float, "HR@10": ..., "HR@20": ..., "NDCG@5": ..., "NDCG@10": ...,
                        "NDCG@20": ..., "MRR": float},
            "warm": {...same keys...},  # users whose target occurs in training
            "cold": {...same keys...},  # users whose target never occurs in training
            "n_users": {"overall": int, "warm": int, "cold": int}
          },
          "sampled": {... same as "full" ..., "num_negatives": int, "seed": int} | null,
          "settings": {"ks": [5, 10, 20], "mask_history": bool, "ties": str, ...},
          ...                      # any further keys given as ``extra`` are kept
        }

    A metric over zero users is ``null``.

``config.json`` (optional)
    The run's configuration, shown in the report's summary section when present.

:func:`load_run` reads these into a :class:`RunRecord`, which ``linkedout.interpret.report``
renders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from linkedout.evaluation.evaluate import EvalResult
from linkedout.utils import atomic_write_text, get_logger

log = get_logger(__name__)

EVAL_SCHEMA = 1

__all__ = [
    "EVAL_SCHEMA",
    "RunRecord",
    "count_parameters",
    "eval_record",
    "load_run",
    "read_metrics_jsonl",
    "write_eval_json",
]


@dataclass
class RunRecord:
    """What :func:`load_run` found in a run directory.

    Attributes:
        name: the model's display name (``eval.json``'s ``model``, else the directory name).
        run_dir: the directory.
        eval: the ``eval.json`` record, or None when the run has not been evaluated.
        logs: the ``metrics.jsonl`` records in file order (empty when absent).
        config: ``config.json``, or None.
    """

    name: str
    run_dir: Path
    eval: dict[str, Any] | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def eval_record(
    result: EvalResult | Mapping[str, Any],
    *,
    model: str,
    params: int,
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``eval.json`` record (schema in the module docstring) of an evaluation result."""
    if not model:
        raise ValueError("eval_record model must be a non-empty name")
    body = result.to_dict() if isinstance(result, EvalResult) else dict(result)
    if "full" not in body:
        raise ValueError("eval_record result must hold a 'full' protocol")
    record: dict[str, Any] = {"schema": EVAL_SCHEMA, "model": model, "params": int(params), "seed": int(seed)}
    record.update(body)
    if extra:
        clash = set(extra) & set(record)
        if clash:
            raise ValueError(f"eval_record extra keys clash with the schema: {sorted(clash)}")
        record.update(extra)
    return record


def write_eval_json(
    path: str | Path,
    result: EvalResult | Mapping[str, Any],
    *,
    model: str,
    params: int,
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``eval.json`` atomically (strict JSON: no NaN) and return its path."""
    path = Path(path)
    record = eval_record(result, model=model, params=params, seed=seed, extra=extra)
    atomic_write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a trainer's ``metrics.jsonl``.

    Blank lines are skipped; a torn last line (a run still writing) is dropped with a warning; any
    other line that is not a JSON object raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines):
                log.warning("%s:%d: dropping an incomplete last line", path, i)
                break
            raise ValueError(f"{path}:{i}: not valid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    return records


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``metrics.jsonl``, ``eval.json`` and ``config.json`` (each optional) from a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    logs = read_metrics_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    ev: dict[str, Any] | None = None
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        ev = _read_json_object(eval_path)
        if "full" not in ev or not isinstance(ev["full"], dict):
            raise ValueError(f"{eval_path}: missing the 'full' protocol (see linkedout.interpret.runs)")
        schema = ev.get("schema", EVAL_SCHEMA)
        if schema != EVAL_SCHEMA:
            raise ValueError(f"{eval_path}: schema {schema} is not supported (expected {EVAL_SCHEMA})")
    config = _read_json_object(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    if not logs and ev is None:
        raise FileNotFoundError(f"{run_dir} holds neither metrics.jsonl nor eval.json")
    name = str(ev["model"]) if ev is not None and ev.get("model") else run_dir.name
    return RunRecord(name=name, run_dir=run_dir, eval=ev, logs=logs, config=config)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj
