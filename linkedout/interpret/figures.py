"""The report's figures: matplotlib without pyplot (no global state, Agg canvas), each an inline PNG data URI.

- :func:`training_figure`: training loss and the validation metric per epoch;
- :func:`heatmap_figure`: the paper's gate / contribution / difference heatmaps over some videos;
- :func:`share_figure`: the per-layer contribution share and gate weight over the catalogue.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from linkedout.interpret.contributions import Contributions

__all__ = ["heatmap_figure", "share_figure", "training_figure"]


def _png(fig: Any) -> str:
    """Render a matplotlib Figure to an inline ``<img>`` data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on savefig

    return Figure(figsize=(width, height), layout="constrained")


def _valid_metric(valid: Mapping[str, Any], name: str) -> float | None:
    value = valid.get(name)
    if value is None:  # tolerate prefixed keys such as "full/overall/NDCG@10"
        value = next((v for k, v in valid.items() if k.endswith(name)), None)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _epoch_curves(records: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[tuple[float, float]], ...]:
    """(epoch, loss) and (epoch, valid metric) points from metrics.jsonl records."""
    loss: dict[float, float] = {}
    step_losses: dict[float, list[float]] = {}
    valid: dict[float, float] = {}
    for rec in records:
        epoch = rec.get("epoch")
        if not isinstance(epoch, int | float):
            continue
        value = rec.get("loss")
        if rec.get("kind") == "epoch":
            if isinstance(value, int | float) and math.isfinite(value):
                loss[epoch] = float(value)
            v = _valid_metric(rec.get("valid") or {}, metric)
            if v is not None:
                valid[epoch] = v
        elif rec.get("kind") == "step" and isinstance(value, int | float) and math.isfinite(value):
            step_losses.setdefault(epoch, []).append(float(value))
    for epoch, values in step_losses.items():  # epochs whose summary line has no loss
        loss.setdefault(epoch, float(np.mean(values)))
    return sorted(loss.items()), sorted(valid.items())


def training_figure(training_logs: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> str | None:
    """Training loss and validation ``metric`` per epoch, one colour per run; None without epoch records."""
    from matplotlib.ticker import MaxNLocator

    curves = {name: _epoch_curves(recs, metric) for name, recs in training_logs.items()}
    if not any(loss or valid for loss, valid in curves.values()):
        return None
    fig = _new_figure(10, 3.6)
    ax_loss, ax_valid = fig.subplots(1, 2)
    palette = [f"C{i % 10}" for i in range(len(curves))]  # one colour per run in both panels
    for (name, (loss, valid)), colour in zip(curves.items(), palette):
        if loss:
            ax_loss.plot(*zip(*loss), marker="o", markersize=3, label=name, color=colour)
        if valid:
            ax_valid.plot(*zip(*valid), marker="o", markersize=3, label=name, color=colour)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_valid.set(title=f"validation {metric} (full catalogue)", xlabel="epoch", ylabel=metric)
    for ax in (ax_loss, ax_valid):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig)


def heatmap_figure(c: Contributions, labels: Sequence[str]) -> str:
    """The paper's three panels over the videos of ``c`` (rows labelled ``labels``): gate, contribution, difference."""
    rows = len(labels)
    fig = _new_figure(12, max(3.0, 0.22 * rows + 1.4))
    axes = fig.subplots(1, 3, sharey=True)
    vmax = float(max(c.gate.max(initial=0.0), c.contrib.max(initial=0.0), 1e-12))
    dmax = float(max(np.abs(c.diff).max(initial=0.0), 1e-12))
    panels = [
        (c.gate, "gate weight $\\pi_\\ell$", "viridis", 0.0, vmax),
        (c.contrib, "contribution $\\pi_\\ell\\,\\|h^{(\\ell)}\\|$ (share)", "viridis", 0.0, vmax),
        (c.diff, "difference (contribution − gate)", "RdBu_r", -dmax, dmax),
    ]
    for ax, (data, title, cmap, lo, hi) in zip(axes, panels):
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(c.num_layers), c.layer_names, fontsize=8)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_yticks(range(rows), list(labels), fontsize=7)
    axes[0].set_ylabel("video")
    return _png(fig)


def share_figure(c: Contributions) -> str:
    """Per-layer contribution share and gate weight over the catalogue, in percent."""
    fig = _new_figure(7, 3.4)
    ax = fig.subplots()
    x = np.arange(c.num_layers)
    ax.bar(x - 0.2, c.share_pct, width=0.4, label="contribution")
    ax.bar(x + 0.2, c.gate_pct, width=0.4, label="gate weight", alpha=0.6)
    for xi, v in zip(x, c.share_pct):
        ax.annotate(f"{v:.1f}", (xi - 0.2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, c.layer_names)
    ax.set(ylabel="% (mean over videos)", title="per-layer share over the catalogue")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
