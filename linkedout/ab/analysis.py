"""``linkedout ab analyze``: join the logs, estimate per variant, compare, check, decide.

1. **Join** (:func:`join_logs`). Request records of the experiment give each user a variant (the
   first one seen: users seen under two variants break stickiness, are counted as crossovers and
   left out) and their impressions (served video ids). Each interaction is attributed to the
   request it came from (``request_id``, else the user's latest request before it that showed the
   video, within the attribution window); one click per (request, video).
2. **Estimate** the primary metric per variant as a ratio of per-user sums (the user is the unit of
   randomisation, so the variance is over users, not impressions): ``ctr`` = clicks / impressions,
   ``click_users`` = share of users who clicked, ``clicks_per_user``.
3. **Compare** every treatment with the control: the difference with its fixed-horizon interval and
   its always-valid interval (normal-mixture mSPRT, ``τ = mde × control``), the relative lift;
   ``alpha`` is split over the treatments (Bonferroni).
4. **Check** the sample-ratio (chi-square of users per variant against the configured weights),
   the guardrails (p99 latency and error rate of each variant), and the horizon (``min_sample_size``
   users per variant and ``duration`` elapsed; ``max_duration``).
5. **Decide** (:func:`decide`): *stop* on a sample-ratio mismatch (the assignment or the logging is
   broken, nothing can be trusted), on a guardrail breach of a treatment, or when a treatment is
   worse with always-valid significance (harm may stop an experiment early); *ship* the best
   treatment that is better with always-valid significance once the horizon is reached; *stop*
   with no winner at ``max_duration``; otherwise *keep running*. Because the decision reads the
   always-valid interval, looking at the experiment every hour does not inflate false positives;
   the fixed-horizon interval is reported beside it and is the one to quote at the planned horizon.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from linkedout.ab.experiment import Experiment
from linkedout.ab.logs import InteractionLog, RequestLog
from linkedout.ab.stats import (
    Difference,
    RatioEstimate,
    SRMResult,
    compare,
    ratio_estimate,
    required_sample_size,
    sample_ratio_test,
)
from linkedout.utils import get_logger

log = get_logger(__name__)

SHIP, KEEP_RUNNING, STOP = "ship", "keep running", "stop"


@dataclass
class JoinedLogs:
    """The experiment's exposures and attributed clicks, as arrays indexed by user.

    ``user_variant`` (U,) index into ``variants``; ``first_ts`` (U,) first exposure (ms);
    ``req_user`` / ``req_ts`` / ``req_impressions`` (R,) served requests; ``click_user`` /
    ``click_ts`` (C,) attributed clicks.
    """

    variants: list[str]
    user_ids: list[str]
    user_variant: np.ndarray
    first_ts: np.ndarray
    req_user: np.ndarray
    req_ts: np.ndarray
    req_impressions: np.ndarray
    click_user: np.ndarray
    click_ts: np.ndarray
    crossover_users: int = 0
    other_experiment_rows: int = 0
    unknown_variant_rows: int = 0
    interactions: int = 0
    unattributed: int = 0  # interactions of exposed users that match no served recommendation
    outside_users: int = 0  # interactions of users not in the experiment
    # guardrail inputs, per variant: latencies of served requests, counts of all and failed rows
    latencies: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def join_logs(exp: Experiment, requests: RequestLog, interactions: InteractionLog,
              start_ms: int | None = None, end_ms: int | None = None) -> JoinedLogs:
    """Join the request and interaction logs of ``exp`` (module docstring, step 1)."""
    variants = [v.name for v in exp.variants]
    vindex = {v: i for i, v in enumerate(variants)}
    window_ms = exp.attribution_window_s * 1000.0
    user_index: dict[str, int] = {}
    user_variant: list[int] = []
    first_ts: list[int] = []
    crossed: set[int] = set()
    per_user: dict[int, list[tuple[int, int]]] = {}  # user -> [(ts, request row)]
    by_request: dict[tuple[str, str], int] = {}
    other = unknown = 0
    lat: dict[str, list[float]] = {v: [] for v in variants}
    rows = dict.fromkeys(variants, 0)
    errors = dict.fromkeys(variants, 0)
    served_rows: list[int] = []
    for r in range(len(requests)):
        ts = requests.ts[r]
        if (start_ms is not None and ts < start_ms) or (end_ms is not None and ts > end_ms):
            continue
        if requests.experiment[r] != exp.name:
            other += 1
            continue
        v = requests.variant[r]
        if v not in vindex:
            unknown += 1
            continue
        rows[v] += 1
        if requests.error[r] is not None:
            errors[v] += 1
            continue
        lat[v].append(requests.latency_ms[r])
        uid = requests.user_id[r]
        u = user_index.get(uid)
        if u is None:
            u = user_index[uid] = len(user_variant)
            user_variant.append(vindex[v])
            first_ts.append(ts)
        else:
            if user_variant[u] != vindex[v]:
                crossed.add(u)
            first_ts[u] = min(first_ts[u], ts)
        served_rows.append(r)
        per_user.setdefault(u, []).append((ts, r))
        by_request[(requests.request_id[r], uid)] = r
    for lst in per_user.values():
        lst.sort()
    row_user = {r: user_index[requests.user_id[r]] for r in served_rows}
    item_sets: dict[int, frozenset[int]] = {}

    def items_of(r: int) -> frozenset[int]:
        s = item_sets.get(r)
        if s is None:
            s = item_sets[r] = frozenset(requests.items[r])
        return s

    clicked: set[tuple[int, int]] = set()
    click_user: list[int] = []
    click_ts: list[int] = []
    unattributed = outside = n_inter = 0
    for i in range(len(interactions)):
        ts = interactions.ts[i]
        if (start_ms is not None and ts < start_ms) or (end_ms is not None and ts > end_ms + window_ms):
            continue
        n_inter += 1
        uid = interactions.user_id[i]
        u = user_index.get(uid)
        if u is None or u in crossed:
            outside += 1
            continue
        video = interactions.video_id[i]
        hit: int | None = None
        rid = interactions.request_id[i]
        if rid is not None and (rid, uid) in by_request:
            r = by_request[(rid, uid)]
            if video in items_of(r) and 0 <= ts - requests.ts[r] <= window_ms:
                hit = r
        else:
            reqs = per_user[u]
            j = bisect.bisect_right(reqs, (ts, math.inf)) - 1
            while j >= 0 and ts - reqs[j][0] <= window_ms:
                if video in items_of(reqs[j][1]):
                    hit = reqs[j][1]
                    break
                j -= 1
        if hit is None:
            unattributed += 1
            continue
        if (hit, video) in clicked:
            continue
        clicked.add((hit, video))
        click_user.append(u)
        click_ts.append(ts)
    keep = np.array([u not in crossed for u in range(len(user_variant))], dtype=bool)
    req_user = np.array([row_user[r] for r in served_rows], dtype=np.int64)
    req_keep = keep[req_user] if len(req_user) else np.zeros(0, dtype=bool)
    return JoinedLogs(
        variants=variants,
        user_ids=list(user_index),
        user_variant=np.asarray(user_variant, dtype=np.int64),
        first_ts=np.asarray(first_ts, dtype=np.int64),
        req_user=req_user[req_keep],
        req_ts=np.array([requests.ts[r] for r in served_rows], dtype=np.int64)[req_keep],
        req_impressions=np.array([len(requests.items[r]) for r in served_rows], dtype=np.int64)[req_keep],
        click_user=np.asarray(click_user, dtype=np.int64),
        click_ts=np.asarray(click_ts, dtype=np.int64),
        crossover_users=len(crossed), other_experiment_rows=other, unknown_variant_rows=unknown,
        interactions=n_inter, unattributed=unattributed, outside_users=outside,
        latencies={v: np.asarray(x, dtype=np.float64) for v, x in lat.items()}, rows=rows, errors=errors,
    )


def per_user_metric(j: JoinedLogs, metric: str, until_ms: float = math.inf) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per variant, the per-user (numerator, denominator) arrays of ``metric`` up to ``until_ms``."""
    n = len(j.user_variant)
    has_requests = np.bincount(j.req_user, minlength=n) > 0  # crossover users have none left
    imps = np.bincount(j.req_user[j.req_ts <= until_ms], weights=j.req_impressions[j.req_ts <= until_ms],
                       minlength=n)
    clicks = np.bincount(j.click_user[j.click_ts <= until_ms], minlength=n).astype(np.float64)
    exposed = has_requests & (j.first_ts <= until_ms)
    out = {}
    for vi, v in enumerate(j.variants):
        m = exposed & (j.user_variant == vi)
        if metric == "ctr":
            y, x = clicks[m], imps[m]
        elif metric == "click_users":
            y, x = (clicks[m] > 0).astype(np.float64), np.ones(int(m.sum()))
        elif metric == "clicks_per_user":
            y, x = clicks[m], np.ones(int(m.sum()))
        else:
            raise ValueError(f"unknown primary metric {metric!r}")
        out[v] = (y, x)
    return out


@dataclass(frozen=True)
class VariantResult:
    name: str
    model: str
    version: int | None
    expected_share: float
    users: int
    impressions: int
    clicks: int
    metric: float
    ci: tuple[float, float]
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    guardrail_breaches: tuple[str, ...]


@dataclass(frozen=True)
class ComparisonResult:
    treatment: str
    control: str
    alpha: float  # per comparison (Bonferroni)
    difference: Difference


@dataclass(frozen=True)
class TimelinePoint:
    ts: int
    users: dict[str, int]
    diffs: dict[str, tuple[float, float, float, float, float]]  # treatment -> (diff, ci lo, ci hi, cs lo, cs hi)


@dataclass(frozen=True)
class Decision:
    action: str  # ship | keep running | stop
    variant: str | None  # the variant to ship, or None
    reasons: tuple[str, ...]


@dataclass
class Analysis:
    experiment: str
    primary_metric: str
    start_ts: int | None
    end_ts: int | None
    elapsed_s: float
    variants: list[VariantResult]
    comparisons: list[ComparisonResult]
    srm: SRMResult
    planned_users_per_variant: int
    horizon_reached: bool
    decision: Decision
    timeline: list[TimelinePoint]
    warnings: list[str]
    joined: dict[str, int]
    error_source: str

    def variant(self, name: str) -> VariantResult:
        return next(v for v in self.variants if v.name == name)

    def comparison(self, treatment: str) -> ComparisonResult:
        return next(c for c in self.comparisons if c.treatment == treatment)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["srm"]["mismatch"] = self.srm.mismatch
        return _finite(d)


def _finite(x: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def parse_error_metrics(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """Per-variant (requests, errors) from a Prometheus scrape of the transformer's ``/metrics``.

    ``linkedout_requests_total{variant}`` counts every request and
    ``linkedout_request_errors_total{variant,reason}`` the failed ones (summed over reasons).
    """
    from prometheus_client.parser import text_string_to_metric_families

    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "linkedout_requests_total":
                v = s.labels.get("variant", "")
                requests[v] = requests.get(v, 0.0) + s.value
            elif s.name == "linkedout_request_errors_total":
                v = s.labels.get("variant", "")
                errors[v] = errors.get(v, 0.0) + s.value
    return requests, errors


def analyze(exp: Experiment, requests: RequestLog, interactions: InteractionLog, *,
            start_ms: int | None = None, end_ms: int | None = None, metrics_text: str | None = None,
            checkpoints: int = 20) -> Analysis:
    """Everything ``ab analyze`` reports (module docstring)."""
    j = join_logs(exp, requests, interactions, start_ms, end_ms)
    warnings: list[str] = []
    all_ts = np.concatenate([j.first_ts, j.req_ts]) if len(j.first_ts) else np.zeros(0, dtype=np.int64)
    start = int(all_ts.min()) if len(all_ts) else None
    end = int(all_ts.max()) if len(all_ts) else None
    elapsed = (end - start) / 1000.0 if start is not None and end is not None else 0.0
    shares = exp.shares()
    control = exp.control_variant.name
    treatments = [v.name for v in exp.treatments]
    alpha_each = exp.alpha / len(treatments)

    def estimates(until: float) -> dict[str, RatioEstimate]:
        return {v: ratio_estimate(y, x) for v, (y, x) in per_user_metric(j, exp.primary_metric, until).items()}

    est = estimates(math.inf)
    diffs = {t: compare(est[t], est[control], alpha_each, _tau(exp, est[control])) for t in treatments}

    imps_by_variant = np.bincount(j.user_variant[j.req_user], weights=j.req_impressions,
                                  minlength=len(exp.variants)) if len(j.req_user) else np.zeros(len(exp.variants))
    clicks_by_variant = np.bincount(j.user_variant[j.click_user], minlength=len(exp.variants)) \
        if len(j.click_user) else np.zeros(len(exp.variants))

    # guardrails
    req_m, err_m = parse_error_metrics(metrics_text) if metrics_text else ({}, {})
    error_source = "metrics" if metrics_text else "request log"
    variant_results = []
    for v in exp.variants:
        lat = j.latencies[v.name]
        p50 = float(np.percentile(lat, 50)) if len(lat) else math.nan
        p99 = float(np.percentile(lat, 99)) if len(lat) else math.nan
        if metrics_text:
            n_req, n_err = req_m.get(v.name, 0.0), err_m.get(v.name, 0.0)
        else:
            n_req, n_err = float(j.rows[v.name]), float(j.errors[v.name])
        rate = n_err / n_req if n_req > 0 else 0.0
        breaches = []
        if p99 > exp.guardrails.p99_latency_ms:
            breaches.append(f"p99 latency {p99:.2f} ms > {exp.guardrails.p99_latency_ms:g} ms")
        if rate > exp.guardrails.error_rate:
            breaches.append(f"error rate {rate:.4f} > {exp.guardrails.error_rate:g}")
        e = est[v.name]
        vi = exp.variants.index(v)
        variant_results.append(VariantResult(
            name=v.name, model=v.model, version=v.version, expected_share=shares[v.name], users=e.n,
            impressions=int(imps_by_variant[vi]), clicks=int(clicks_by_variant[vi]),
            metric=e.value, ci=e.interval(exp.alpha), requests=int(n_req), errors=int(n_err), error_rate=rate,
            latency_p50_ms=p50, latency_p99_ms=p99, guardrail_breaches=tuple(breaches)))

    srm = sample_ratio_test({v.name: est[v.name].n for v in exp.variants}, shares, exp.srm_threshold)
    y_c, x_c = per_user_metric(j, exp.primary_metric)[control]
    planned = 0
    if len(y_c) >= 2 and est[control].value > 0:
        resid_var = float(np.var(y_c - est[control].value * x_c, ddof=1))
        planned = required_sample_size(resid_var, float(x_c.mean()), exp.mde * est[control].value,
                                       alpha_each, exp.power)
    horizon = min(e.n for e in est.values()) >= exp.min_sample_size and elapsed >= exp.duration_s
    if j.crossover_users:
        share = j.crossover_users / max(1, len(j.user_variant))
        warnings.append(f"{j.crossover_users} users ({share:.2%}) were served by more than one variant and are "
                        "left out: assignment is not sticky (salt or routing changed mid-experiment?)")
    if j.unknown_variant_rows:
        warnings.append(f"{j.unknown_variant_rows} request records name a variant the experiment does not have")
    if len(j.user_variant) == 0:
        warnings.append(f"no request record of experiment {exp.name!r} in the window")
    comparisons = [ComparisonResult(t, control, alpha_each, diffs[t]) for t in treatments]
    decision = decide(exp, variant_results, comparisons, srm, horizon, elapsed)
    timeline = _timeline(exp, j, control, treatments, alpha_each, start, end, checkpoints, estimates)
    return Analysis(
        experiment=exp.name, primary_metric=exp.primary_metric, start_ts=start, end_ts=end, elapsed_s=elapsed,
        variants=variant_results, comparisons=comparisons, srm=srm, planned_users_per_variant=planned,
        horizon_reached=horizon, decision=decision, timeline=timeline, warnings=warnings,
        joined={"users": len(j.user_variant), "requests": len(j.req_ts), "clicks": len(j.click_ts),
                "interactions": j.interactions, "unattributed_interactions": j.unattributed,
                "interactions_outside_experiment": j.outside_users, "crossover_users": j.crossover_users,
                "other_experiment_rows": j.other_experiment_rows},
        error_source=error_source)


def _tau(exp: Experiment, control: RatioEstimate) -> float:
    """Mixing scale of the sequential test: the smallest effect worth detecting, in metric units."""
    if control.value > 0 and math.isfinite(control.value):
        return exp.mde * control.value
    return math.sqrt(control.variance) if control.variance > 0 and math.isfinite(control.variance) else 1e-3


def _timeline(exp: Experiment, j: JoinedLogs, control: str, treatments: list[str], alpha: float,
              start: int | None, end: int | None, checkpoints: int, estimates: Any) -> list[TimelinePoint]:
    if start is None or end is None or checkpoints < 1:
        return []
    points = []
    for t in np.linspace(start, end, checkpoints + 1)[1:]:
        est = estimates(float(t))
        diffs = {}
        for tr in treatments:
            d = compare(est[tr], est[control], alpha, _tau(exp, est[control]))
            diffs[tr] = (d.diff, d.ci[0], d.ci[1], d.cs[0], d.cs[1])
        points.append(TimelinePoint(int(t), {v: e.n for v, e in est.items()}, diffs))
    return points


def decide(exp: Experiment, variants: list[VariantResult], comparisons: list[ComparisonResult],
           srm: SRMResult, horizon_reached: bool, elapsed_s: float) -> Decision:
    """Ship / keep running / stop (module docstring, step 5), with the reasons."""
    reasons: list[str] = []
    if srm.mismatch:
        obs = ", ".join(f"{k} {v}" for k, v in srm.observed.items())
        exp_ = ", ".join(f"{k} {v:.0%}" for k, v in srm.expected_share.items())
        return Decision(STOP, None, (f"sample-ratio mismatch: users {obs} against a configured {exp_} split "
                                     f"(chi-square p = {srm.p_value:.2g} < {srm.threshold:g}); the assignment "
                                     "or the logging is broken and no result can be trusted",))
    control = exp.control_variant.name
    for v in variants:
        if v.guardrail_breaches and v.name != control:
            return Decision(STOP, None, tuple(f"guardrail breached by {v.name}: {b}" for b in v.guardrail_breaches))
        if v.guardrail_breaches:
            reasons.append(f"the control breaches a guardrail ({'; '.join(v.guardrail_breaches)}): a "
                           "platform problem, not the treatment's")
    harmful = [c for c in comparisons if c.difference.cs[1] < 0]
    if harmful:
        return Decision(STOP, None, tuple(
            f"{c.treatment} is worse than {c.control}: {exp.primary_metric} difference {c.difference.diff:+.4g}, "
            f"always-valid {1 - c.alpha:.0%} interval [{c.difference.cs[0]:+.4g}, {c.difference.cs[1]:+.4g}]"
            for c in harmful))
    winners = sorted((c for c in comparisons if c.difference.cs[0] > 0), key=lambda c: -c.difference.diff)
    min_users = min((v.users for v in variants), default=0)
    if winners and horizon_reached:
        w = winners[0]
        return Decision(SHIP, w.treatment, (
            f"{w.treatment} beats {w.control}: {exp.primary_metric} difference {w.difference.diff:+.4g} "
            f"(lift {w.difference.lift:+.2%}), always-valid {1 - w.alpha:.0%} interval "
            f"[{w.difference.cs[0]:+.4g}, {w.difference.cs[1]:+.4g}], guardrails hold", *reasons))
    if winners:
        reasons.append(f"{winners[0].treatment} is ahead with always-valid significance, but the horizon is not "
                       f"reached: {_short_of(exp, min_users, elapsed_s)}")
        return Decision(KEEP_RUNNING, None, tuple(reasons))
    if exp.max_duration_s is not None and elapsed_s >= exp.max_duration_s:
        return Decision(STOP, None, (f"no significant difference after max_duration "
                                     f"({exp.max_duration_s / 86400:g} d): keep the control", *reasons))
    reasons.append("no significant difference yet" + ("" if horizon_reached else
                   f"; horizon not reached: {_short_of(exp, min_users, elapsed_s)}"))
    return Decision(KEEP_RUNNING, None, tuple(reasons))


def _short_of(exp: Experiment, min_users: int, elapsed_s: float) -> str:
    """What the horizon still lacks, e.g. ``812 of 1000 users per variant; 20.5 h of 24 h``."""
    parts = []
    if min_users < exp.min_sample_size:
        parts.append(f"{min_users} of {exp.min_sample_size} users per variant")
    if elapsed_s < exp.duration_s:
        unit = 86400.0 if exp.duration_s >= 2 * 86400 else 3600.0
        parts.append(f"{math.floor(elapsed_s / unit * 100) / 100:.2f} of {exp.duration_s / unit:g} {'d' if unit > 3600 else 'h'} run")
    return "; ".join(parts) or "-"


def format_report(a: Analysis) -> str:
    """The text ``ab analyze`` prints."""
    lines = [f"experiment {a.experiment}: {a.primary_metric} per user-randomised variant, "
             f"{a.elapsed_s / 3600:.2f} h of data", ""]
    lines.append(f"{'variant':<14}{'users':>8}{'share':>8}{'expected':>9}{a.primary_metric:>11}"
                 f"{'95% CI':>22}{'p50 ms':>9}{'p99 ms':>9}{'errors':>9}")
    total = sum(v.users for v in a.variants) or 1
    for v in a.variants:
        lines.append(f"{v.name:<14}{v.users:>8}{v.users / total:>8.1%}{v.expected_share:>9.1%}{v.metric:>11.5f}"
                     f"{f'[{v.ci[0]:.5f}, {v.ci[1]:.5f}]':>22}{v.latency_p50_ms:>9.2f}{v.latency_p99_ms:>9.2f}"
                     f"{v.error_rate:>9.2%}")
    lines.append("")
    for c in a.comparisons:
        d = c.difference
        lines.append(f"{c.treatment} - {c.control}: {d.diff:+.5f} (lift {d.lift:+.2%}, "
                     f"{1 - c.alpha:.0%} CI [{d.lift_ci[0]:+.2%}, {d.lift_ci[1]:+.2%}])")
        lines.append(f"  fixed-horizon {1 - c.alpha:.0%} CI [{d.ci[0]:+.5f}, {d.ci[1]:+.5f}]  p = {d.p_value:.3g}")
        lines.append(f"  always-valid  {1 - c.alpha:.0%} CI [{d.cs[0]:+.5f}, {d.cs[1]:+.5f}]  "
                     f"p = {d.always_valid_p:.3g}  (mSPRT, tau = {d.tau:.3g})")
    lines.append(f"sample ratio: chi-square {a.srm.chi2:.2f} (df {a.srm.df}), p = {a.srm.p_value:.3g}"
                 + ("  MISMATCH" if a.srm.mismatch else "  ok"))
    if a.planned_users_per_variant:
        lines.append(f"planned sample size for a {a.primary_metric} lift of the experiment's mde: "
                     f"{a.planned_users_per_variant} users per variant")
    lines.append(f"errors from the {a.error_source}")
    for w in a.warnings:
        lines.append(f"warning: {w}")
    lines.append("")
    lines.append(f"decision: {a.decision.action.upper()}" + (f" {a.decision.variant}" if a.decision.variant else ""))
    for r in a.decision.reasons:
        lines.append(f"  - {r}")
    return "\n".join(lines)
