"""The experiment file (validated on load, errors naming the field), the routing config, the bucketing rule."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from linkedout.ab import load_experiment
from linkedout.ab.experiment import experiment_from_dict, parse_duration
from linkedout.ab.routing import assign_arm, bucket, bucket_bounds, routing_config, write_routing_config
from linkedout.cli import main

GOOD = {
    "name": "ranker-v2-vs-v1",
    "salt": "2026-12-ranker",
    "storage_uri": "s3://linkedout-models/model_repository",
    "variants": [{"name": "control", "model": "linkedout", "version": None, "weight": 50},
                 {"name": "treatment", "model": "hybrid", "version": 3, "weight": 50}],
    "primary_metric": "ctr",
    "attribution_window": "30m",
    "guardrails": {"p99_latency_ms": 12, "error_rate": 0.01},
    "min_sample_size": 5000,
    "duration": "7d",
    "max_duration": "28d",
}


def write(tmp_path: Path, raw: object) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_a_good_file_loads(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, GOOD))
    assert exp.name == "ranker-v2-vs-v1" and exp.control_arm.name == "control"
    assert [v.name for v in exp.treatments] == ["treatment"]
    assert exp.attribution_window_s == 1800 and exp.duration_s == 7 * 86400 and exp.max_duration_s == 28 * 86400
    assert exp.shares() == {"control": 0.5, "treatment": 0.5}
    assert exp.arm("treatment").version == 3


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d.pop("salt"), "experiment.salt"),
    (lambda d: d.update(salt=""), "experiment.salt"),
    (lambda d: d.update(name="Has Spaces"), "experiment.name"),
    (lambda d: d.update(variants=d["variants"][:1]), "experiment.variants"),
    (lambda d: d["variants"][1].update(weight=-3), r"experiment.variants\[1\].weight"),
    (lambda d: d["variants"][1].update(weight=1.5), r"experiment.variants\[1\].weight"),
    (lambda d: d["variants"][1].update(version=0), r"experiment.variants\[1\].version"),
    (lambda d: d["variants"][1].update(name="control"), "names must be unique"),
    (lambda d: d["variants"][1].update(model="linkedout", version=None), "differ in model or version"),
    (lambda d: d["variants"][0].update(wieght=50), r"experiment.variants\[0\] has unknown field"),
    (lambda d: d["variants"][0].pop("model"), r"experiment.variants\[0\].model is required"),
    (lambda d: d.update(primary_metric="revenue"), "experiment.primary_metric"),
    (lambda d: d.update(guardrails={"p99_latency_ms": 0}), "experiment.guardrails.p99_latency_ms"),
    (lambda d: d.update(guardrails={"error_rate": 2}), "experiment.guardrails.error_rate"),
    (lambda d: d.update(guardrails={"p99": 5}), "experiment.guardrails has unknown field"),
    (lambda d: d.update(min_sample_size=0), "experiment.min_sample_size"),
    (lambda d: d.update(duration="a week"), "experiment.duration"),
    (lambda d: d.update(max_duration="1d"), "experiment.max_duration must be >= duration"),
    (lambda d: d.update(alpha=0.7), "experiment.alpha"),
    (lambda d: d.update(control="nobody"), "experiment.control"),
    (lambda d: d.update(storage_uri="/a/local/path"), "experiment.storage_uri"),
    (lambda d: d.update(canary=10), "unknown field"),
])
def test_bad_values_name_the_field(tmp_path: Path, edit: object, field: str) -> None:
    import copy

    raw = copy.deepcopy(GOOD)
    edit(raw)  # type: ignore[operator]
    with pytest.raises(ValueError, match=field):
        load_experiment(write(tmp_path, raw))


def test_arms_and_the_older_variants_key_read_the_same(tmp_path: Path) -> None:
    raw = {k: v for k, v in GOOD.items() if k != "variants"}
    exp = experiment_from_dict({**raw, "arms": GOOD["variants"]})
    assert exp == experiment_from_dict(GOOD)
    assert [a.name for a in exp.arms] == ["control", "treatment"] and exp.arm("treatment").model == "hybrid"
    with pytest.raises(ValueError, match=r"experiment.arms\[1\].weight"):
        experiment_from_dict({**raw, "arms": [GOOD["variants"][0], dict(GOOD["variants"][1], weight=0)]})  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="both arms and variants"):
        experiment_from_dict({**GOOD, "arms": GOOD["variants"]})
    with pytest.raises(ValueError, match=r"experiment\.arms is required"):
        experiment_from_dict(raw)


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="experiment file not found"):
        load_experiment(tmp_path / "missing.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_experiment(p)
    p.write_text("- a list\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_experiment(p)


def test_durations() -> None:
    assert parse_duration("90s", "f") == 90 and parse_duration("2h", "f") == 7200 and parse_duration(45, "f") == 45
    assert parse_duration("1w", "f") == 604800 and parse_duration("250ms", "f") == 0.25
    for bad in ("-1h", "0", "soon", True):
        with pytest.raises(ValueError, match="f "):
            parse_duration(bad, "f")


def test_routing_config_is_the_documented_format(tmp_path: Path) -> None:
    exp = experiment_from_dict(GOOD)
    cfg = routing_config(exp)
    assert cfg == {"experiment": "ranker-v2-vs-v1", "salt": "2026-12-ranker",
                   "variants": [{"name": "control", "model": "linkedout", "version": None, "weight": 50},
                                {"name": "treatment", "model": "hybrid", "version": 3, "weight": 50}]}
    path = write_routing_config(exp, tmp_path / "routing.yaml")
    assert yaml.safe_load(path.read_text()) == cfg


def test_bucketing_is_the_documented_sha256_rule_sticky_and_split_as_configured() -> None:
    salt = "s1"
    assert bucket(salt, "42") == int(hashlib.sha256(b"s1:42").hexdigest(), 16) % 10000
    assert bucket(salt, 42) == bucket(salt, "42")  # INT64 and BYTES ids agree
    assert bucket_bounds([50, 50]) == [5000, 10000] and bucket_bounds([1, 2]) == [3333, 10000]
    exp = experiment_from_dict({**GOOD, "variants": [dict(GOOD["variants"][0], weight=20),  # type: ignore[call-overload]
                                                     dict(GOOD["variants"][1], weight=80)]})  # type: ignore[call-overload]
    users = [f"user-{i}" for i in range(20000)]
    got = [assign_arm(u, exp.salt, exp.arms).name for u in users]
    share = got.count("treatment") / len(got)
    assert abs(share - 0.8) < 0.012  # ~4 standard errors
    assert got == [assign_arm(u, exp.salt, exp.arms).name for u in users]  # sticky
    other = [assign_arm(u, "another-salt", exp.arms).name for u in users]
    assert sum(a != b for a, b in zip(got, other)) > 0.2 * len(users)  # a new salt reshuffles


def test_ab_render_writes_routing_and_applicable_manifests(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    exp_path = write(tmp_path, GOOD)
    out = tmp_path / "out"
    assert main(["ab", "render", str(exp_path), "--out", str(out), "--canary-percent", "5",
                 "--release", "hybrid-v3", "--namespace", "team-a"]) == 0
    routing = yaml.safe_load((out / "routing.yaml").read_text())
    assert routing["experiment"] == "ranker-v2-vs-v1"
    cm, isvc = list(yaml.safe_load_all((out / "manifests.yaml").read_text()))
    assert cm["kind"] == "ConfigMap" and cm["metadata"] == {"name": "linkedout-routing", "namespace": "team-a",
                                                             "labels": {"app.kubernetes.io/part-of": "linkedout"}}
    assert yaml.safe_load(cm["data"]["routing.yaml"]) == routing
    assert isvc["metadata"]["namespace"] == "team-a"
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 5
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == GOOD["storage_uri"]
    assert main(["ab", "render", str(exp_path), "--out", str(out), "--routing-only"]) == 0
    assert [d["kind"] for d in yaml.safe_load_all((out / "manifests.yaml").read_text())] == ["ConfigMap"]
    bad = write(tmp_path, {**GOOD, "salt": ""})
    assert main(["ab", "render", str(bad), "--out", str(out)]) == 2
    assert "experiment.salt" in capsys.readouterr().err
