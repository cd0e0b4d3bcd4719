"""The report of the main job: the metrics table (``W/summary.json``, printed), the HTML report (metrics,
training curves, gate heatmaps, per-layer shares, the configuration), rewritten only when an
evaluation, the dataset or the feature shards changed; and the :func:`report` step."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from linkedout.data.microlens import load_microlens
from linkedout.data.stats import dataset_stats
from linkedout.fingerprint import Fingerprint, file_sha256, read_fingerprint, write_fingerprint
from linkedout.interpret.contributions import layer_contributions
from linkedout.interpret.report import write_report
from linkedout.interpret.runs import load_run
from linkedout.job.dataset import dataset_digest
from linkedout.job.evaluation import eval_fingerprint, evaluation_is_fresh, reads_features
from linkedout.job.split import build_split, load_split
from linkedout.job.step import step
from linkedout.job.training import checkpoint_of, features_digest_of, item_features_for
from linkedout.model.config import FEATURE_KINDS
from linkedout.shards import FeatureReader
from linkedout.training.checkpoint import load_model_from_checkpoint
from linkedout.utils import atomic_write_text, get_logger
from linkedout.workdir import Workdir

log = get_logger(__name__)

def write_html_report(runs: Sequence[Path], out: Path, *, data: Path | None = None, features: str | None = None,
           s3_endpoint: Any = None, notes: Sequence[str] | None = None, split: Any = None,
           item_features: Any = None) -> Path:
    """Write the HTML report of ``runs``; gate heatmaps come from the first run with a learned gate.

    ``split`` / ``item_features``: the split the runs were trained and evaluated on and its feature
    table, when the caller has them (the pipeline's report step); otherwise built from ``data``.

    The "Dataset and configuration" section shows the data's figures, the feature extraction
    (from the store's spec), and every run's model and training configuration.
    """
    records = [load_run(r) for r in runs]
    contributions = None
    labels = counts = None
    dataset_summary: dict[str, Any] | None = None
    extraction: dict[str, Any] | None = None
    if data is not None:
        dataset_summary = dataset_stats(load_microlens(data, check_videos=False))
        if split is None:
            split = build_split(data, features, s3_endpoint=s3_endpoint)
    if features is not None:
        reader = FeatureReader(features, endpoint_url=s3_endpoint)
        extraction = {**reader.spec.to_dict(), "videos": len(reader), "failed": len(reader.failed),
                      "store": reader.storage.uri}
    if split is not None and features is not None:
        for rec in records:
            mode = ((rec.config or {}).get("model", {}).get("fusion", {}) or {}).get("mode")
            kind = (rec.config or {}).get("model", {}).get("kind")
            if kind in FEATURE_KINDS and mode == "moe":
                model: Any = load_model_from_checkpoint(checkpoint_of(rec.run_dir), split.num_items)
                if item_features is None:
                    item_features = item_features_for(split, features, s3_endpoint)
                names = [f"L{layer}" for layer in item_features.reader.spec.layers]
                with torch.no_grad():
                    contributions = layer_contributions(model, item_features, layer_names=names)
                labels = [f"video {i}" for i in split.item_ids]
                counts = split.item_counts
                break
    return write_report(
        out, title="LinkedOut report", metrics_rows=[r for r in records if r.eval is not None],
        training_logs={r.name: r.logs for r in records if r.logs}, contributions=contributions,
        dataset_summary=dataset_summary, notes=list(notes) if notes else None, item_labels=labels,
        item_counts=counts, extraction=extraction,
        run_configs={r.name: r.config for r in records if r.config},
    )


@step("report")
def report(workdir: str, data: str, features: str, split: str, run_dirs: Sequence[str], html: str = "",
           s3_endpoint: str = "") -> dict[str, Any]:
    """``W/summary.json`` and the HTML report of ``run_dirs`` (rewritten only when an evaluation, the data or the
    features changed), copied to ``html`` (the ``Output[HTML]``). Every run's evaluation must be of its
    current checkpoint and this split: a stale one is an error, never a row of the report."""
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ValueError("report: no runs to report")
    sp = load_split(split)
    item_features = item_features_for(sp, features, s3_endpoint or None)
    digest = features_digest_of(item_features)
    for run in runs:
        if not evaluation_is_fresh(run, eval_fingerprint(run, sp, digest if reads_features(run) else None)):
            raise ValueError(f"{run}/eval.json is not the evaluation of this run's checkpoint on this split: "
                             "evaluate it first (it is not reported)")
    table = summary_table(runs)
    work = Workdir.of(workdir)
    atomic_write_text(work.summary, json.dumps(table, indent=2))
    print("== test metrics (full catalogue, history masked)\n" + format_table(table), flush=True)
    out = work.report
    fp = report_fingerprint(runs, Path(data), digest)
    stored = read_fingerprint(out)
    if out.is_file() and stored is not None and stored.digest == fp.digest:
        log.info("report %s is up to date", out)
    else:
        write_html_report(runs, out, data=Path(data), features=features, s3_endpoint=s3_endpoint or None, split=sp,
                     item_features=item_features)
        write_fingerprint(out, fp)
    if html:
        Path(html).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out, html)
    print(f"== report: {out}", flush=True)
    return {"report": str(out), "summary": str(work.summary), "rows": table}


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
    rows = []
    for run_dir in runs:
        ev = Path(run_dir) / "eval.json"
        training = read_fingerprint(run_dir)
        rows.append([Path(run_dir).name, file_sha256(ev) if ev.is_file() else None,
                     None if training is None else training.digest])
    return Fingerprint("report", {"runs": rows, "dataset": None if data is None else dataset_digest(data),
                                  "features": features_digest})
