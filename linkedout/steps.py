"""The pipeline steps: one function per Kubeflow component, plain values in and out.

Every component in ``components/`` calls exactly one of these functions and only moves values
between it and KFP (parameters, ``Output[Model]`` paths, ``Output[Metrics]``); the functions call
the main job's stage functions (:mod:`linkedout.pipeline`, :mod:`linkedout.sharding`,
:mod:`linkedout.publish`), whose fingerprints decide what is reused. So the steps are tested
without KFP, and the local run and a cluster run do the same work.

Large data moves as locations (the work directory ``W`` on a shared volume locally or on the
cluster's PVC, a feature store that may be ``s3://``); each step returns a small JSON-able dict.
A step's work directory layout is the main job's (:mod:`linkedout.pipeline`), plus
``W/pipeline/`` (the shard plan).

Each function is wrapped by :func:`step`: in a pipeline task (``LINKEDOUT_LOG_LEVEL`` set by the
pipeline) it configures logging as the CLI does for a command; and when it fails with
``LINKEDOUT_STEP_ERRORS`` set (the local runner sets it), it records the error (type, message,
traceback) in that directory before re-raising, so that the runner stops with the step's own
error rather than KFP's "task failed".
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from linkedout.utils import atomic_write_text, get_logger

log = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Environment: the log level of a step's process (set on every pipeline task).
LOG_LEVEL_ENV = "LINKEDOUT_LOG_LEVEL"
#: Environment: a directory where a failing step records its error (set by the local runner).
ERRORS_ENV = "LINKEDOUT_STEP_ERRORS"


class StepFailed(RuntimeError):
    """A pipeline step failed; the message is the step's own error (type and message) and where its log is."""

    def __init__(self, step: str, error_type: str, message: str, log: str | None = None) -> None:
        self.step = step
        self.error_type = error_type
        self.message = message
        self.log = log
        where = f" (the task's whole output: {log})" if log else ""
        super().__init__(f"step {step} failed: {error_type}: {message}{where}")


def step(name: str, *label_args: str) -> Callable[[F], F]:
    """Mark a step function; ``label_args`` name the arguments shown in its log label (``train[linkedout]``)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            label = name + "".join(f"[{kwargs[a]}]" for a in label_args if a in kwargs)
            level = os.environ.get(LOG_LEVEL_ENV)
            if level:
                _configure_logging(level)
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            except BaseException as e:
                _record_error(label, e)
                raise
            log.info("%s done in %.1f s", label, time.perf_counter() - t0)
            return out

        return cast(F, run)

    return wrap


def _configure_logging(level: str) -> None:
    """As the CLI does for a command (a task's process is a step's entry point); no progress bars: a task's
    output is a log (kfp.local and the cluster collect it line by line), its progress the epoch and shard lines."""
    from linkedout.utils import configure_logging

    configure_logging(level.upper())
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")


def _record_error(label: str, e: BaseException) -> None:
    where = os.environ.get(ERRORS_ENV)
    if not where:
        return
    record = {"step": label, "type": type(e).__name__, "module": type(e).__module__,
              "message": str(e) if not isinstance(e, KeyError) or not e.args else str(e.args[0]),
              "traceback": traceback.format_exc(), "time": time.time(), "pid": os.getpid()}
    with contextlib.suppress(OSError):  # the error itself is what matters; the traceback is in the task's log
        atomic_write_text(Path(where) / f"{time.time_ns()}-{os.getpid()}.json", json.dumps(record, indent=2))


def read_errors(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The error records written by failed steps into ``directory``, oldest first."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


# -------------------------------------------------------------------------------------------- layout


def features_location(workdir: str, features: str) -> str:
    return features or str(Path(workdir) / "features")


def feast_location(workdir: str, feast_repo: str) -> Path:
    return Path(feast_repo) if feast_repo else Path(workdir) / "feast"


def run_dir_of(workdir: str, variant: str) -> Path:
    from linkedout.pipeline import parse_variant

    return Path(workdir) / "runs" / parse_variant(variant).name


def _s3(endpoint: str) -> str | None:
    return endpoint or None


# ---------------------------------------------------------------------------------------------- data


@step("validate-dataset")
def validate_dataset(workdir: str, dataset: str = "", preset: str = "small", force: bool = False) -> dict[str, Any]:
    """The dataset: ``dataset`` (a MicroLens-layout directory) or, when empty, the synthetic ``preset``
    generated at ``W/data`` (reused when it is the same). Tables must be sound; missing or unreadable
    videos are listed here and recorded as failed by the extraction. Returns its location and figures."""
    from linkedout.data.microlens import load_microlens, validate_microlens
    from linkedout.data.stats import dataset_stats, format_stats
    from linkedout.pipeline import check_trainable, dataset_digest, ensure_dataset

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(dataset) if dataset else ensure_dataset(work / "data", preset, force=force)
    if not data.is_dir():
        raise FileNotFoundError(f"dataset directory {data} does not exist")
    report = validate_microlens(data, check_videos=True)
    if report.errors or report.warnings:
        print(report.format(), flush=True)
    validate_microlens(data, check_videos=False).raise_if_errors()
    ds = load_microlens(data, check_videos=False)
    check_trainable(ds.interactions, f"dataset {data}")  # before hours of extraction
    stats = dataset_stats(ds)
    print("== dataset\n" + format_stats(stats), flush=True)
    return {"data": str(data), "name": ds.prefix, "users": int(stats["users"]), "videos": int(stats["items"]),
            "interactions": int(stats["interactions"]), "digest": dataset_digest(data)}


# ---------------------------------------------------------------------------------------- extraction


def extraction_configs(*, layers: Sequence[int], prompts: Sequence[str], frames: int, frame_size: int, tokens: int,
                       text_tokens: int, dtype: str, frame_sampling: str, batch_size: int, shard_size: int,
                       decode_workers: int, backbone: str, backbone_dtype: str, backbone_seed: int,
                       backbone_options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(ExtractionConfig, BackboneConfig)`` from the pipelines' parameters (validated: ``ValueError`` naming the field)."""
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import DEFAULT_PROMPTS, ExtractionConfig

    ecfg = ExtractionConfig(layers=tuple(int(x) for x in layers), prompts=tuple(prompts) or DEFAULT_PROMPTS,
                            num_frames=int(frames), frame_size=int(frame_size), tokens=int(tokens),
                            text_tokens=int(text_tokens), dtype=dtype, frame_sampling=frame_sampling,
                            batch_size=int(batch_size), shard_size=int(shard_size), decode_workers=int(decode_workers))
    options = dict(backbone_options or {})
    unknown = sorted(set(options) - set(BackboneConfig.__dataclass_fields__) | {"source", "dtype", "seed"} & set(options))
    if unknown:
        raise ValueError(f"backbone_options: unknown or reserved fields {unknown} (source, dtype and seed have "
                         "their own parameters)")
    bcfg = BackboneConfig(source=backbone, dtype=backbone_dtype, seed=int(backbone_seed), **options)
    return ecfg, bcfg


@step("plan-shards")
def plan_shards(workdir: str, data: str, features: str = "", *, layers: Sequence[int] = (0, 4, 8, 12, 16, 20),
                prompts: Sequence[str] = (), frames: int = 8, frame_size: int = 224, tokens: int = 64,
                text_tokens: int = 8, dtype: str = "float16", frame_sampling: str = "exact", batch_size: int = 4,
                shard_size: int = 64, decode_workers: int = 2, backbone: str = "tiny", backbone_dtype: str = "auto",
                backbone_seed: int = 0, backbone_options: dict[str, Any] | None = None, groups: int = 1,
                gpus: int = 0, retry_failed: bool = False, force: bool = False, s3_endpoint: str = "") -> dict[str, Any]:
    """Plan the extraction into ``features`` (default ``W/features``): returns the plan's path and one item per
    group of shards (``{"plan", "group", "features"}``: what an extraction task needs)."""
    from linkedout import sharding

    ecfg, bcfg = extraction_configs(layers=layers, prompts=prompts, frames=frames, frame_size=frame_size,
                                    tokens=tokens, text_tokens=text_tokens, dtype=dtype, frame_sampling=frame_sampling,
                                    batch_size=batch_size, shard_size=shard_size, decode_workers=decode_workers,
                                    backbone=backbone, backbone_dtype=backbone_dtype, backbone_seed=backbone_seed,
                                    backbone_options=backbone_options)
    store = features_location(workdir, features)
    path = Path(workdir) / "pipeline" / "shard-plan.json"
    plan = sharding.plan_shards(Path(data), store, ecfg, bcfg, path, groups=max(1, int(groups)), gpus=int(gpus),
                                retry_failed=retry_failed, force=force, s3_endpoint=_s3(s3_endpoint))
    items = [{"plan": str(path), "group": g, "features": store} for g in range(len(plan.groups))]
    return {"plan": str(path), "features": store, "items": items, "shards": len(plan.shards),
            "pending": len(plan.pending), "videos": plan.videos}


@step("extract-shards", "group")
def extract_shards(plan: str, group: int, gpus: int = 0, s3_endpoint: str = "") -> dict[str, Any]:
    """Extract the incomplete shards of one group of the plan (``gpus``: what the task was given, for the log)."""
    from linkedout import sharding

    if gpus:
        import torch

        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if seen < gpus:
            log.warning("the task asked for %d GPU(s) and sees %d", gpus, seen)
    out = sharding.extract_group(plan, int(group), s3_endpoint=_s3(s3_endpoint))
    return {**out, "plan": plan}


@step("collect-index")
def collect_index(results: Sequence[dict[str, Any]], max_failed_share: float = 0.01, s3_endpoint: str = "",
                  plan: str = "") -> dict[str, Any]:
    """The fan-in of the extraction: ``index.json``, ``failures.json``, the failure check; returns the figures.

    ``results``: the extraction tasks' outputs (they name the plan, unless ``plan`` is given)."""
    from linkedout import sharding
    from linkedout.shards import FeatureReader
    from linkedout.shards.info import format_info, info_from_store

    plans = {str(r["plan"]) for r in results if r.get("plan")} | ({plan} if plan else set())
    if len(plans) != 1:
        raise ValueError(f"collect-index: expected the results of one shard plan, got {sorted(plans) or 'none'}")
    plan = plans.pop()
    summary = sharding.collect_index(plan, list(results), max_failed_share=float(max_failed_share),
                                     s3_endpoint=_s3(s3_endpoint))
    if summary.failed:
        print(f"== {len(summary.failed)} videos could not be decoded and have no features "
              f"(all listed in {summary.uri}/failures.json):")
        for vid, why in sorted(summary.failed.items())[:20]:
            print(f"   {vid}: {why}")
    print("== features\n" + format_info(info_from_store(FeatureReader(summary.uri, endpoint_url=_s3(s3_endpoint)))),
          flush=True)
    return {"features": summary.uri, "videos": summary.videos, "failed": len(summary.failed),
            "failed_share": summary.failed_share, "shards": summary.shards, "shards_written": summary.shards_written,
            "encoded": summary.encoded}


# ------------------------------------------------------------------------------------------ training


@step("training-data")
def training_data(workdir: str, data: str, features: str, feast_repo: str = "", force: bool = False,
                  s3_endpoint: str = "") -> dict[str, Any]:
    """The training data from Feast's offline store (the dataset's interactions written there first, then
    read back through Feast) -> the leave-one-out split at ``W/split`` (reused when its inputs are the same)."""
    from linkedout import publish
    from linkedout.pipeline import build_split

    inter = publish.training_interactions(Path(data), feast_location(workdir, feast_repo), force=force)
    split = build_split(Path(data), features, cache_dir=Path(workdir) / "split", s3_endpoint=_s3(s3_endpoint),
                        interactions=inter)
    return {"split": str(Path(workdir) / "split"), "digest": split.digest(), "users": len(split.test.user_ids),
            "videos": split.num_items, "interactions": len(inter)}


def _load_split(split: str) -> Any:
    from linkedout.data.split import SplitData

    return SplitData.load(split)


@step("plan-training")
def plan_training(workdir: str, data: str, features: str, split: str, variants: Sequence[str], seed: int = 42,
                  epochs: int = 100, force: bool = False, s3_endpoint: str = "",
                  model_variant: str = "") -> list[dict[str, str]]:
    """Check every variant's run directory before any training starts: one of other inputs (another seed,
    epochs, split or features) is refused with what differs (``force``: cleared). ``model_variant`` (the
    one to deploy) must be among them. Returns one item per variant: ``{"variant", "data", "features",
    "split"}``, what a training task needs."""
    from linkedout.fingerprint import StageMismatch
    from linkedout.pipeline import RUN_HINT, check_run_dir, item_features_for, parse_variant, plan_run

    if not variants:
        raise ValueError("variants: give at least one model to train")
    names = [parse_variant(v).name for v in variants]  # a bad name fails before any work
    if len(set(names)) != len(names):
        raise ValueError(f"variants: {list(variants)} name a model twice")
    if model_variant and parse_variant(model_variant).name not in names:
        raise ValueError(f"model_variant {model_variant!r} (the model to deploy) is not among the variants "
                         f"{list(variants)}")
    sp = _load_split(split)
    item_features = item_features_for(sp, features, _s3(s3_endpoint))
    problems = []
    for v in variants:
        plan = plan_run(Path(data), features, v, seed=seed, epochs=epochs, split=sp, item_features=item_features)
        try:
            check_run_dir(run_dir_of(workdir, v), plan.fingerprint, force=force, hint=RUN_HINT)
        except StageMismatch as e:
            problems.append(f"{plan.variant.name} ({'; '.join(e.differences[:4])})")
    if problems:
        raise StageMismatch(str(Path(workdir) / "runs"), "trained runs", problems, RUN_HINT)
    return [{"variant": v, "data": data, "features": features, "split": split} for v in variants]


@step("train", "variant")
def train(workdir: str, data: str, features: str, split: str, variant: str, model_dir: str, *, seed: int = 42,
          epochs: int = 100, gpus: int = 1, force: bool = False, s3_endpoint: str = "") -> dict[str, Any]:
    """Train ``variant`` into ``W/runs/<variant>`` on every GPU of the node (``torchrun`` when there are
    several), resuming a killed run and reusing a finished one of the same inputs; copy the best
    checkpoint with its config and fingerprint into ``model_dir`` (the ``Output[Model]``)."""
    import torch

    from linkedout.fingerprint import file_sha256
    from linkedout.pipeline import (
        RUN_HINT,
        _checkpoint_of,
        plan_run,
        prepare_run_dir,
        train_variant,
        training_is_complete,
    )

    run_dir = run_dir_of(workdir, variant)
    sp = _load_split(split)
    plan = plan_run(Path(data), features, variant, seed=seed, epochs=epochs, split=sp, s3_endpoint=_s3(s3_endpoint))
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and visible < gpus and torch.cuda.is_available():
        log.warning("the task asked for %d GPU(s) and sees %d", gpus, visible)
    processes = max(1, min(gpus, visible))  # one process per asked-for GPU it sees (kfp.local sees them all)
    if training_is_complete(run_dir, plan.fingerprint):
        log.info("%s already trained on these inputs (%s); reusing it", plan.variant.name, run_dir)
    elif processes > 1 and not plan.variant.side_info:
        prepare_run_dir(run_dir, plan, Path(data), features, force=force, hint=RUN_HINT)
        _torchrun(run_dir, plan, split, features, processes, s3_endpoint)
    else:
        if processes > 1:
            log.warning("%s reads titles and covers, which the torchrun entry point does not load: one process",
                        plan.variant.name)
        train_variant(Path(data), features, run_dir, variant, seed=seed, epochs=epochs, split=sp,
                      item_features=plan.item_features, force=force, hint=RUN_HINT, s3_endpoint=_s3(s3_endpoint),
                      plan=plan)
    ckpt = _checkpoint_of(run_dir)
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt, out / ckpt.name)
    for name in ("config.json", "fingerprint.json", "result.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").is_file() else {}
    return {"run_dir": str(run_dir), "variant": plan.variant.name, "checkpoint": ckpt.name,
            "checkpoint_sha256": file_sha256(ckpt), "best_metric": result.get("best_metric"),
            "best_epoch": result.get("best_epoch"), "epochs_completed": result.get("epochs_completed"),
            "processes": processes}


def _torchrun(run_dir: Path, plan: Any, split: str, features: str, processes: int, s3_endpoint: str) -> None:
    """``torchrun --nproc-per-node N -m linkedout.training.distributed`` on this node; its output goes to the log."""
    import subprocess
    import sys

    (run_dir / "model_config.json").write_text(json.dumps(plan.model.to_dict()))
    (run_dir / "train_config.json.in").write_text(json.dumps(plan.train.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "linkedout.training.distributed", "--split", split, "--run-dir", str(run_dir),
           "--model-config", str(run_dir / "model_config.json"), "--train-config",
           str(run_dir / "train_config.json.in")]
    if plan.item_features is not None:
        cmd += ["--features", features]
    if s3_endpoint:
        cmd += ["--s3-endpoint", s3_endpoint]
    log.info("training %s on %d processes: %s", plan.variant.name, processes, " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun training of {plan.variant.name} failed (exit {done.returncode}); "
                           f"its ranks' output is above, its checkpoints in {run_dir} (a re-run resumes)")


@step("evaluate", "variant")
def evaluate(workdir: str, data: str, features: str, split: str, variant: str, checkpoint: str = "",
             s3_endpoint: str = "") -> dict[str, Any]:
    """Test metrics of ``W/runs/<variant>``'s best checkpoint (``checkpoint``: the trained model's copy,
    which must be that checkpoint), reused when its evaluation is of exactly these inputs."""
    from linkedout.fingerprint import file_sha256
    from linkedout.pipeline import (
        _checkpoint_of,
        eval_fingerprint,
        evaluate_run,
        evaluation_is_fresh,
    )

    run_dir = run_dir_of(workdir, variant)
    ckpt = _checkpoint_of(run_dir)
    if checkpoint and file_sha256(checkpoint) != file_sha256(ckpt):
        raise ValueError(f"the model given ({checkpoint}) is not the best checkpoint of {run_dir} (was it trained "
                         "again meanwhile?)")
    sp = _load_split(split)
    digest = None
    if reads_features(run_dir):  # the store's digest from its manifests; the features are read only to evaluate
        from linkedout.shards import FeatureReader
        from linkedout.shards.verify import store_digest

        digest = store_digest(FeatureReader(features, endpoint_url=_s3(s3_endpoint)))
    fp = eval_fingerprint(run_dir, sp, digest)
    if evaluation_is_fresh(run_dir, fp):
        log.info("%s already evaluated on these inputs", run_dir.name)
        ev = json.loads((run_dir / "eval.json").read_text())
    else:  # evaluate_run loads the feature table when the model reads it
        ev = evaluate_run(Path(data), features, run_dir, split=sp, s3_endpoint=_s3(s3_endpoint))
    return {"run_dir": str(run_dir), "model": ev.get("model"), "metrics": flat_metrics(ev)}


def reads_features(run_dir: Path) -> bool:
    """Whether the model trained in ``run_dir`` reads backbone features (its evaluation's fingerprint then
    holds the feature store's digest): its config's kind is one of ``linkedout.model.config.FEATURE_KINDS``,
    the set the model itself answers ``needs_features`` from."""
    from linkedout.model.config import FEATURE_KINDS

    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    return (cfg.get("model") or {}).get("kind") in FEATURE_KINDS


def flat_metrics(ev: dict[str, Any]) -> dict[str, float]:
    """``{"HR@10": .., "warm/HR@10": .., "cold/NDCG@10": ..}`` of an ``eval.json`` (full catalogue; nulls dropped)."""
    full = ev.get("full") or {}
    out: dict[str, float] = {}
    for part in ("overall", "warm", "cold"):
        for k, v in (full.get(part) or {}).items():
            if isinstance(v, (int, float)):
                out[k if part == "overall" else f"{part}/{k}"] = float(v)
    return out


# -------------------------------------------------------------------------------------------- report


@step("report")
def report(workdir: str, data: str, features: str, split: str, run_dirs: Sequence[str], html: str = "",
           s3_endpoint: str = "") -> dict[str, Any]:
    """``W/summary.json`` and the HTML report of ``run_dirs`` (rewritten only when an evaluation, the data or the
    features changed), copied to ``html`` (the ``Output[HTML]``). Every run's evaluation must be of its
    current checkpoint and this split: a stale one is an error, never a row of the report."""
    from linkedout.fingerprint import read_fingerprint, write_fingerprint
    from linkedout.pipeline import (
        eval_fingerprint,
        evaluation_is_fresh,
        features_digest_of,
        item_features_for,
    )
    from linkedout.pipeline import report as write_report

    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ValueError("report: no runs to report")
    sp = _load_split(split)
    item_features = item_features_for(sp, features, _s3(s3_endpoint))
    digest = features_digest_of(item_features)
    for run in runs:
        if not evaluation_is_fresh(run, eval_fingerprint(run, sp, digest if reads_features(run) else None)):
            raise ValueError(f"{run}/eval.json is not the evaluation of this run's checkpoint on this split: "
                             "evaluate it first (it is not reported)")
    table = summary_table(runs)
    work = Path(workdir)
    atomic_write_text(work / "summary.json", json.dumps(table, indent=2))
    print("== test metrics (full catalogue, history masked)\n" + format_table(table), flush=True)
    out = work / "report.html"
    fp = report_fingerprint(runs, Path(data), digest)
    stored = read_fingerprint(out)
    if out.is_file() and stored is not None and stored.digest == fp.digest:
        log.info("report %s is up to date", out)
    else:
        write_report(runs, out, data=Path(data), features=features, s3_endpoint=_s3(s3_endpoint), split=sp,
                     item_features=item_features)
        write_fingerprint(out, fp)
    if html:
        Path(html).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out, html)
    print(f"== report: {out}", flush=True)
    return {"report": str(out), "summary": str(work / "summary.json"), "rows": table}


def summary_table(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows ``{model, group, overall: {...}, warm: {...}, cold: {...}}`` from the runs' ``eval.json``."""
    rows = []
    for run_dir in run_dirs:
        ev = json.loads((Path(run_dir) / "eval.json").read_text())
        full = ev["full"]
        rows.append({"model": ev["model"], "group": ev.get("group"), "params": ev.get("params"),
                     "n_users": full.get("n_users"),
                     **{part: full[part] for part in ("overall", "warm", "cold")},
                     "sampled": (ev.get("sampled") or {}).get("overall")})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = [("overall", "HR@10"), ("overall", "NDCG@10"), ("warm", "HR@10"), ("warm", "NDCG@10"),
            ("cold", "HR@10"), ("cold", "NDCG@10")]
    head = f"{'model':<24}" + "".join(f"{p + ' ' + m:>16}" for p, m in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for part, metric in cols:
            value = (r.get(part) or {}).get(metric)
            cells.append(f"{value:>16.4f}" if isinstance(value, (int, float)) else f"{'-':>16}")
        lines.append(f"{r['model']:<24}" + "".join(cells))
    return "\n".join(lines)


def report_fingerprint(runs: Sequence[Path], data: Path | None, features_digest: str | None) -> Any:
    """The report's inputs: every run's evaluation (its bytes) and training fingerprint, the dataset, the features."""
    from linkedout.fingerprint import Fingerprint, file_sha256, read_fingerprint
    from linkedout.pipeline import dataset_digest

    rows = []
    for run_dir in runs:
        ev = Path(run_dir) / "eval.json"
        training = read_fingerprint(run_dir)
        rows.append([Path(run_dir).name, file_sha256(ev) if ev.is_file() else None,
                     None if training is None else training.digest])
    return Fingerprint("report", {"runs": rows, "dataset": None if data is None else dataset_digest(data),
                                  "features": features_digest})


# ------------------------------------------------------------------------------------------- publish


def _repository(workdir: str) -> Path:
    return Path(workdir) / "model_repository"


@step("compare-with-serving")
def compare(workdir: str, features: str, split: str, variant: str, model_name: str = "linkedout",
            metric: str = "NDCG@10", s3_endpoint: str = "", record: str = "") -> dict[str, Any]:
    """Whether the model trained for ``variant`` may replace the one ``W/model_repository`` serves as ``model_name``
    (:func:`linkedout.publish.compare_with_serving`). The decision is written to ``W/pipeline/decision.json``
    and to ``record`` (the export step reads the validation record there)."""
    from linkedout import publish
    from linkedout.pipeline import item_features_for

    sp = _load_split(split)
    decision = publish.compare_with_serving(run_dir_of(workdir, variant), _repository(workdir), name=model_name,
                                            split=sp, item_features=item_features_for(sp, features, _s3(s3_endpoint)),
                                            metric=metric)
    print(f"== deploy decision: {decision['reason']}", flush=True)
    doc = json.dumps({**decision, "time": time.time()}, indent=2)
    atomic_write_text(Path(workdir) / "pipeline" / "decision.json", doc)
    if record:
        atomic_write_text(record, doc)
    return decision


@step("export")
def export(workdir: str, data: str, features: str, split: str, variant: str, model_name: str = "linkedout",
           decision: str = "", upload_uri: str = "", s3_endpoint: str = "") -> dict[str, Any]:
    """ONNX encoder and ranker of ``variant``'s best checkpoint as a new version of ``model_name`` in
    ``W/model_repository`` (unless its newest version already is that checkpoint), uploaded to
    ``upload_uri`` (``s3://bucket/prefix`` or a directory) when given. ``decision``: the compare step's
    record, whose validation figure is stored with the version (the next decision compares with it)."""
    from linkedout import publish
    from linkedout.export import ModelRepository
    from linkedout.pipeline import item_features_for

    validation = json.loads(Path(decision).read_text()).get("validation") if decision else None
    sp = _load_split(split)
    repo = _repository(workdir)
    version = publish.export_if_new(Path(data), features, run_dir_of(workdir, variant), repo, name=model_name,
                                    split=sp, item_features=item_features_for(sp, features, _s3(s3_endpoint)),
                                    extra_source=validation or None)
    uploaded: list[str] = []
    if upload_uri:
        uploaded = ModelRepository(repo).upload(upload_uri, endpoint_url=_s3(s3_endpoint))
        log.info("uploaded %d files of %s to %s", len(uploaded), repo, upload_uri)
    return {"model": model_name, "version": version, "repository": str(repo), "uploaded_to": upload_uri,
            "uploaded": len(uploaded)}


@step("push-to-feast")
def push_features(workdir: str, data: str, model_name: str, version: int, feast_repo: str = "") -> dict[str, Any]:
    """The users' histories and the version's video embeddings and metadata into Feast (once per dataset and version)."""
    from linkedout import publish

    return publish.publish_features_once(Path(data), _repository(workdir), feast_location(workdir, feast_repo),
                                         name=model_name, version=int(version))


@step("deploy")
def deploy(model_name: str, version: int, storage_uri: str, canary_percent: int = 10, namespace: str = "linkedout",
           name: str = "linkedout", image: str = "", kube_api: str = "") -> dict[str, Any]:
    """Render the InferenceService serving ``storage_uri`` as release ``MODEL-vVERSION`` with ``canary_percent`` of
    the traffic and apply it (create, or merge-patch) with the Kubernetes Python client; ``kube_api``: an API
    server URL (``kubectl proxy``), default the pod's service account."""
    from linkedout.ab.deploy import (
        DEFAULT_IMAGE,
        apply_inference_service,
        custom_objects_api,
        render_inference_service,
    )

    if not storage_uri:
        raise ValueError("deploy: model_repository_uri must name where the model repository was uploaded "
                         "(s3://bucket/prefix): KServe's predictor loads it from there")
    isvc = render_inference_service(name=name, namespace=namespace, storage_uri=storage_uri, default_model=model_name,
                                    release=f"{model_name}-v{int(version)}", canary_percent=int(canary_percent),
                                    image=image or DEFAULT_IMAGE)
    applied = apply_inference_service(isvc, custom_objects_api(host=kube_api or None))
    meta = applied.get("metadata") or {}
    print(f"== deployed {model_name} v{version} to InferenceService {namespace}/{name} with {canary_percent} % "
          "of the traffic", flush=True)
    return {"inference_service": f"{namespace}/{name}", "release": f"{model_name}-v{int(version)}",
            "canary_percent": int(canary_percent), "resource_version": meta.get("resourceVersion"),
            "generation": meta.get("generation")}


@step("serve-locally")
def serve_local(workdir: str, split: str, model_name: str = "linkedout", version: int = 0, k: int = 10,
                feast_repo: str = "") -> dict[str, Any]:
    """The local stand-in of the deploy step: start the local stack of ``W`` (Triton, the KServe transformer,
    Feast) on loopback, ask it for the first test user's top ``k`` over gRPC, stop it; the answer is
    printed and written to ``W/serving/answer.json``."""
    from linkedout import publish
    from linkedout.serving.client import format_table as format_answers

    if feast_repo and Path(feast_repo) != Path(workdir) / "feast":
        raise ValueError("serve locally: the local stack reads W/feast; leave feast_repo empty")
    user = str(_load_split(split).test.user_ids[0])
    print(f"== serving {model_name!r} (version {version}) locally; asking for user {user} over gRPC", flush=True)
    answers = publish.serve_and_query(Path(workdir), name=model_name, users=[user], k=int(k))
    print(format_answers(answers), flush=True)
    record = {"model": model_name, "version": int(version), "user": user, "time": time.time(),
              "answers": [a.to_dict() for a in answers]}
    atomic_write_text(Path(workdir) / "serving" / "answer.json", json.dumps(record, indent=2))
    first = answers[0]
    return {"user": user, "items": [int(i) for i in first.items], "model_version": first.model_version}
