"""The main job end to end (``linkedout run``): the stages of :mod:`linkedout.pipeline`, in order.

This is the orchestration alone: every stage is a function of :mod:`linkedout.pipeline` that
decides by its fingerprint whether its outputs can be reused. When the main job runs through
Kubeflow Pipelines, the components call the same stage functions and this module is what the
local runner does in one process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from linkedout.fingerprint import (
    Fingerprint,
    StageMismatch,
    file_sha256,
    read_fingerprint,
    training_fingerprint,
    write_fingerprint,
)
from linkedout.pipeline import (
    DEFAULT_VARIANTS,
    RUN_HINT,
    Variant,
    build_split,
    check_failures,
    check_run_dir,
    check_trainable,
    dataset_digest,
    demo_train_config,
    ensure_dataset,
    eval_fingerprint,
    evaluate_run,
    evaluation_is_fresh,
    extract,
    features_digest_of,
    item_features_for,
    model_config_for,
    parse_variant,
    report,
    side_info_digest,
    train_variant,
)
from linkedout.utils import atomic_write_text, get_logger

log = get_logger(__name__)


def run_all(workdir: Path, *, preset: str = "small", data: Path | None = None, epochs: int | None = None,
            variants: Sequence[str] | None = None, seed: int = 42, stop_after: str | None = None,
            extraction: Any = None, backbone: Any = None, force: bool = False, retry_failed: bool = False,
            max_failed_share: float = 0.01) -> Path:
    """The main job on the embedded default; returns the report's path (or the last stage's output).

    ``extraction`` / ``backbone``: an ``ExtractionConfig`` / ``BackboneConfig`` (default: the
    paper's layers, prompts, 8 frames at 224 px, K = 64, float16, on the tiny seeded backbone).
    Stages are reused when their fingerprints match (see the module docstring); ``force`` redoes,
    instead of refusing, the stages whose recorded inputs differ; ``retry_failed`` tries every
    failed video again; more failed videos than ``max_failed_share`` stop the job after extraction.
    """
    from linkedout.data.microlens import load_microlens, validate_microlens
    from linkedout.data.stats import dataset_stats, format_stats
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import ExtractionConfig
    from linkedout.features import FeatureReader
    from linkedout.features.info import format_info, info_from_store

    t_start = time.perf_counter()
    workdir = Path(workdir)
    variant_names = tuple(variants) if variants else DEFAULT_VARIANTS
    chosen = [(name, parse_variant(name)) for name in variant_names]  # fail on a bad name before any work
    if not 0 <= max_failed_share <= 1:
        raise ValueError(f"max_failed_share must be in [0, 1], got {max_failed_share}")
    ecfg = extraction or ExtractionConfig(shard_size=64)
    bcfg = backbone or BackboneConfig()
    bcfg.check()  # a missing GPU or checkpoint directory, before any work
    workdir.mkdir(parents=True, exist_ok=True)

    # 1. dataset
    data_dir = Path(data) if data is not None else ensure_dataset(workdir / "data", preset, force=force)
    vreport = validate_microlens(data_dir, check_videos=True)
    if vreport.errors or vreport.warnings:
        print(vreport.format())
    # Tables must be sound; missing or unreadable videos are only reported here and recorded as
    # failed by the extraction (their interactions are then dropped).
    validate_microlens(data_dir, check_videos=False).raise_if_errors()
    dataset = load_microlens(data_dir, check_videos=False)
    check_trainable(dataset.interactions, f"dataset {data_dir}")  # before hours of extraction
    print("== dataset\n" + format_stats(dataset_stats(dataset)), flush=True)
    if stop_after == "data":
        return data_dir

    # 2. features (resumable: finished shards are skipped, changed files re-extracted)
    features = workdir / "features"
    summary = extract(data_dir, features, (ecfg, bcfg), retry_failed=retry_failed, force=force)
    if summary.failed:
        print(f"== {len(summary.failed)} videos could not be decoded and have no features "
              f"(all listed in {features / 'failures.json'}):")
        for vid, why in sorted(summary.failed.items())[:20]:
            print(f"   {vid}: {why}")
    check_failures(summary, max_failed_share)
    print("== features\n" + format_info(info_from_store(FeatureReader(features))), flush=True)
    if stop_after == "extract":
        return features

    # 3. split, training, evaluation
    split = build_split(data_dir, str(features), cache_dir=workdir / "split")
    item_features = item_features_for(split, str(features), None)
    features_digest = features_digest_of(item_features)
    run_dirs = [workdir / "runs" / v.name for _, v in chosen]
    _check_runs(data_dir, chosen, run_dirs, split, item_features, seed=seed, epochs=epochs, force=force)
    for (name, v), run_dir in zip(chosen, run_dirs):
        reads = v.kind in ("linkedout", "hybrid")
        if stop_after != "train" and _evaluated(run_dir, split, features_digest if reads else None):
            log.info("%s already trained and evaluated on these inputs; skipping", v.name)
            continue
        train_variant(data_dir, str(features), run_dir, name, seed=seed, epochs=epochs, split=split,
                      item_features=item_features, hint=RUN_HINT)
        if stop_after != "train":
            evaluate_run(data_dir, str(features), run_dir, split=split, item_features=item_features)
    if stop_after == "train":
        return workdir / "runs"

    # 4. report
    table = summary_table(run_dirs)
    atomic_write_text(workdir / "summary.json", json.dumps(table, indent=2))
    print("== test metrics (full catalogue, history masked)\n" + format_table(table), flush=True)
    out = workdir / "report.html"
    fp = report_fingerprint(run_dirs, data_dir, features_digest)
    stored = read_fingerprint(out)
    if out.is_file() and stored is not None and stored.digest == fp.digest:
        log.info("report %s is up to date", out)
    else:
        report(run_dirs, out, data=data_dir, features=str(features))
        write_fingerprint(out, fp)
    if stop_after == "report":
        print(f"== report: {out}  ({time.perf_counter() - t_start:.0f} s in all)", flush=True)
        return out

    # 5. publish the main model (the first variant) and serve it: the model repository, Feast, the
    #    local stack (Triton + the KServe transformer), one gRPC query answered
    from linkedout import publish
    from linkedout.serving.client import format_table as format_answers

    main_variant = chosen[0][1]
    served_as = "linkedout"
    version = publish.export_if_new(data_dir, str(features), workdir / "runs" / main_variant.name,
                                    workdir / "model_repository", name=served_as, split=split,
                                    item_features=item_features)
    stamp = {"dataset": dataset_digest(data_dir), "model": served_as, "version": version}
    if not publish.features_published(workdir / "feast", stamp):
        publish.publish_features(data_dir, workdir / "model_repository", workdir / "feast", name=served_as,
                                 version=version)
        atomic_write_text(workdir / "feast" / "linkedout_published.json", json.dumps(stamp, indent=2))
    user = str(split.test.user_ids[0])
    print(f"== serving {main_variant.display} as {served_as!r} (version {version}); asking for user {user} "
          "over gRPC", flush=True)
    answers = publish.serve_and_query(workdir, name=served_as, users=[user], k=10)
    print(format_answers(answers), flush=True)
    print(f"== report: {out}  ({time.perf_counter() - t_start:.0f} s in all)\n"
          f"   serve it again: linkedout serve --workdir {workdir}\n"
          f"   then ask it:    linkedout recommend --workdir {workdir} --user {user} --k 10 --explain", flush=True)
    return out


def _evaluated(run_dir: Path, split: Any, features_digest: str | None) -> bool:
    """Whether ``run_dir`` holds a checkpoint and an evaluation of it made from exactly these inputs."""
    try:
        return evaluation_is_fresh(run_dir, eval_fingerprint(run_dir, split, features_digest))
    except FileNotFoundError:  # no checkpoint yet (never trained, or killed before the first one)
        return False


def _check_runs(data: Path, chosen: Sequence[tuple[str, Variant]], run_dirs: Sequence[Path], split: Any,
                item_features: Any, *, seed: int, epochs: int | None, force: bool) -> None:
    """Refuse, before any training, every run directory that holds a run of other inputs (``force``: clear it)."""
    features_digest = features_digest_of(item_features)
    spec = item_features.reader.spec if item_features is not None else None
    problems = []
    for (_, v), run_dir in zip(chosen, run_dirs):
        reads = v.kind in ("linkedout", "hybrid")
        fp = training_fingerprint(v.name, model_config_for(v, spec).to_dict(),
                                  demo_train_config(seed=seed, epochs=epochs).to_dict(), split.digest(),
                                  features_digest if reads else None, side_info_digest(data, v))
        try:
            check_run_dir(run_dir, fp, force=force, hint=RUN_HINT)
        except StageMismatch as e:
            problems.append(f"{v.name} ({'; '.join(e.differences[:4])})")
    if problems:
        raise StageMismatch(str(Path(run_dirs[0]).parent), "trained runs", problems, RUN_HINT)


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


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
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


def report_fingerprint(runs: Sequence[Path], data: Path | None, features_digest: str | None) -> Fingerprint:
    """The report's inputs: every run's evaluation (its bytes) and training fingerprint, the dataset, the features."""
    rows = []
    for run_dir in runs:
        ev = Path(run_dir) / "eval.json"
        training = read_fingerprint(run_dir)
        rows.append([Path(run_dir).name, file_sha256(ev) if ev.is_file() else None,
                     None if training is None else training.digest])
    return Fingerprint("report", {"runs": rows, "dataset": None if data is None else dataset_digest(data),
                                  "features": features_digest})
