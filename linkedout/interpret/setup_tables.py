"""The report's "Dataset and configuration" section: readable tables, not a key dump.

Three tables, each built from what the run directories and the feature shards record:

- **Data**: the dataset's size, density, sequence lengths and popularity, then what MicroLens
  preprocessing and the leave-one-out split leave (users, items, targets, cold-start share);
- **Feature extraction**: backbone and its precision, kept layers, tokens per layer, hidden size,
  storage dtype, frames and frame sampling, prompts, videos with features (from ``spec.json``);
- **Models** and **Training**: one column per run, one row per setting (model kind, fusion,
  sizes; seed, epochs, batch, loss, learning rate per group, decay, clipping, schedule, early
  stopping), "–" where a setting does not apply to a run.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["data_table", "extraction_table", "model_table", "training_table"]


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _two_column(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f'<tr><td class="name">{_esc(k)}</td><td class="name">{_esc(_fmt(v))}</td></tr>'
                   for k, v in rows if v is not None and v != "")
    return f"<table><tbody>{body}</tbody></table>"


def data_table(stats: Mapping[str, Any]) -> str:
    """The dataset's figures (``linkedout.data.stats.dataset_stats`` output) as one table."""
    sl = stats.get("sequence_length") or {}
    pop = stats.get("popularity") or {}
    split = stats.get("split") or {}
    rows: list[tuple[str, Any]] = [
        ("dataset", stats.get("name") or None),
        ("videos in the catalogue", stats.get("items")),
        ("videos with interactions", stats.get("interacted_items")),
        ("users", stats.get("users")),
        ("interactions", stats.get("interactions")),
        ("density", f"{stats['density']:.6f}" if isinstance(stats.get("density"), float) else None),
    ]
    if sl:
        rows.append(("interactions per user (min / median / mean / max)",
                     f"{sl['min']} / {sl['median']:g} / {sl['mean']:.2f} / {sl['max']}"))
    if pop:
        rows.append(("popularity (Gini; share of the top 20 % videos)",
                     f"{pop['gini']:.3f}; {100 * pop['top20pct_share']:.1f} %"))
    if "note" in split:
        rows.append(("after preprocessing", split["note"]))
    elif split:
        kept = (f"users with >= {split['min_interactions']} interactions, last {split['max_interactions']} kept"
                if "min_interactions" in split else "leave-one-out split")
        rows += [
            ("after preprocessing", kept),
            ("  users", split.get("users")),
            ("  videos ranked", split.get("items")),
            ("  training interactions", split.get("train_interactions")),
            ("  validation / test targets", f"{split.get('valid_targets', 0):,} / {split.get('test_targets', 0):,}"),
            ("  cold-start test targets (video never in training)",
             f"{split.get('cold_test_targets', 0):,} ({100 * split.get('cold_test_fraction', 0.0):.1f} %), "
             f"{split.get('cold_test_items', 0):,} distinct videos"),
        ]
    return _two_column(rows)


def extraction_table(spec: Mapping[str, Any]) -> str:
    """The feature shards' ``spec.json`` (plus ``videos`` / ``failed`` / ``store``) as one table."""
    layers = spec.get("layers") or []
    rows: list[tuple[str, Any]] = [
        ("backbone", spec.get("backbone")),
        ("backbone precision", spec.get("backbone_dtype")),
        ("layers kept", ", ".join(f"L{x}" for x in layers) + f" ({len(layers)})" if layers else None),
        ("tokens per layer K", spec.get("tokens")),
        ("token compression", spec.get("compression")),
        ("hidden size D", spec.get("hidden")),
        ("storage dtype", spec.get("dtype")),
        ("frames per video", f"{spec.get('num_frames')} at {spec.get('frame_size')} x {spec.get('frame_size')} px"
         if spec.get("num_frames") else None),
        ("frame sampling", spec.get("frame_sampling", "exact")),
        ("prompts", " | ".join(spec.get("prompts") or []) or None),
        ("videos with features", spec.get("videos")),
        ("videos that failed", spec.get("failed")),
        ("feature shards", spec.get("store")),
    ]
    return _two_column(rows)


def _get(d: Mapping[str, Any] | None, path: str) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _per_run(configs: Mapping[str, Mapping[str, Any]], rows: Sequence[tuple[str, Callable[[Mapping[str, Any]], Any]]]) -> str:
    names = list(configs)
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    body = []
    for label, get in rows:
        values = [get(configs[n]) for n in names]
        if all(v is None for v in values):
            continue
        cells = "".join(f"<td>{_esc(_fmt(v))}</td>" for v in values)
        body.append(f'<tr><td class="name">{_esc(label)}</td>{cells}</tr>')
    return f'<table><thead><tr><th class="name">setting</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def model_table(configs: Mapping[str, Mapping[str, Any]]) -> str:
    """One column per run's ``config.json``: the model."""
    def fusion(path: str) -> Callable[[Mapping[str, Any]], Any]:
        return lambda c: _get(c, f"model.fusion.{path}") if _get(c, "model.kind") in ("linkedout", "hybrid") else None

    def enabled(part: str) -> Callable[[Mapping[str, Any]], Any]:
        return lambda c: bool(_get(c, f"model.{part}.enabled")) if _get(c, f"model.{part}") is not None else None

    rows: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = [
        ("variant", lambda c: c.get("variant")),
        ("model kind", lambda c: _get(c, "model.kind")),
        ("width d", lambda c: _get(c, "model.d_model")),
        ("layer fusion", fusion("mode")),
        ("single layer (position)", lambda c: _get(c, "model.fusion.single_layer")
         if _get(c, "model.fusion.mode") == "single" else None),
        ("experts: layers x tokens x D in", lambda c: (f"{_get(c, 'model.fusion.num_layers')} x "
                                                      f"{_get(c, 'model.fusion.tokens')} x {_get(c, 'model.fusion.in_dim')}")
         if fusion("mode")(c) else None),
        ("expert queries / hidden", lambda c: (f"{_get(c, 'model.fusion.expert_queries')} / "
                                               f"{_get(c, 'model.fusion.expert_hidden')}") if fusion("mode")(c) else None),
        ("titles / covers", lambda c: (f"{_fmt(enabled('text')(c))} / {_fmt(enabled('image')(c))}")
         if _get(c, "model.text") is not None else None),
        ("sequence model: layers x heads", lambda c: (f"{_get(c, 'model.sequence.num_layers')} x "
                                                      f"{_get(c, 'model.sequence.num_heads')}")
         if _get(c, "model.sequence") is not None else None),
        ("history length", lambda c: _get(c, "model.sequence.max_history")),
        ("dropout", lambda c: _get(c, "model.sequence.dropout")),
        ("catalogue size N", lambda c: c.get("num_items")),
    ]
    return _per_run(configs, rows)


def training_table(configs: Mapping[str, Mapping[str, Any]]) -> str:
    """One column per run's ``config.json``: the training configuration."""
    def t(path: str) -> Callable[[Mapping[str, Any]], Any]:
        return lambda c: _get(c, f"train.{path}")

    rows: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = [
        ("seed", t("seed")),
        ("epochs (most)", t("epochs")),
        ("early stopping patience (validations)", t("early_stopping_patience")),
        ("model selection", t("best_metric")),
        ("batch size", t("batch_size")),
        ("loss", t("loss")),
        ("learning rate: video / text / image", lambda c: (f"{_fmt(t('lr_video')(c))} / {_fmt(t('lr_text')(c))} / "
                                                          f"{_fmt(t('lr_image')(c))}") if c.get("train") else None),
        ("learning rate: ids / head", lambda c: f"{_fmt(t('lr_id')(c))} / {_fmt(t('lr_head')(c))}"
         if c.get("train") else None),
        ("weight decay", t("weight_decay")),
        ("grad-norm clip", t("grad_clip")),
        ("warm-up steps", t("warmup_steps")),
        ("schedule: x gamma every N epochs", lambda c: f"x {_fmt(t('scheduler_gamma')(c))} every "
                                                       f"{_fmt(t('scheduler_step_epochs')(c))}" if c.get("train") else None),
        ("mixed precision", t("mixed_precision")),
    ]
    return _per_run(configs, rows)
