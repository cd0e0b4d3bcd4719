"""The main job's first stage: the dataset, given (MicroLens layout) or generated (the synthetic presets), checked.

A generated dataset is reused only when it was generated with the same config (its fingerprint);
a dataset ``linkedout`` did not generate is used as it is. The figures the preprocessing keeps
(``MIN_INTERACTIONS`` and friends) are MicroLens's own.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from linkedout.data import synth
from linkedout.data.microlens import DatasetError, find_prefix, load_microlens, validate_microlens
from linkedout.data.stats import dataset_stats, format_stats
from linkedout.fingerprint import Fingerprint, StageMismatch, dataset_tables
from linkedout.job.step import step
from linkedout.utils import get_logger
from linkedout.workdir import Workdir

log = get_logger(__name__)

MIN_INTERACTIONS = 5  # MicroLens preprocessing: users with fewer interactions are dropped
MAX_INTERACTIONS = 13  # ... and each user's last 13 are kept
MAX_HISTORY = 10


def has_dataset(root: Path) -> bool:
    return root.is_dir() and (any(root.glob("*_pairs.csv")) or any(root.glob("*_pairs.tsv")))


def ensure_dataset(root: Path, preset: str, seed: int | None = None, *, force: bool = False) -> Path:
    """Generate the synthetic dataset at ``root`` unless the same one is already there.

    A dataset generated at ``root`` with another config (another preset or seed) is refused with
    :class:`StageMismatch` (``force``: deleted and generated again); a dataset there that
    ``linkedout`` did not generate is used as it is.
    """
    cfg = synth.SynthConfig.preset(preset, **({} if seed is None else {"seed": seed}))
    if has_dataset(root):
        saved = root / f"{cfg.prefix}_synth_config.json"
        if not saved.is_file():
            log.info("dataset found at %s (not a generated one: used as it is)", root)
            return root
        old = Fingerprint("synthetic dataset", synth.content_config(json.loads(saved.read_text())))
        new = Fingerprint("synthetic dataset", synth.content_config(dataclasses.asdict(cfg)))
        if old.digest == new.digest:
            log.info("dataset found at %s", root)
            return root
        if not force:
            raise StageMismatch(str(root), "a synthetic dataset", old.diff(new),
                                f"Use another --workdir, or --force to generate the {preset!r} dataset again "
                                "(every later stage is then redone).")
        log.warning("--force: deleting the synthetic dataset at %s (%s)", root, "; ".join(old.diff(new)[:4]))
        shutil.rmtree(root)
    log.info("generating the %r synthetic dataset at %s", preset, root)
    return synth.generate(root, cfg)


def dataset_digest(data: Path) -> dict[str, Any]:
    """The dataset's fingerprint inputs: its prefix and the sha256 of its tables (videos are
    identified one by one by the extraction)."""
    prefix, _ = find_prefix(data)
    return dataset_tables(data, prefix)


def check_trainable(interactions: pd.DataFrame, source: str) -> None:
    """``DatasetError`` up front when MicroLens preprocessing would leave no user to train on."""
    counts = interactions.groupby("user", sort=False).size()
    if not (counts >= MIN_INTERACTIONS).any():
        raise DatasetError(
            f"{source}: no user has >= {MIN_INTERACTIONS} interactions ({len(counts):,} users, at most "
            f"{int(counts.max()) if len(counts) else 0} each): MicroLens preprocessing drops users with fewer, so "
            "nothing would be left to train or evaluate on")


@step("validate-dataset")
def validate_dataset(workdir: str, dataset: str = "", preset: str = "small", force: bool = False) -> dict[str, Any]:
    """The dataset: ``dataset`` (a MicroLens-layout directory) or, when empty, the synthetic ``preset``
    generated at ``W/data`` (reused when it is the same). Tables must be sound; missing or unreadable
    videos are listed here and recorded as failed by the extraction. Returns its location and figures."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(dataset) if dataset else ensure_dataset(Workdir.of(work).data, preset, force=force)
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
