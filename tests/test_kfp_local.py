"""The pipelines run on this machine by kfp.local (``pipelines.local``, one subprocess per task) on the
toy dataset: what they write, what a re-run reuses, what a changed parameter redoes, and what a failed
step reports and leaves behind. (The ``linkedout`` pipeline end to end, serving included, is
``tests/test_e2e.py``.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from linkedout.job.step import StepFailed
from pipelines import local

#: A cheap extraction (2 layers, 2 frames, 8 tokens) in shards of 8 videos (the fields not given keep
#: ExtractionConfig's defaults), two extraction tasks.
FAST = {"layers": [0, 4], "num_frames": 2, "tokens": 8, "text_tokens": 2, "shard_size": 8, "decode_workers": 0,
        "batch_size": 8}
EXTRACT = {"extraction": FAST, "extract_workers": 2, "extract_gpus": 0, "preset": ""}


def _mtimes(paths: Any) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def extracted(toy: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    work = tmp_path_factory.mktemp("extract")
    out = local.run("extract", {"workdir": str(work), "dataset": str(toy.data), **EXTRACT}, work, echo=False)
    return work, out


def test_extract_pipeline_writes_every_shard_in_parallel_groups(extracted: tuple[Path, dict[str, Any]],
                                                                 toy: Any) -> None:
    from linkedout.shards import FeatureReader

    work, out = extracted
    assert out["Output"] == str(work / "features")
    reader = FeatureReader(work / "features")
    assert sorted(reader.ids) == sorted(FeatureReader(toy.features).ids)  # every video of the dataset
    assert list(reader.spec.layers) == [0, 4] and reader.spec.tokens == 8
    plan = json.loads((work / "pipeline" / "shard-plan.json").read_text())
    assert len(plan["groups"]) == 2 and sorted(s for group in plan["groups"] for s in group) == sorted(int(s) for s in plan["shards"])
    # each task's whole output is kept, and its own lines name it
    logs = sorted(p.name for p in (work / "kfp" / "logs").rglob("*.log"))
    assert logs == ["collect-index.log", "extract-shards[0].log", "extract-shards[1].log", "plan-shards.log",
                    "validate-dataset.log"]


def test_extract_rerun_skips_complete_shards_and_another_config_is_refused(
        extracted: tuple[Path, dict[str, Any]], toy: Any) -> None:
    work, _ = extracted
    shards = _mtimes((work / "features").rglob("shard-*"))
    assert shards
    local.run("extract", {"workdir": str(work), "dataset": str(toy.data), **EXTRACT}, work, echo=False)
    assert _mtimes(shards) == shards  # nothing re-extracted
    plan = json.loads((work / "pipeline" / "shard-plan.json").read_text())
    assert plan["pending"] == []
    with pytest.raises(StepFailed) as info:
        local.run("extract", {"workdir": str(work), "dataset": str(toy.data), **EXTRACT, "extraction": {**FAST, "tokens": 4}}, work,
                  echo=False)
    e = info.value
    assert e.step == "plan-shards" and e.error_type == "StoreMismatch" and "--force" in e.message
    assert Path(e.log or "").is_file()
    assert _mtimes(shards) == shards  # the store of the other config is untouched


def test_an_unknown_extraction_field_is_refused_naming_it(extracted: tuple[Path, dict[str, Any]], toy: Any) -> None:
    work, _ = extracted
    with pytest.raises(StepFailed) as info:
        local.run("extract", {"workdir": str(work), "dataset": str(toy.data), **EXTRACT,
                              "extraction": {**FAST, "frames": 4}}, work, echo=False)
    assert info.value.step == "plan-shards" and "extraction: unknown field(s) ['frames']" in info.value.message


@pytest.fixture(scope="module")
def trained(toy: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """train_and_deploy on the toy features: first with a bad variant (fails at plan-training), then right."""
    work = tmp_path_factory.mktemp("train")
    args = {"workdir": str(work), "dataset": str(toy.data), "features": str(toy.features), "training": {"epochs": 1},
            "train_gpus": 0,
            "deploy_to": "none"}
    with pytest.raises(StepFailed) as info:
        local.run("train_and_deploy", {**args, "variant": "no_such_model"}, work, echo=False)
    split_after_failure = _mtimes((work / "split").iterdir())
    out = local.run("train_and_deploy", {**args, "variant": "sasrec_id"}, work, echo=False)
    return {"work": work, "args": {**args, "variant": "sasrec_id"}, "failure": info.value,
            "split_after_failure": split_after_failure, "out": out}


def test_a_failed_step_stops_the_run_with_its_own_error_and_leaves_earlier_outputs(trained: dict[str, Any]) -> None:
    e = trained["failure"]
    assert e.step == "plan-training" and e.error_type == "ValueError" and "no_such_model" in e.message
    assert str(e).startswith("step plan-training failed: ValueError:") and e.log in str(e)
    assert "Traceback" in Path(e.log).read_text()
    work = trained["work"]
    # the steps before it wrote their outputs, and the next run reused them
    assert trained["split_after_failure"] and _mtimes(trained["split_after_failure"]) == trained["split_after_failure"]
    assert not (work / "runs" / "no_such_model").exists()


def test_train_and_deploy_trains_evaluates_and_reports(trained: dict[str, Any]) -> None:
    work = trained["work"]
    ev = json.loads((work / "runs" / "sasrec_id" / "eval.json").read_text())
    assert 0 <= ev["full"]["overall"]["HR@10"] <= 1
    summary = json.loads((work / "summary.json").read_text())
    assert [row["model"] for row in summary] == [ev["model"]]
    assert (work / "report.html").is_file()
    # KFP's own records: the Output[Model] checkpoint, the Output[Metrics] and the Output[HTML] report
    runs = work / "kfp" / "runs"
    assert list(runs.rglob("model/best.pt")) or list(runs.rglob("model/*.pt"))
    outputs = [json.loads(p.read_text()) for p in runs.rglob("evaluate/executor_output.json")]
    logged = [a["metadata"] for o in outputs for a in o.get("artifacts", {}).get("metrics", {}).get("artifacts", [])]
    assert len(logged) == 1  # the evaluate task's Output[Metrics] holds the test figures of eval.json
    assert logged[0]["HR@10"] == ev["full"]["overall"]["HR@10"] and logged[0]["model"] == ev["model"]
    assert list(runs.rglob("html"))
    assert not (work / "model_repository").exists()  # deploy_to=none: nothing published


@pytest.mark.slow  # three more pipeline runs; the default run's test_e2e re-runs the main job and checks the reuse
def test_rerun_reuses_training_and_a_changed_seed_is_refused_then_redone_with_force(trained: dict[str, Any]) -> None:
    work, args = trained["work"], trained["args"]
    run = work / "runs" / "sasrec_id"
    kept = _mtimes([*run.rglob("*.pt"), run / "eval.json", work / "report.html", *(work / "split").iterdir()])
    local.run("train_and_deploy", args, work, echo=False)
    assert _mtimes(kept) == kept  # the same inputs: nothing trained, evaluated or written again
    before = (run / "eval.json").read_text()
    with pytest.raises(StepFailed) as info:
        local.run("train_and_deploy", {**args, "training": {"epochs": 1, "seed": 43}}, work, echo=False)
    assert info.value.step == "plan-training" and info.value.error_type == "StageMismatch"
    assert "train.seed: 42 -> 43" in info.value.message and "--force" in info.value.message
    assert (run / "eval.json").read_text() == before  # the old results stay, and are not reported as new
    local.run("train_and_deploy", {**args, "training": {"epochs": 1, "seed": 43}, "force": True}, work, echo=False)
    assert json.loads((run / "eval.json").read_text())["seed"] == 43
    summary = json.loads((work / "summary.json").read_text())
    assert summary[0]["overall"] == json.loads((run / "eval.json").read_text())["full"]["overall"]
    split = [p for p in kept if p.parent == work / "split"]
    assert _mtimes(split) == {p: kept[p] for p in split}  # only what the seed changes was redone


def test_extract_of_another_dataset_into_the_store_is_refused(extracted: tuple[Path, dict[str, Any]],
                                                              tmp_path: Path) -> None:
    from linkedout.data.synth import SynthConfig, generate
    from linkedout.shards import FeatureReader

    work, _ = extracted
    ids = sorted(FeatureReader(work / "features").ids)
    shards = _mtimes((work / "features").rglob("shard-*"))
    other = generate(tmp_path / "other", SynthConfig.preset("toy", seed=9, workers=0))  # same ids, other videos
    with pytest.raises(StepFailed, match="another dataset") as info:
        local.run("extract", {"workdir": str(work), "dataset": str(other), **EXTRACT}, work, echo=False)
    assert info.value.step == "plan-shards" and info.value.error_type == "StoreMismatch"
    assert sorted(FeatureReader(work / "features").ids) == ids and _mtimes(shards) == shards  # nothing mixed in
