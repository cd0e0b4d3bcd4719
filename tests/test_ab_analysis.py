"""``ab analyze`` on simulated logs with a known truth: intervals, lift, SRM, guardrails, peeking, decision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from linkedout.ab.analysis import KEEP_RUNNING, SHIP, STOP, analyze, parse_error_metrics
from linkedout.ab.experiment import Experiment, Guardrails, experiment_from_dict
from linkedout.ab.logs import LogError, read_interaction_log, read_request_log
from linkedout.ab.simulate import synthetic_logs
from linkedout.ab.stats import chi2_sf, compare, confidence_sequence, ratio_estimate, sample_ratio_test
from linkedout.cli import main

BASE = {
    "name": "ranker-test", "salt": "s-test",
    "variants": [{"name": "control", "model": "linkedout", "weight": 50},
                 {"name": "treatment", "model": "hybrid", "version": 2, "weight": 50}],
    "min_sample_size": 1000, "duration": "12h", "max_duration": "2d",
    "guardrails": {"p99_latency_ms": 12, "error_rate": 0.01},
}


def experiment(**overrides: object) -> Experiment:
    return experiment_from_dict({**BASE, **overrides})


def run(exp: Experiment, tmp_path: Path, **kw: object) -> tuple[object, dict]:
    truth = synthetic_logs(exp, tmp_path, **kw)  # type: ignore[arg-type]
    a = analyze(exp, read_request_log(tmp_path / "requests.jsonl"),
                read_interaction_log(tmp_path / "interactions.jsonl"))
    return a, truth


# --------------------------------------------------------------------------------- statistics


def test_chi2_sf_matches_known_values() -> None:
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-6)
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05, rel=1e-6)
    assert chi2_sf(10.827566170662733, 1) == pytest.approx(0.001, rel=1e-6)
    assert chi2_sf(100.0, 10) == pytest.approx(1.2596e-16, rel=1e-3)
    assert chi2_sf(0.5, 3) == pytest.approx(0.918891, rel=1e-5)
    assert chi2_sf(0, 1) == 1.0


def test_ratio_interval_covers_the_truth_at_its_level() -> None:
    # 400 independent experiments with a known difference: the 95 % interval should cover ~95 %.
    rng = np.random.default_rng(3)
    covered = covered_cs = 0
    trials, n = 400, 800
    for _ in range(trials):
        ests = []
        for p in (0.05, 0.06):
            imps = rng.integers(5, 40, size=n)  # (n,) per-user impressions
            f = rng.lognormal(-0.125, 0.5, size=n)  # (n,) per-user propensity, mean 1
            clicks = rng.binomial(imps, np.minimum(1, p * f))
            ests.append(ratio_estimate(clicks, imps))
        d = compare(ests[1], ests[0], 0.05, tau=0.05 * ests[0].value)
        covered += d.ci[0] <= 0.01 <= d.ci[1]
        covered_cs += d.cs[0] <= 0.01 <= d.cs[1]
    assert 0.92 <= covered / trials <= 0.98
    assert covered_cs / trials >= 0.95  # the always-valid interval is wider


def test_peeking_with_the_fixed_interval_inflates_false_positives_the_sequence_does_not() -> None:
    # A/A tests looked at 20 times each: stopping at the first look whose interval excludes 0.
    rng = np.random.default_rng(11)
    trials, looks, per_look = 300, 20, 60
    naive = seq = 0
    for _ in range(trials):
        a = rng.binomial(20, 0.05, size=looks * per_look).astype(float)
        b = rng.binomial(20, 0.05, size=looks * per_look).astype(float)
        x = np.full(looks * per_look, 20.0)
        hit_naive = hit_seq = False
        for k in range(1, looks + 1):
            n = k * per_look
            d = compare(ratio_estimate(b[:n], x[:n]), ratio_estimate(a[:n], x[:n]), 0.05, tau=0.1 * 0.05)
            hit_naive |= d.ci[0] > 0 or d.ci[1] < 0
            hit_seq |= d.cs[0] > 0 or d.cs[1] < 0
        naive += hit_naive
        seq += hit_seq
    assert naive / trials > 0.12  # far above the nominal 5 %
    assert seq / trials <= 0.05


def test_confidence_sequence_shrinks_and_contains_the_estimate() -> None:
    widths = [confidence_sequence(0.01, v, 0.005, 0.05) for v in (1e-4, 1e-5, 1e-6)]
    spans = [hi - lo for lo, hi in widths]
    assert spans[0] > spans[1] > spans[2]
    assert all(lo < 0.01 < hi for lo, hi in widths)
    assert confidence_sequence(0.0, 0.0, 0.1, 0.05) == (-math.inf, math.inf)


def test_srm_test() -> None:
    ok = sample_ratio_test({"a": 5020, "b": 4980}, {"a": 0.5, "b": 0.5}, 0.001)
    assert not ok.mismatch and ok.p_value > 0.5
    bad = sample_ratio_test({"a": 5300, "b": 4700}, {"a": 0.5, "b": 0.5}, 0.001)
    assert bad.mismatch and bad.chi2 == pytest.approx(36.0)


# ------------------------------------------------------------------------ analysis end to end


def test_known_lift_is_inside_the_interval_and_ships(tmp_path: Path) -> None:
    exp = experiment()
    a, truth = run(exp, tmp_path, users=6000, ctr={"control": 0.05, "treatment": 0.058}, duration_s=86400, seed=5)
    c = a.comparison("treatment")
    true_diff = truth["difference"]["treatment"]
    assert c.difference.ci[0] <= true_diff <= c.difference.ci[1]
    assert c.difference.cs[0] <= true_diff <= c.difference.cs[1]
    assert c.difference.lift_ci[0] <= 0.16 <= c.difference.lift_ci[1]  # 0.058 / 0.05 - 1
    assert a.arm("control").metric == pytest.approx(0.05, abs=0.004)
    assert not a.srm.mismatch
    assert a.horizon_reached
    assert a.decision.action == SHIP and a.decision.arm == "treatment", a.decision
    assert a.joined["unattributed_interactions"] == 0
    json.dumps(a.to_dict())  # JSON-safe


def test_no_effect_keeps_running_then_stops_at_max_duration(tmp_path: Path) -> None:
    exp = experiment()
    a, _ = run(exp, tmp_path / "a", users=3000, ctr={"control": 0.05, "treatment": 0.05}, duration_s=86400, seed=2)
    assert a.decision.action == KEEP_RUNNING, a.decision
    assert a.comparison("treatment").difference.cs[0] < 0 < a.comparison("treatment").difference.cs[1]
    a, _ = run(exp, tmp_path / "b", users=3000, ctr={"control": 0.05, "treatment": 0.05}, duration_s=3 * 86400,
               seed=2)
    assert a.decision.action == STOP and "max_duration" in a.decision.reasons[0]


def test_a_winner_before_the_horizon_keeps_running(tmp_path: Path) -> None:
    exp = experiment(min_sample_size=50_000)
    a, _ = run(exp, tmp_path, users=6000, ctr={"control": 0.05, "treatment": 0.07}, duration_s=86400, seed=1)
    assert a.comparison("treatment").difference.cs[0] > 0
    assert a.decision.action == KEEP_RUNNING and "horizon is not reached" in a.decision.reasons[0]


def test_a_worse_treatment_is_stopped_early(tmp_path: Path) -> None:
    exp = experiment(duration="30d", max_duration="60d")
    a, _ = run(exp, tmp_path, users=6000, ctr={"control": 0.05, "treatment": 0.035}, duration_s=86400, seed=4)
    assert a.decision.action == STOP and "worse" in a.decision.reasons[0]


def test_sample_ratio_mismatch_stops_the_experiment(tmp_path: Path) -> None:
    exp = experiment()
    a, _ = run(exp, tmp_path, users=6000, ctr={"control": 0.05, "treatment": 0.058},
               shares={"control": 0.55, "treatment": 0.45}, duration_s=86400, seed=5)
    assert a.srm.mismatch and a.srm.p_value < 1e-6
    assert a.decision.action == STOP and "sample-ratio mismatch" in a.decision.reasons[0]


@pytest.mark.parametrize("breach", ["latency", "errors"])
def test_guardrail_breach_stops(tmp_path: Path, breach: str) -> None:
    exp = experiment()
    kw: dict = {"ctr": {"control": 0.05, "treatment": 0.058}, "users": 3000, "duration_s": 86400, "seed": 7}
    if breach == "latency":
        kw["latency_ms"] = {"control": 4.0, "treatment": 9.0}
    else:
        kw["error_rate"] = {"control": 0.0, "treatment": 0.03}
    a, _ = run(exp, tmp_path, **kw)
    t = a.arm("treatment")
    assert t.guardrail_breaches and not a.arm("control").guardrail_breaches
    assert a.decision.action == STOP and "guardrail breached by treatment" in a.decision.reasons[0]
    if breach == "errors":
        assert t.error_rate == pytest.approx(0.03, abs=0.008)


def test_attribution_by_time_window_matches_request_ids(tmp_path: Path) -> None:
    exp = experiment()
    kw = {"users": 2000, "ctr": {"control": 0.05, "treatment": 0.06}, "duration_s": 86400, "seed": 9}
    with_id, _ = run(exp, tmp_path / "id", **kw)
    without, _ = run(exp, tmp_path / "time", with_request_id=False, **kw)
    assert without.arm("treatment").clicks == with_id.arm("treatment").clicks
    assert without.comparison("treatment").difference.diff == pytest.approx(
        with_id.comparison("treatment").difference.diff)


def test_crossover_users_and_other_experiments_are_left_out(tmp_path: Path) -> None:
    exp = experiment()
    synthetic_logs(exp, tmp_path, users=500, duration_s=3600, seed=3)
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    moved = dict(first, variant="treatment" if first["variant"] == "control" else "control", request_id="x1")
    other = dict(first, experiment="another", request_id="x2")
    (tmp_path / "requests.jsonl").write_text("\n".join([*lines, json.dumps(moved), json.dumps(other)]) + "\n")
    a = analyze(exp, read_request_log(tmp_path / "requests.jsonl"), read_interaction_log(tmp_path / "interactions.jsonl"))
    assert a.joined["crossover_users"] == 1 and a.joined["other_experiment_rows"] == 1
    assert sum(v.users for v in a.arms) == 499
    assert any("more than one variant" in w for w in a.warnings)


def test_error_rates_from_a_metrics_scrape() -> None:
    text = """# TYPE linkedout_requests_total counter
linkedout_requests_total{variant="control"} 1000
linkedout_requests_total{variant="treatment"} 1000
# TYPE linkedout_request_errors_total counter
linkedout_request_errors_total{variant="treatment",reason="triton"} 30
linkedout_request_errors_total{variant="treatment",reason="feast"} 10
"""
    req, err = parse_error_metrics(text)
    assert req == {"control": 1000, "treatment": 1000} and err == {"treatment": 40}


def test_bad_logs_are_clear_errors(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    good = {"request_id": "a", "ts": 1, "user_id": "u", "experiment": "e", "variant": "control", "items": [1, 2],
            "latency_ms": 3.0}
    p.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    with pytest.raises(LogError, match=r"r.jsonl:2: not a JSON object"):
        read_request_log(p)
    p.write_text(json.dumps({k: v for k, v in good.items() if k != "variant"}) + "\n")
    with pytest.raises(LogError, match=r"r.jsonl:1: request record without variant"):
        read_request_log(p)
    p.write_text(json.dumps(dict(good, items="1,2")) + "\n")
    with pytest.raises(LogError, match="items must be a list"):
        read_request_log(p)
    p.write_text(json.dumps(good) + "\n" + json.dumps(good)[:20])  # a writer caught mid-append
    assert len(read_request_log(p)) == 1
    p.write_text("INFO kserve started\n" + json.dumps(good) + "\n" + '{"level": "info"}\n')
    assert len(read_request_log(p, mixed=True)) == 1
    q = tmp_path / "i.jsonl"
    q.write_text(json.dumps({"user_id": "u", "ts": 5}) + "\n")
    with pytest.raises(LogError, match="interaction without video_id"):
        read_interaction_log(q)
    with pytest.raises(FileNotFoundError, match="log file not found"):
        read_request_log(tmp_path / "missing.jsonl")


def test_three_variants_split_alpha(tmp_path: Path) -> None:
    exp = experiment(variants=[{"name": "control", "model": "linkedout", "weight": 34},
                               {"name": "b", "model": "hybrid", "weight": 33},
                               {"name": "c", "model": "sasrec-id", "weight": 33}])
    a, truth = run(exp, tmp_path, users=6000, ctr={"control": 0.05, "b": 0.05, "c": 0.06}, duration_s=86400,
                   seed=8)
    assert [c.alpha for c in a.comparisons] == [0.025, 0.025]
    c = a.comparison("c")
    assert c.difference.ci[0] <= truth["difference"]["c"] <= c.difference.ci[1]
    assert a.srm.df == 2


def test_click_users_metric(tmp_path: Path) -> None:
    exp = experiment(primary_metric="click_users")
    a, _ = run(exp, tmp_path, users=3000, ctr={"control": 0.05, "treatment": 0.05}, duration_s=86400, seed=6)
    v = a.arm("control")
    assert 0 < v.metric < 1 and v.users > 1000


def test_cli_analyze_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp_file = tmp_path / "exp.yaml"
    import yaml

    exp_file.write_text(yaml.safe_dump(BASE))
    assert main(["ab", "simulate", str(exp_file), "--offline", "--ctr", "control=0.05,treatment=0.058",
                 "--offline-users", "3000", "--out", str(tmp_path / "sim")]) == 0
    capsys.readouterr()
    assert main(["ab", "analyze", str(exp_file), "--requests", str(tmp_path / "sim" / "requests.jsonl"),
                 "--interactions", str(tmp_path / "sim" / "interactions.jsonl"),
                 "--truth", str(tmp_path / "sim" / "truth.json"), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "decision:" in out and "inside the fixed-horizon interval" in out
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert report["decision"]["action"] in (SHIP, KEEP_RUNNING, STOP)
    assert {v["name"] for v in report["variants"]} == {"control", "treatment"}
    png = (tmp_path / "report" / "analysis.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert main(["ab", "simulate", str(exp_file), "--offline", "--ctr", "control=0.05",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no value for variant(s) treatment" in capsys.readouterr().err
    # the same log rotated by the transformer (--request_log_max_mb) into three files: naming the
    # current one reads all three, oldest first, and gives the same analysis
    lines = (tmp_path / "sim" / "requests.jsonl").read_text().splitlines(keepends=True)
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    third = len(lines) // 3
    for name, part in (("requests.jsonl.2", lines[:third]), ("requests.jsonl.1", lines[third:2 * third]),
                       ("requests.jsonl", lines[2 * third:])):
        (rotated / name).write_text("".join(part))
    assert main(["ab", "analyze", str(exp_file), "--requests", str(rotated / "requests.jsonl"),
                 "--interactions", str(tmp_path / "sim" / "interactions.jsonl"), "--out", str(rotated / "report")]) == 0
    assert "request logs: 3 files, the rotated ones included" in capsys.readouterr().out
    again = json.loads((rotated / "report" / "analysis.json").read_text())
    assert again["variants"] == report["variants"] and again["decision"] == report["decision"]


def test_guardrails_config_type() -> None:
    assert Guardrails().p99_latency_ms == 12.0
