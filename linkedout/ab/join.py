"""Joining an experiment's logs: who was exposed to which arm, and which clicks count.

Request records of the experiment give each user an arm (the first one seen: users seen under two
arms break stickiness, are counted as crossovers and left out) and their impressions (served video
ids). Each interaction is attributed to the request it came from (``request_id``, else the user's
latest request before it that showed the video, within the attribution window); one click per
(request, video). The request log names the arm in its ``variant`` field.

:func:`per_user_metric` turns the join into the per-user (numerator, denominator) arrays of a
primary metric that ``linkedout.ab.analysis`` estimates and compares.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from linkedout.ab.experiment import Experiment
from linkedout.ab.logs import InteractionLog, RequestLog


@dataclass
class JoinedLogs:
    """The experiment's exposures and attributed clicks, as arrays indexed by user.

    ``user_arm`` (U,) index into ``arms``; ``first_ts`` (U,) first exposure (ms);
    ``req_user`` / ``req_ts`` / ``req_impressions`` (R,) served requests; ``click_user`` /
    ``click_ts`` (C,) attributed clicks.
    """

    arms: list[str]
    user_ids: list[str]
    user_arm: np.ndarray
    first_ts: np.ndarray
    req_user: np.ndarray
    req_ts: np.ndarray
    req_impressions: np.ndarray
    click_user: np.ndarray
    click_ts: np.ndarray
    crossover_users: int = 0
    other_experiment_rows: int = 0
    unknown_arm_rows: int = 0
    interactions: int = 0
    unattributed: int = 0  # interactions of exposed users that match no served recommendation
    outside_users: int = 0  # interactions of users not in the experiment
    # guardrail inputs, per arm: latencies of served requests, counts of all and failed rows
    latencies: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _Exposures:
    """The experiment's request records read in log order: users, their arm, their served requests."""

    arms: list[str]
    user_index: dict[str, int] = field(default_factory=dict)  # user id -> user
    user_arm: list[int] = field(default_factory=list)
    first_ts: list[int] = field(default_factory=list)
    crossed: set[int] = field(default_factory=set)
    per_user: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # user -> [(ts, request row)]
    by_request: dict[tuple[str, str], int] = field(default_factory=dict)  # (request id, user id) -> row
    served_rows: list[int] = field(default_factory=list)
    other: int = 0
    unknown: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _Clicks:
    user: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    interactions: int = 0
    unattributed: int = 0
    outside: int = 0


def join_logs(exp: Experiment, requests: RequestLog, interactions: InteractionLog,
              start_ms: int | None = None, end_ms: int | None = None) -> JoinedLogs:
    """Join the request and interaction logs of ``exp`` (module docstring)."""
    ex = _read_exposures(exp, requests, start_ms, end_ms)
    clicks = _attribute_clicks(exp, requests, interactions, ex, start_ms, end_ms)
    row_user = {r: ex.user_index[requests.user_id[r]] for r in ex.served_rows}
    keep = np.array([u not in ex.crossed for u in range(len(ex.user_arm))], dtype=bool)
    req_user = np.array([row_user[r] for r in ex.served_rows], dtype=np.int64)
    req_keep = keep[req_user] if len(req_user) else np.zeros(0, dtype=bool)
    return JoinedLogs(
        arms=ex.arms,
        user_ids=list(ex.user_index),
        user_arm=np.asarray(ex.user_arm, dtype=np.int64),
        first_ts=np.asarray(ex.first_ts, dtype=np.int64),
        req_user=req_user[req_keep],
        req_ts=np.array([requests.ts[r] for r in ex.served_rows], dtype=np.int64)[req_keep],
        req_impressions=np.array([len(requests.items[r]) for r in ex.served_rows], dtype=np.int64)[req_keep],
        click_user=np.asarray(clicks.user, dtype=np.int64),
        click_ts=np.asarray(clicks.ts, dtype=np.int64),
        crossover_users=len(ex.crossed), other_experiment_rows=ex.other, unknown_arm_rows=ex.unknown,
        interactions=clicks.interactions, unattributed=clicks.unattributed, outside_users=clicks.outside,
        latencies={a: np.asarray(x, dtype=np.float64) for a, x in ex.latencies.items()}, rows=ex.rows,
        errors=ex.errors,
    )


def _read_exposures(exp: Experiment, requests: RequestLog, start_ms: int | None,
                    end_ms: int | None) -> _Exposures:
    """The request records of ``exp`` in the window: each user's first arm, crossovers, served rows."""
    arms = [a.name for a in exp.arms]
    aindex = {a: i for i, a in enumerate(arms)}
    ex = _Exposures(arms, latencies={a: [] for a in arms}, rows=dict.fromkeys(arms, 0),
                    errors=dict.fromkeys(arms, 0))
    for r in range(len(requests)):
        ts = requests.ts[r]
        if (start_ms is not None and ts < start_ms) or (end_ms is not None and ts > end_ms):
            continue
        if requests.experiment[r] != exp.name:
            ex.other += 1
            continue
        a = requests.variant[r]
        if a not in aindex:
            ex.unknown += 1
            continue
        ex.rows[a] += 1
        if requests.error[r] is not None:
            ex.errors[a] += 1
            continue
        ex.latencies[a].append(requests.latency_ms[r])
        uid = requests.user_id[r]
        u = ex.user_index.get(uid)
        if u is None:
            u = ex.user_index[uid] = len(ex.user_arm)
            ex.user_arm.append(aindex[a])
            ex.first_ts.append(ts)
        else:
            if ex.user_arm[u] != aindex[a]:
                ex.crossed.add(u)
            ex.first_ts[u] = min(ex.first_ts[u], ts)
        ex.served_rows.append(r)
        ex.per_user.setdefault(u, []).append((ts, r))
        ex.by_request[(requests.request_id[r], uid)] = r
    for lst in ex.per_user.values():
        lst.sort()
    return ex


def _attribute_clicks(exp: Experiment, requests: RequestLog, interactions: InteractionLog, ex: _Exposures,
                      start_ms: int | None, end_ms: int | None) -> _Clicks:
    """Each interaction in the window (plus the attribution window) attributed to a served request, once."""
    window_ms = exp.attribution_window_s * 1000.0
    item_sets: dict[int, frozenset[int]] = {}

    def items_of(r: int) -> frozenset[int]:
        s = item_sets.get(r)
        if s is None:
            s = item_sets[r] = frozenset(requests.items[r])
        return s

    clicked: set[tuple[int, int]] = set()
    out = _Clicks()
    for i in range(len(interactions)):
        ts = interactions.ts[i]
        if (start_ms is not None and ts < start_ms) or (end_ms is not None and ts > end_ms + window_ms):
            continue
        out.interactions += 1
        uid = interactions.user_id[i]
        u = ex.user_index.get(uid)
        if u is None or u in ex.crossed:
            out.outside += 1
            continue
        video = interactions.video_id[i]
        hit: int | None = None
        rid = interactions.request_id[i]
        if rid is not None and (rid, uid) in ex.by_request:
            r = ex.by_request[(rid, uid)]
            if video in items_of(r) and 0 <= ts - requests.ts[r] <= window_ms:
                hit = r
        else:
            reqs = ex.per_user[u]
            j = bisect.bisect_right(reqs, (ts, math.inf)) - 1
            while j >= 0 and ts - reqs[j][0] <= window_ms:
                if video in items_of(reqs[j][1]):
                    hit = reqs[j][1]
                    break
                j -= 1
        if hit is None:
            out.unattributed += 1
            continue
        if (hit, video) in clicked:
            continue
        clicked.add((hit, video))
        out.user.append(u)
        out.ts.append(ts)
    return out


def per_user_metric(j: JoinedLogs, metric: str, until_ms: float = math.inf) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per arm, the per-user (numerator, denominator) arrays of ``metric`` up to ``until_ms``."""
    n = len(j.user_arm)
    has_requests = np.bincount(j.req_user, minlength=n) > 0  # crossover users have none left
    imps = np.bincount(j.req_user[j.req_ts <= until_ms], weights=j.req_impressions[j.req_ts <= until_ms],
                       minlength=n)
    clicks = np.bincount(j.click_user[j.click_ts <= until_ms], minlength=n).astype(np.float64)
    exposed = has_requests & (j.first_ts <= until_ms)
    out = {}
    for ai, a in enumerate(j.arms):
        m = exposed & (j.user_arm == ai)
        if metric == "ctr":
            y, x = clicks[m], imps[m]
        elif metric == "click_users":
            y, x = (clicks[m] > 0).astype(np.float64), np.ones(int(m.sum()))
        elif metric == "clicks_per_user":
            y, x = clicks[m], np.ones(int(m.sum()))
        else:
            raise ValueError(f"unknown primary metric {metric!r}")
        out[a] = (y, x)
    return out
