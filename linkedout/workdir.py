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
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workdir:
    """The paths of a work directory; nothing is created here."""

    root: Path

    @classmethod
    def of(cls, root: str | os.PathLike[str]) -> Workdir:
        return cls(Path(root))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def split(self) -> Path:
        return self.root / "split"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, variant_dir: str) -> Path:
        """``W/runs/<variant_dir>`` (the variant's directory name, e.g. ``layer2`` for ``layer:2``)."""
        return self.runs / variant_dir

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def model_repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def shard_plan(self) -> Path:
        return self.root / "pipeline" / "shard-plan.json"

    @property
    def decision(self) -> Path:
        return self.root / "pipeline" / "decision.json"

    @property
    def serving(self) -> Path:
        return self.root / "serving"

    @property
    def answer(self) -> Path:
        return self.serving / "answer.json"

    @property
    def kfp(self) -> Path:
        return self.root / "kfp"
