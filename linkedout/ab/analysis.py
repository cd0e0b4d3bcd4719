"""``linkedout ab analyze``: join the logs, estimate per arm, compare, check, decide.

1. **Join** (:func:`linkedout.ab.join.join_logs`): each user's arm and impressions, and the clicks
   attributed to the requests they came from.
2. **Estimate** the primary metric per arm as a ratio of per-user sums (the user is the unit of
   randomisation, so the variance is over users, not impressions): ``ctr`` = clicks / impressions,
   ``click_users`` = share of users who clicked, ``clicks_per_user``.
3. **Compare** every treatment with the control: the difference with its fixed-horizon interval and
   its always-valid interval (normal-mixture mSPRT, ``τ = mde × control``), the relative lift;
   ``alpha`` is split over the treatments (Bonferroni).
4. **Check** the sample-ratio (chi-square of users per arm against the configured weights),
   the guardrails (p99 latency and error rate of each arm), and the horizon (``min_sample_size``
   users per arm and ``duration`` elapsed; ``max_duration``).
5. **Decide** (:func:`decide`): *stop* on a sample-ratio mismatch (the assignment or the logging is
   broken, nothing can be trusted), on a guardrail breach of a treatment, or when a treatment is
   worse with always-valid significance (harm may stop an experiment early); *ship* the best
   treatment that is better with always-valid significance once the horizon is reached; *stop*
   with no winner at ``max_duration``; otherwise *keep running*. Because the decision reads the
   always-valid interval, looking at the experiment every hour does not inflate false positives;
   the fixed-horizon interval is reported beside it and is the one to quote at the planned horizon.

``analysis.json`` (:meth:`Analysis.to_dict`) and the printed report name an arm a ``variant``, as the
request log does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from linkedout.ab.experiment import Experiment
from linkedout.ab.join import JoinedLogs, join_logs, per_user_metric
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


@dataclass(frozen=True)
class ArmResult:
    """One arm's users, primary metric with its interval, and guardrail figures."""

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
    """A treatment against the control."""

    treatment: str
    control: str
    alpha: float  # per comparison (Bonferroni)
    difference: Difference


@dataclass(frozen=True)
class TimelinePoint:
    """The users per arm and each treatment's difference, on the data up to ``ts``."""

    ts: int
    users: dict[str, int]
    diffs: dict[str, tuple[float, float, float, float, float]]  # treatment -> (diff, ci lo, ci hi, cs lo, cs hi)


@dataclass(frozen=True)
class Decision:
    """What to do with the experiment, and why."""

    action: str  # ship | keep running | stop
    arm: str | None  # the arm to ship, or None
    reasons: tuple[str, ...]


#: The keys of ``analysis.json`` that differ from the field names: it names an arm a ``variant``.
_JSON_KEYS = {"arms": "variants", "planned_users_per_arm": "planned_users_per_variant", "arm": "variant"}


@dataclass
class Analysis:
    """Everything ``ab analyze`` reports (module docstring)."""

    experiment: str
    primary_metric: str
    start_ts: int | None
    end_ts: int | None
    elapsed_s: float
    arms: list[ArmResult]
    comparisons: list[ComparisonResult]
    srm: SRMResult
    planned_users_per_arm: int
    horizon_reached: bool
    decision: Decision
    timeline: list[TimelinePoint]
    warnings: list[str]
    joined: dict[str, int]
    error_source: str

    def arm(self, name: str) -> ArmResult:
        return next(v for v in self.arms if v.name == name)

    def comparison(self, treatment: str) -> ComparisonResult:
        return next(c for c in self.comparisons if c.treatment == treatment)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``analysis.json``: JSON-safe (NaN and infinities are null)."""
        d = asdict(self)
        d["srm"]["mismatch"] = self.srm.mismatch
        d["decision"] = {_JSON_KEYS.get(k, k): v for k, v in d["decision"].items()}
        return _finite({_JSON_KEYS.get(k, k): v for k, v in d.items()})


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
    """Per-arm (requests, errors) from a Prometheus scrape of the transformer's ``/metrics``.

    ``linkedout_requests_total{variant}`` counts every request and
    ``linkedout_request_errors_total{variant,reason}`` the failed ones (summed over reasons); the
    ``variant`` label is the arm.
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
    control = exp.control_arm.name
    treatments = [v.name for v in exp.treatments]
    alpha_each = exp.alpha / len(treatments)

    def estimates(until: float) -> dict[str, RatioEstimate]:
        return {v: ratio_estimate(y, x) for v, (y, x) in per_user_metric(j, exp.primary_metric, until).items()}

    est = estimates(math.inf)
    diffs = {t: compare(est[t], est[control], alpha_each, _tau(exp, est[control])) for t in treatments}

    imps_by_arm = np.bincount(j.user_arm[j.req_user], weights=j.req_impressions,
                              minlength=len(exp.arms)) if len(j.req_user) else np.zeros(len(exp.arms))
    clicks_by_arm = np.bincount(j.user_arm[j.click_user], minlength=len(exp.arms)) \
        if len(j.click_user) else np.zeros(len(exp.arms))

    # guardrails
    req_m, err_m = parse_error_metrics(metrics_text) if metrics_text else ({}, {})
    error_source = "metrics" if metrics_text else "request log"
    arm_results = []
    for v in exp.arms:
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
        vi = exp.arms.index(v)
        arm_results.append(ArmResult(
            name=v.name, model=v.model, version=v.version, expected_share=shares[v.name], users=e.n,
            impressions=int(imps_by_arm[vi]), clicks=int(clicks_by_arm[vi]),
            metric=e.value, ci=e.interval(exp.alpha), requests=int(n_req), errors=int(n_err), error_rate=rate,
            latency_p50_ms=p50, latency_p99_ms=p99, guardrail_breaches=tuple(breaches)))

    srm = sample_ratio_test({v.name: est[v.name].n for v in exp.arms}, shares, exp.srm_threshold)
    y_c, x_c = per_user_metric(j, exp.primary_metric)[control]
    planned = 0
    if len(y_c) >= 2 and est[control].value > 0:
        resid_var = float(np.var(y_c - est[control].value * x_c, ddof=1))
        planned = required_sample_size(resid_var, float(x_c.mean()), exp.mde * est[control].value,
                                       alpha_each, exp.power)
    horizon = min(e.n for e in est.values()) >= exp.min_sample_size and elapsed >= exp.duration_s
    if j.crossover_users:
        share = j.crossover_users / max(1, len(j.user_arm))
        warnings.append(f"{j.crossover_users} users ({share:.2%}) were served by more than one variant and are "
                        "left out: assignment is not sticky (salt or routing changed mid-experiment?)")
    if j.unknown_arm_rows:
        warnings.append(f"{j.unknown_arm_rows} request records name a variant the experiment does not have")
    if len(j.user_arm) == 0:
        warnings.append(f"no request record of experiment {exp.name!r} in the window")
    comparisons = [ComparisonResult(t, control, alpha_each, diffs[t]) for t in treatments]
    decision = decide(exp, arm_results, comparisons, srm, horizon, elapsed)
    timeline = _timeline(exp, j, control, treatments, alpha_each, start, end, checkpoints, estimates)
    return Analysis(
        experiment=exp.name, primary_metric=exp.primary_metric, start_ts=start, end_ts=end, elapsed_s=elapsed,
        arms=arm_results, comparisons=comparisons, srm=srm, planned_users_per_arm=planned,
        horizon_reached=horizon, decision=decision, timeline=timeline, warnings=warnings,
        joined={"users": len(j.user_arm), "requests": len(j.req_ts), "clicks": len(j.click_ts),
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


def decide(exp: Experiment, arms: list[ArmResult], comparisons: list[ComparisonResult],
           srm: SRMResult, horizon_reached: bool, elapsed_s: float) -> Decision:
    """Ship / keep running / stop (module docstring, step 5), with the reasons."""
    reasons: list[str] = []
    if srm.mismatch:
        obs = ", ".join(f"{k} {v}" for k, v in srm.observed.items())
        exp_ = ", ".join(f"{k} {v:.0%}" for k, v in srm.expected_share.items())
        return Decision(STOP, None, (f"sample-ratio mismatch: users {obs} against a configured {exp_} split "
                                     f"(chi-square p = {srm.p_value:.2g} < {srm.threshold:g}); the assignment "
                                     "or the logging is broken and no result can be trusted",))
    control = exp.control_arm.name
    for v in arms:
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
    min_users = min((v.users for v in arms), default=0)
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
    total = sum(v.users for v in a.arms) or 1
    for v in a.arms:
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
    if a.planned_users_per_arm:
        lines.append(f"planned sample size for a {a.primary_metric} lift of the experiment's mde: "
                     f"{a.planned_users_per_arm} users per variant")
    lines.append(f"errors from the {a.error_source}")
    for w in a.warnings:
        lines.append(f"warning: {w}")
    lines.append("")
    lines.append(f"decision: {a.decision.action.upper()}" + (f" {a.decision.arm}" if a.decision.arm else ""))
    for r in a.decision.reasons:
        lines.append(f"  - {r}")
    return "\n".join(lines)
