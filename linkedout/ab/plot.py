"""The picture of an analysis (one PNG, matplotlib's Agg backend, no display needed).

Four panels: the primary metric per arm with its interval; the difference to the control over
time with the fixed-horizon interval and the always-valid one (what a peek at any time may rely on),
and the true difference when it is known (simulations); users per arm against the configured
split (sample-ratio test); p50/p99 latency per arm against the guardrail, with error rates.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.ab.analysis import Analysis


def plot_analysis(a: Analysis, out: str | Path, truth: dict[str, float] | None = None,
                  p99_limit_ms: float | None = None) -> Path:
    """Write the PNG of ``a`` to ``out``; ``truth`` maps treatments to their known true difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    fig.suptitle(f"experiment {a.experiment}: decision {a.decision.action.upper()}"
                 + (f" {a.decision.arm}" if a.decision.arm else ""), fontsize=13, fontweight="bold")
    _metric_panel(axes[0, 0], a, colors)
    _timeline_panel(axes[0, 1], a, colors, truth)
    _sample_ratio_panel(axes[1, 0], a, colors)
    _guardrail_panel(axes[1, 1], a, colors, p99_limit_ms)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _metric_panel(ax: Any, a: Analysis, colors: list[str]) -> None:
    """The primary metric of each arm with its interval."""
    names = [v.name for v in a.arms]
    x = np.arange(len(names))
    vals = np.array([v.metric for v in a.arms])
    lo = vals - np.array([v.ci[0] for v in a.arms])
    hi = np.array([v.ci[1] for v in a.arms]) - vals
    ax.errorbar(x, vals, yerr=[lo, hi], fmt="o", capsize=6, color="black")
    for i, v in enumerate(a.arms):
        ax.bar(i, v.metric, color=colors[i % len(colors)], alpha=0.5)
        ax.annotate(f"{v.metric:.4f}\n{v.users} users", (i, v.ci[1]), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=8)
    ax.set_xticks(x, names)
    top = np.nanmax([v.ci[1] for v in a.arms] + [0.0])
    if np.isfinite(top) and top > 0:
        ax.set_ylim(0, top * 1.25)
    ax.set_ylabel(a.primary_metric)
    ax.set_title(f"{a.primary_metric} per variant (95 % CI, per-user delta method)")


def _timeline_panel(ax: Any, a: Analysis, colors: list[str], truth: dict[str, float] | None) -> None:
    """Each treatment's difference to the control over time, with both intervals and the truth when known."""
    if a.timeline:
        t0 = a.start_ts or a.timeline[0].ts
        t = np.array([(p.ts - t0) / 3.6e6 for p in a.timeline])  # hours since the first exposure
        for i, c in enumerate(a.comparisons):
            col = colors[(i + 1) % len(colors)]
            series = np.array([p.diffs[c.treatment] for p in a.timeline], dtype=np.float64)  # (P, 5)
            series[~np.isfinite(series)] = np.nan
            ax.plot(t, series[:, 0], color=col, label=f"{c.treatment} - {c.control}")
            ax.fill_between(t, series[:, 3], series[:, 4], color=col, alpha=0.15, label="always-valid CI")
            ax.plot(t, series[:, 1], color=col, ls="--", lw=0.8, label="fixed-horizon CI")
            ax.plot(t, series[:, 2], color=col, ls="--", lw=0.8)
            if truth and c.treatment in truth:
                ax.axhline(truth[c.treatment], color=col, ls=":", lw=1.5, label="true difference")
        ax.axhline(0, color="black", lw=0.8)
        ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("hours since the first exposure (UTC "
                      f"{dt.datetime.fromtimestamp(t0 / 1000, tz=dt.UTC):%Y-%m-%d %H:%M})")
    ax.set_title("difference to the control over time")
    ax.set_ylabel(f"Δ {a.primary_metric}")


def _sample_ratio_panel(ax: Any, a: Analysis, colors: list[str]) -> None:
    """Users of each arm against the configured split."""
    x = np.arange(len(a.arms))
    total = sum(v.users for v in a.arms)
    ax.bar(x - 0.2, [v.users for v in a.arms], width=0.4, label="observed", color=colors[0])
    ax.bar(x + 0.2, [v.expected_share * total for v in a.arms], width=0.4, label="configured split",
           color="grey", alpha=0.6)
    ax.set_xticks(x, [v.name for v in a.arms])
    ax.set_ylabel("users")
    ax.legend(fontsize=8)
    ax.set_title(f"sample ratio: chi-square p = {a.srm.p_value:.3g}" + ("  MISMATCH" if a.srm.mismatch else ""),
                 color="red" if a.srm.mismatch else "black")


def _guardrail_panel(ax: Any, a: Analysis, colors: list[str], p99_limit_ms: float | None) -> None:
    """p50/p99 latency of each arm against the guardrail, with error rates."""
    x = np.arange(len(a.arms))
    ax.bar(x - 0.2, [v.latency_p50_ms for v in a.arms], width=0.4, label="p50", color=colors[2 % len(colors)])
    ax.bar(x + 0.2, [v.latency_p99_ms for v in a.arms], width=0.4, label="p99", color=colors[3 % len(colors)])
    if p99_limit_ms:
        ax.axhline(p99_limit_ms, color="red", ls="--", lw=1, label=f"p99 guardrail {p99_limit_ms:g} ms")
    for i, v in enumerate(a.arms):
        ax.annotate(f"errors {v.error_rate:.2%}", (i, max(v.latency_p99_ms, 0) if np.isfinite(v.latency_p99_ms)
                                                   else 0), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=8, color="red" if v.guardrail_breaches else "black")
    ax.set_xticks(x, [v.name for v in a.arms])
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)
    ax.set_title("guardrails: latency and errors")
