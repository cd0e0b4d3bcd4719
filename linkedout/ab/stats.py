"""The statistics behind ``ab analyze``, in NumPy and the standard library (no SciPy).

- Ratio metrics per arm, Σy / Σx over users (the unit of randomisation), with the delta-method
  variance ``Var(R) = Var(y_u - R x_u) / (n x̄²)`` (:func:`ratio_estimate`).
- The fixed-horizon interval of a difference: ``Δ ± z_{1-α/2} SE`` — valid once, at a sample size
  fixed in advance; looked at repeatedly it over-covers false positives.
- The always-valid interval (a confidence sequence) of the normal-mixture mSPRT (Robbins 1970;
  Johari, Pekelis & Walsh 2017, "Always valid inference"): with ``V = SE²`` and a mixing variance
  ``τ²``, the half-width ``sqrt(V(V+τ²)/τ² · (2 log(1/α) + log((V+τ²)/V)))`` holds the true
  difference at every look simultaneously with probability ≥ 1-α, so the experiment may be checked
  as often as one likes (:func:`confidence_sequence`). ``τ`` is set to the smallest effect worth
  detecting, where the test is most powerful.
- The chi-square goodness-of-fit test of the user split (sample-ratio mismatch) with the
  regularised incomplete gamma function (:func:`chi2_sf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_N = NormalDist()


def z_quantile(p: float) -> float:
    """Φ⁻¹(p) of the standard normal."""
    return _N.inv_cdf(p)


def normal_sf(z: float) -> float:
    """P(Z > z) of the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@dataclass(frozen=True)
class RatioEstimate:
    """Σy/Σx over ``n`` users and the delta-method variance of that ratio."""

    n: int
    value: float
    variance: float
    numerator: float
    denominator: float

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)

    def interval(self, alpha: float) -> tuple[float, float]:
        h = z_quantile(1 - alpha / 2) * self.se
        return self.value - h, self.value + h


def ratio_estimate(y: np.ndarray, x: np.ndarray) -> RatioEstimate:
    """Ratio of per-user sums with its delta-method variance.

    Args:
        y: (n,) per-user numerators (clicks, or 1 if the user clicked).
        x: (n,) per-user denominators (impressions, or 1 per user), all > 0.
    """
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    n = len(y)
    if n == 0 or x.sum() <= 0:
        return RatioEstimate(n, math.nan, math.nan, float(y.sum()), float(x.sum()))
    r = y.sum() / x.sum()
    if n < 2:
        return RatioEstimate(n, float(r), math.inf, float(y.sum()), float(x.sum()))
    resid = y - r * x  # (n,) the linearised per-user contribution
    var = resid.var(ddof=1) / (n * x.mean() ** 2)
    return RatioEstimate(n, float(r), float(var), float(y.sum()), float(x.sum()))


@dataclass(frozen=True)
class Difference:
    """Treatment minus control, with both intervals and both p-values."""

    diff: float
    se: float
    ci: tuple[float, float]  # fixed-horizon, at level 1-alpha
    cs: tuple[float, float]  # always-valid (confidence sequence), at level 1-alpha
    p_value: float  # fixed-horizon two-sided
    always_valid_p: float  # mSPRT
    lift: float  # diff / control
    lift_ci: tuple[float, float]  # fixed-horizon interval of the relative lift (delta method)
    tau: float


def confidence_sequence(diff: float, variance: float, tau: float, alpha: float) -> tuple[float, float]:
    """Always-valid interval of the normal-mixture mSPRT (module docstring)."""
    if not (variance > 0 and math.isfinite(variance)) or tau <= 0:
        return -math.inf, math.inf
    t2 = tau * tau
    h = math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))
    return diff - h, diff + h


def msprt_p_value(diff: float, variance: float, tau: float) -> float:
    """1 / Λ of the normal-mixture likelihood ratio against Δ = 0, capped at 1."""
    if not (variance > 0 and math.isfinite(variance)) or tau <= 0:
        return 1.0
    t2 = tau * tau
    log_lambda = 0.5 * math.log(variance / (variance + t2)) + diff * diff * t2 / (2 * variance * (variance + t2))
    return float(min(1.0, math.exp(-log_lambda)))


def compare(treatment: RatioEstimate, control: RatioEstimate, alpha: float, tau: float) -> Difference:
    """Difference of two independent ratio estimates with fixed and always-valid inference."""
    d = treatment.value - control.value
    var = treatment.variance + control.variance
    se = math.sqrt(var) if math.isfinite(var) else math.inf
    z = z_quantile(1 - alpha / 2)
    ci = (d - z * se, d + z * se)
    p = 2 * normal_sf(abs(d) / se) if se > 0 and math.isfinite(se) else 1.0
    if control.value > 0 and math.isfinite(var):
        lift = treatment.value / control.value - 1
        # Var(T/C) ≈ Var(T)/C² + T² Var(C)/C⁴
        lift_se = math.sqrt(treatment.variance / control.value ** 2
                            + treatment.value ** 2 * control.variance / control.value ** 4)
        lift_ci = (lift - z * lift_se, lift + z * lift_se)
    else:
        lift, lift_ci = math.nan, (math.nan, math.nan)
    return Difference(diff=d, se=se, ci=ci, cs=confidence_sequence(d, var, tau, alpha), p_value=p,
                      always_valid_p=msprt_p_value(d, var, tau), lift=lift, lift_ci=lift_ci, tau=tau)


def required_sample_size(per_user_variance: float, mean_denominator: float, effect: float,
                         alpha: float, power: float) -> int:
    """Users per arm for a two-sided fixed-horizon test to detect ``effect`` (absolute) with ``power``.

    ``per_user_variance`` is Var(y_u - R x_u) of the control, ``mean_denominator`` its x̄.
    """
    if effect <= 0 or not per_user_variance > 0 or mean_denominator <= 0:
        return 0
    z = z_quantile(1 - alpha / 2) + z_quantile(power)
    return math.ceil(2 * z * z * per_user_variance / (mean_denominator ** 2 * effect ** 2))


# --------------------------------------------------------------------------------- chi-square


def _gammainc_lower_series(a: float, x: float) -> float:
    term = total = 1.0 / a
    ap = a
    for _ in range(10_000):
        ap += 1
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gammainc_upper_cf(a: float, x: float) -> float:
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def chi2_sf(x: float, df: int) -> float:
    """P(χ²_df > x): the regularised upper incomplete gamma Q(df/2, x/2)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if x <= 0:
        return 1.0
    a, h = df / 2.0, x / 2.0
    if h < a + 1:
        return max(0.0, 1.0 - _gammainc_lower_series(a, h))
    return min(1.0, _gammainc_upper_cf(a, h))


@dataclass(frozen=True)
class SRMResult:
    observed: dict[str, int]
    expected_share: dict[str, float]
    chi2: float
    df: int
    p_value: float
    threshold: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.threshold


def sample_ratio_test(observed: dict[str, int], expected_share: dict[str, float], threshold: float) -> SRMResult:
    """Chi-square goodness of fit of the users per arm against the configured split."""
    total = sum(observed.values())
    chi2 = 0.0
    for name, share in expected_share.items():
        e = share * total
        if e > 0:
            chi2 += (observed.get(name, 0) - e) ** 2 / e
    df = max(1, len(expected_share) - 1)
    p = chi2_sf(chi2, df) if total > 0 else 1.0
    return SRMResult(dict(observed), dict(expected_share), chi2, df, p, threshold)
