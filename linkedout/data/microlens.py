"""Read and check a dataset in the MicroLens file layout (DESIGN.md §1), as published.

Files, for a ``prefix`` such as ``MicroLens-100k`` (found from the pairs file's name)::

    {prefix}_pairs.csv            user,item,timestamp   (header; timestamp in ms)
    {prefix}_pairs.tsv            user<TAB>item item item ...   (alternative; items in time order)
    {prefix}_titles.csv           item,title            (header)
    {prefix}_likes_and_views.txt  item<TAB>likes<TAB>views   (no header; optional)
    {prefix}_videos/{item}.mp4
    {prefix}_covers/{item}.jpg    (optional)

The ``.tsv`` form has no timestamps: increasing ones (the position in the user's sequence, in ms)
are made up, so the time order is the file order.

Item and user ids are strings everywhere outside the model. Problems are collected in a
:class:`ValidationReport` (errors make the dataset unusable; warnings do not), each naming the file,
the problem, how many rows/ids are affected and the first few of them. Each table file is read by
:mod:`.tables`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from linkedout.data.tables import (
    DatasetError,
    Issue,
    ValidationReport,
    check_pairs,
    read_likes_views,
    read_pairs_csv,
    read_pairs_tsv,
    read_titles,
)
from linkedout.utils import get_logger, progress

log = get_logger(__name__)

__all__ = [
    "DatasetError",
    "Issue",
    "MicroLensDataset",
    "ValidationReport",
    "find_prefix",
    "load_microlens",
    "sort_ids",
    "sort_interactions",
    "validate_microlens",
]


@dataclass(frozen=True)
class MicroLensDataset:
    """A dataset in the MicroLens layout, read into memory (videos stay on disk).

    ``interactions``: DataFrame ``user:str, item:str, timestamp:int64`` (ms), sorted by user then
    time (ties keep file order). ``titles``: ``item:str, title:str``. ``likes_views``: ``item:str,
    likes:int64, views:int64`` (empty when the file is absent). ``item_ids``: the catalogue, sorted
    (numeric ids in numeric order), every item of the titles file and of the pairs.
    """

    root: Path
    prefix: str
    interactions: pd.DataFrame
    titles: pd.DataFrame
    likes_views: pd.DataFrame
    item_ids: list[str]
    pairs_format: Literal["csv", "tsv"] = "csv"

    @property
    def user_ids(self) -> list[str]:
        """Users in the order of ``interactions`` (sorted)."""
        return list(pd.unique(self.interactions["user"]))

    @property
    def videos_dir(self) -> Path:
        return self.root / f"{self.prefix}_videos"

    @property
    def covers_dir(self) -> Path:
        return self.root / f"{self.prefix}_covers"

    def video_path(self, item: str) -> Path:
        return self.videos_dir / f"{item}.mp4"

    def cover_path(self, item: str) -> Path:
        return self.covers_dir / f"{item}.jpg"

    def title_of(self, item: str) -> str:
        rows = self.titles.loc[self.titles["item"] == item, "title"]
        return str(rows.iloc[0]) if len(rows) else ""


# ------------------------------------------------------------------------------------------------
# public entry points


def find_prefix(root: str | Path) -> tuple[str, Path]:
    """The dataset prefix and its pairs file (``.csv`` preferred over ``.tsv``).

    Raises :class:`DatasetError` when there is no pairs file or several prefixes.
    """
    report = ValidationReport(Path(root))
    found = _find_pairs(Path(root), report)
    report.raise_if_errors()
    assert found is not None
    return found


def validate_microlens(root: str | Path, check_videos: bool = True, prefix: str | None = None) -> ValidationReport:
    """Check a MicroLens-layout dataset and return every problem found (never raises on bad data).

    With ``check_videos`` every catalogue item's video must exist, be non-empty and open with PyAV
    (a header probe, not a decode).
    """
    report, _ = _inspect(Path(root), video_check="probe" if check_videos else "none", prefix=prefix)
    return report


def load_microlens(root: str | Path, check_videos: bool = True, *, probe_videos: bool = False,
                   prefix: str | None = None) -> MicroLensDataset:
    """Read a MicroLens-layout dataset; raise :class:`DatasetError` if it has errors.

    ``check_videos``: every catalogue item needs a non-empty ``{item}.mp4`` (a fast ``stat``);
    ``probe_videos`` additionally opens each with PyAV. Warnings are logged.
    """
    video_check: _VideoCheck = "probe" if probe_videos else ("exists" if check_videos else "none")
    report, tables = _inspect(Path(root), video_check=video_check, prefix=prefix)
    report.raise_if_errors()
    assert tables is not None and report.prefix is not None
    for issue in report.warnings:
        log.warning("%s", issue)
    return MicroLensDataset(root=Path(root), prefix=report.prefix, interactions=tables.interactions,
                            titles=tables.titles, likes_views=tables.likes_views, item_ids=tables.item_ids,
                            pairs_format=tables.pairs_format)


def sort_ids(ids: Iterable[str]) -> list[str]:
    """Ids sorted with numeric ids in numeric order first, then the others as strings."""
    return sorted(ids, key=_id_key)


# ------------------------------------------------------------------------------------------------
# internals

_VideoCheck = Literal["none", "exists", "probe"]


@dataclass
class _Tables:
    interactions: pd.DataFrame
    titles: pd.DataFrame
    likes_views: pd.DataFrame
    item_ids: list[str]
    pairs_format: Literal["csv", "tsv"]


def _id_key(s: str) -> tuple[int, int, str]:
    if s.isascii() and s.isdigit():
        return (0, int(s), "")
    return (1, 0, s)


def _find_pairs(root: Path, report: ValidationReport, prefix: str | None = None) -> tuple[str, Path] | None:
    if not root.is_dir():
        report.add("error", str(root), "dataset root is not a directory")
        return None
    candidates: dict[str, dict[str, Path]] = {}
    for path in sorted(root.glob("*_pairs.csv")) + sorted(root.glob("*_pairs.tsv")):
        candidates.setdefault(path.name[: -len("_pairs.csv")], {})[path.suffix[1:]] = path
    if prefix is not None:
        candidates = {k: v for k, v in candidates.items() if k == prefix}
    if not candidates:
        want = f"{prefix}_pairs.csv or {prefix}_pairs.tsv" if prefix else "{prefix}_pairs.csv or {prefix}_pairs.tsv"
        report.add("error", ".", f"missing file: no {want} found in {root}")
        return None
    if len(candidates) > 1:
        report.add("error", ".", "several datasets in one directory (give each its own directory: extract, train "
                   "and run read one dataset per directory; `linkedout data validate|stats --prefix NAME` "
                   "inspects one of them); prefixes", sorted(candidates))
        return None
    (name, files), = candidates.items()
    report.prefix = name
    if "csv" in files and "tsv" in files:
        report.add("warning", files["tsv"].name, f"both {files['csv'].name} and it exist; the .csv is used")
    return name, files.get("csv", files.get("tsv"))  # type: ignore[return-value]


def _probe_video(path: Path) -> str | None:
    """None when PyAV opens ``path`` and finds a video stream (header only), else the reason."""
    import av

    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                return "no video stream"
    except (av.FFmpegError, OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _check_media(root: Path, prefix: str, item_ids: list[str], video_check: _VideoCheck,
                 report: ValidationReport) -> None:
    videos = root / f"{prefix}_videos"
    covers = root / f"{prefix}_covers"
    if video_check != "none":
        if not videos.is_dir():
            report.add("error", videos.name, "missing directory of videos ({item}.mp4)")
        else:
            present = {p.name for p in videos.iterdir()}
            missing = [i for i in item_ids if f"{i}.mp4" not in present]
            if missing:
                report.add("error", videos.name, "missing video files for catalogue items", missing)
            wanted = {f"{i}.mp4" for i in item_ids}
            extra = sorted(n for n in present if n.endswith(".mp4") and n not in wanted)
            if extra:
                report.add("warning", videos.name, "videos of items in no table (ignored)", extra)
            have = [i for i in item_ids if f"{i}.mp4" in present]
            empty = [i for i in have if (videos / f"{i}.mp4").stat().st_size == 0]
            if empty:
                report.add("error", videos.name, "unreadable video files (zero size)", [f"{i}.mp4" for i in empty])
            if video_check == "probe":
                empty_set = set(empty)
                bad: list[str] = []
                reasons: list[str] = []
                to_probe = [i for i in have if i not in empty_set]
                for item in progress(to_probe, total=len(to_probe), desc="probing videos", unit="video"):
                    reason = _probe_video(videos / f"{item}.mp4")
                    if reason is not None:
                        bad.append(f"{item}.mp4")
                        reasons.append(reason)
                if bad:
                    report.add("error", videos.name,
                               f"unreadable video files (PyAV cannot open them; e.g. {reasons[0]})", bad)
                report.summary["videos_probed"] = len(to_probe)
    if not covers.is_dir():
        report.add("warning", covers.name, "missing directory of covers ({item}.jpg)")
    else:
        present_covers = {p.name for p in covers.iterdir()}
        missing_covers = [i for i in item_ids if f"{i}.jpg" not in present_covers]
        if missing_covers:
            report.add("warning", covers.name, "missing cover images", missing_covers)


def _id_ranks(uniques: np.ndarray) -> np.ndarray:
    """Rank of each id in :func:`sort_ids` order (vectorised when every id is a short number)."""
    ids = pd.Series(uniques, dtype=str)
    if len(ids) and ids.str.fullmatch(r"[0-9]{1,18}").all():
        values = ids.astype(np.int64).to_numpy()
        order = np.lexsort((ids.to_numpy(dtype=object), values))
    else:
        strings = ids.tolist()
        order = np.array(sorted(range(len(strings)), key=lambda k: _id_key(strings[k])), dtype=np.int64)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def sort_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by user (numeric ids numerically) then timestamp; ties keep their current order."""
    codes, uniques = pd.factorize(df["user"], sort=False)
    rank = _id_ranks(np.asarray(uniques, dtype=object))
    order = np.lexsort((np.arange(len(df)), df["timestamp"].to_numpy(), rank[codes]))
    return df.iloc[order].reset_index(drop=True)


def _inspect(root: Path, video_check: _VideoCheck, prefix: str | None = None) -> tuple[ValidationReport, _Tables | None]:
    report = ValidationReport(root)
    found = _find_pairs(root, report, prefix)
    if found is None:
        return report, None
    name, pairs_path = found
    pairs_format: Literal["csv", "tsv"] = "csv" if pairs_path.suffix == ".csv" else "tsv"
    pairs = (read_pairs_csv if pairs_format == "csv" else read_pairs_tsv)(pairs_path, report)
    titles = read_titles(root / f"{name}_titles.csv", report)
    likes_views = read_likes_views(root / f"{name}_likes_and_views.txt", report)
    if pairs is None:
        return report, None
    pairs = check_pairs(pairs, pairs_path.name, report)
    report.summary.update(interactions=len(pairs), users=int(pairs["user"].nunique()),
                          interacted_items=int(pairs["item"].nunique()))
    if titles is None:
        return report, None
    known = set(titles["item"])
    pair_items = pd.unique(pairs["item"])
    unknown = [i for i in pair_items if i not in known]
    if unknown:
        n_rows = int(pairs["item"].isin(unknown).sum())
        report.add("error", pairs_path.name,
                   f"items unknown to {name}_titles.csv ({n_rows:,} rows); unknown item ids", unknown)
    item_ids = sort_ids(known.union(pair_items))
    report.summary["catalogue_items"] = len(item_ids)
    if len(likes_views):
        lv_known = set(likes_views["item"])
        no_lv = [i for i in item_ids if i not in lv_known]
        if no_lv:
            report.add("warning", f"{name}_likes_and_views.txt", "catalogue items with no likes/views row", no_lv)
    _check_media(root, name, item_ids, video_check, report)
    if report.errors:
        return report, None
    interactions = sort_interactions(pairs)
    titles = titles.set_index("item").reindex(item_ids).fillna({"title": ""}).reset_index()
    return report, _Tables(interactions, titles, likes_views, item_ids, pairs_format)
