"""The work directory of the main job (``linkedout run --workdir W``): where each part's output lives.

One place for the layout, read by the main job's stages, the CLI and the local stack::

    W/data/                 the dataset (MicroLens layout; generated when not given)
    W/features/             feature shards, spec.json, index.json, dataset.json, failures.json
    W/split/                the preprocessed leave-one-out split (cached), fingerprint.json
    W/runs/<variant>/       config.json, fingerprint.json, metrics.jsonl, tb/, checkpoints/{last,best}.pt,
                            eval.json, eval.fingerprint.json
    W/report.html           the report (report.fingerprint.json beside it)
    W/summary.json          the metrics table of the run, machine-readable
    W/model_repository/     the Triton model repository (ONNX encoder and ranker, versioned)
    W/feast/                the Feast repository (offline and online store)
    W/pipeline/             the shard plan and the deploy decision of the last run
    W/serving/              the local stack's files and the answer of the main job's query
    W/kfp/                  kfp.local's records and every task's log
"""

from __future__ import annotations

import os
from pathlib import Path


class Workdir:
    """The paths of a work directory ``root`` (nothing is created here)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.features = self.root / "features"
        self.split = self.root / "split"
        self.runs = self.root / "runs"
        self.report = self.root / "report.html"
        self.summary = self.root / "summary.json"
        self.model_repository = self.root / "model_repository"
        self.feast = self.root / "feast"
        self.shard_plan = self.root / "pipeline" / "shard-plan.json"
        self.decision = self.root / "pipeline" / "decision.json"
        self.serving = self.root / "serving"
        self.answer = self.serving / "answer.json"
        self.kfp = self.root / "kfp"

    @classmethod
    def of(cls, root: str | os.PathLike[str]) -> Workdir:
        return cls(root)

    def run(self, variant_dir: str) -> Path:
        """``W/runs/<variant_dir>`` (the variant's directory name, e.g. ``layer2`` for ``layer:2``)."""
        return self.runs / variant_dir

    def __repr__(self) -> str:
        return f"Workdir({str(self.root)!r})"
