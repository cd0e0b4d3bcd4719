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
the problem, how many rows/ids are affected and the first few of them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from linkedout.utils import get_logger, progress

log = get_logger(__name__)

PAIRS_COLUMNS = ("user", "item", "timestamp")
TITLES_COLUMNS = ("item", "title")
LIKES_VIEWS_COLUMNS = ("item", "likes", "views")
MAX_EXAMPLES = 5  # offending ids listed per problem

Severity = Literal["error", "warning"]


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the file(s) and the problem(s)."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a dataset: where, what, how many, and the first few offenders."""

    severity: Severity
    file: str  # path relative to the dataset root (or the root itself)
    problem: str
    count: int = 0  # rows / ids affected (0 when not countable)
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.file}: {self.problem}"
        if self.count:
            text += f" ({self.count:,}"
            if self.examples:
                more = ", ..." if self.count > len(self.examples) else ""
                text += "; first: " + ", ".join(self.examples) + more
            text += ")"
        return text


@dataclass
class ValidationReport:
    """Everything found wrong with a dataset. ``errors`` make it unusable, ``warnings`` do not."""

    root: Path
    prefix: str | None = None
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)  # rows, users, items, videos checked, ...

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: Severity, file: str, problem: str, offenders: Sequence[object] | None = None,
            count: int | None = None) -> None:
        """Record a problem; ``offenders`` (ids, line numbers) are counted and the first few listed."""
        examples: tuple[str, ...] = ()
        n = 0
        if offenders is not None:
            n = len(offenders)
            examples = tuple(str(o) for o in list(offenders[:MAX_EXAMPLES]))
        if count is not None:
            n = count
        issue = Issue(severity, file, problem, n, examples)
        (self.errors if severity == "error" else self.warnings).append(issue)

    def format(self) -> str:
        """A human-readable multi-line summary (what ``linkedout data validate`` prints)."""
        head = f"dataset {self.root}" + (f" (prefix {self.prefix})" if self.prefix else "")
        lines = [head]
        if self.summary:
            lines.append("  " + ", ".join(f"{k}={v:,}" for k, v in self.summary.items()))
        for name, issues in (("error", self.errors), ("warning", self.warnings)):
            lines.extend(f"  {name.upper()}: {issue}" for issue in issues)
        lines.append(f"  {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
                     + ("" if self.errors else ": OK"))
        return "\n".join(lines)

    __str__ = format

    def raise_if_errors(self) -> None:
        """Raise :class:`DatasetError` listing every error, if there is any."""
        if self.errors:
            details = "\n".join(f"  - {issue}" for issue in self.errors)
            raise DatasetError(f"dataset {self.root} has {len(self.errors)} error(s):\n{details}")


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


def _columns(df: pd.DataFrame, columns: Sequence[str], path: Path, report: ValidationReport) -> pd.DataFrame | None:
    """``df`` reduced to ``columns`` (header names compared case- and space-insensitively), or None
    after reporting the missing ones."""
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        report.add("error", path.name, f"missing column(s) {missing}; found {list(df.columns)}, "
                   f"expected header {','.join(columns)}")
        return None
    return df[list(columns)].copy()


def _read_pairs_csv(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        report.add("error", path.name, f"cannot be parsed as CSV: {e}")
        return None
    df = _columns(df, PAIRS_COLUMNS, path, report)
    if df is None:
        return None
    for col in ("user", "item"):
        df[col] = df[col].str.strip()
    ts = pd.to_numeric(df["timestamp"].str.strip(), errors="coerce")
    values = ts.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        lines = (np.flatnonzero(bad) + 2).tolist()  # 1-based, after the header
        report.add("error", path.name, "timestamp is not an integer (ms) on line(s)", lines)
        return None
    df["timestamp"] = values.astype(np.int64)
    negative = values < 0
    if negative.any():
        report.add("warning", path.name, "negative timestamps (ms since 1970) on line(s); kept, ordered as they are",
                   (np.flatnonzero(negative) + 2).tolist())
    return df


def _read_pairs_tsv(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    users: list[str] = []
    items: list[list[str]] = []
    bad_lines: list[int] = []
    empty_users: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        report.add("error", path.name, f"is not UTF-8 text: {e}")
        return None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            bad_lines.append(lineno)
            continue
        user, seq = parts[0].strip(), parts[1].split()
        if lineno == 1 and user.lower() == "user" and not any(s.isdigit() for s in seq):
            continue  # a header line
        if not seq:
            empty_users.append(user)
            continue
        users.append(user)
        items.append(seq)
    if bad_lines:
        report.add("error", path.name, "lines are not 'user<TAB>item item ...'", bad_lines)
        return None
    if empty_users:
        report.add("warning", path.name, "users with no items (skipped)", empty_users)
    lengths = np.array([len(s) for s in items], dtype=np.int64)
    flat = [i for s in items for i in s]
    df = pd.DataFrame({"user": np.repeat(np.array(users, dtype=object), lengths), "item": flat})
    df = df.astype({"user": str, "item": str})
    # No timestamps in this form: the position within the user's sequence(s), in file order.
    df["timestamp"] = df.groupby("user", sort=False).cumcount().astype(np.int64)
    return df


def _check_pairs(df: pd.DataFrame, name: str, report: ValidationReport) -> pd.DataFrame:
    """Empty ids, invalid ids and duplicates; returns the rows to keep (exact duplicates dropped)."""
    if df.empty:
        report.add("error", name, "has no interactions")
        return df
    for col in ("user", "item"):
        empty = (df[col] == "").to_numpy()
        if empty.any():
            report.add("error", name, f"empty {col} id on line(s)", (np.flatnonzero(empty) + 2).tolist())
    bad_item = df["item"].str.contains(r"[/\\]", regex=True).to_numpy() | df["item"].isin([".", ".."]).to_numpy()
    if bad_item.any():
        report.add("error", name, "item ids that cannot name a file", pd.unique(df.loc[bad_item, "item"]).tolist())
    dup = df.duplicated(keep="first").to_numpy()
    if dup.any():
        rows = df.loc[dup]
        report.add("warning", name, "duplicate rows (identical user,item,timestamp; dropped on load)",
                   [f"{u}/{i}" for u, i in zip(rows["user"], rows["item"])])
        df = df.loc[~dup]
    rewatch = df.duplicated(subset=["user", "item"], keep="first").to_numpy()
    if rewatch.any():
        rows = df.loc[rewatch]
        report.add("warning", name, "a user has the same item more than once (kept)",
                   [f"{u}/{i}" for u, i in zip(rows["user"], rows["item"])])
    return df


def _read_titles(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    if not path.is_file():
        report.add("error", path.name, "missing file (item,title)")
        return None
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        df = _read_titles_lenient(path, report)
        if df is None:
            return None
    df = _columns(df, TITLES_COLUMNS, path, report)
    if df is None:
        return None
    df["item"] = df["item"].str.strip()
    dup = df.duplicated(subset=["item"], keep="first").to_numpy()
    if dup.any():
        report.add("error", path.name, "duplicate item ids", pd.unique(df.loc[dup, "item"]).tolist())
    empty = (df["item"] == "").to_numpy()
    if empty.any():
        report.add("error", path.name, "empty item id on line(s)", (np.flatnonzero(empty) + 2).tolist())
    no_title = (df["title"].str.strip() == "").to_numpy() & ~empty
    if no_title.any():
        report.add("warning", path.name, "items with an empty title", df.loc[no_title, "item"].tolist())
    return df.loc[~dup & ~empty].reset_index(drop=True)


def _read_titles_lenient(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    """Titles with unquoted commas: split each line at its first comma."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        report.add("error", path.name, f"is not UTF-8 text: {e}")
        return None
    rows = [line.split(",", 1) for line in lines if line.strip()]
    if not rows or len(rows[0]) != 2:
        report.add("error", path.name, "cannot be parsed as CSV with header item,title")
        return None
    bad = [n for n, r in enumerate(rows, start=1) if len(r) != 2]
    if bad:
        report.add("error", path.name, "lines without an 'item,title' pair", bad)
        return None
    header, body = rows[0], rows[1:]
    return pd.DataFrame(body, columns=[h.strip() for h in header], dtype=str)


def _read_likes_views(path: Path, report: ValidationReport) -> pd.DataFrame:
    empty = pd.DataFrame({"item": pd.Series([], dtype=str), "likes": pd.Series([], dtype=np.int64),
                          "views": pd.Series([], dtype=np.int64)})
    if not path.is_file():
        report.add("warning", path.name, "missing file (item<TAB>likes<TAB>views); likes and views left empty")
        return empty
    try:
        df = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        report.add("warning", path.name, "is empty")
        return empty
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        report.add("error", path.name, f"cannot be parsed as tab-separated item, likes, views: {e}")
        return empty
    if df.shape[1] != 3:
        report.add("error", path.name, f"expected 3 tab-separated columns (item, likes, views), found {df.shape[1]}")
        return empty
    df.columns = list(LIKES_VIEWS_COLUMNS)
    df["item"] = df["item"].str.strip()
    first = df.iloc[0] if len(df) else None
    if first is not None and first["likes"].strip().lower() == "likes" and first["views"].strip().lower() == "views":
        df = df.iloc[1:]  # a header line
    values = {col: pd.to_numeric(df[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
              for col in ("likes", "views")}
    bad = np.zeros(len(df), dtype=bool)
    for col, v in values.items():
        wrong = ~np.isfinite(v) | (v != np.round(v)) | (v < 0)
        if wrong.any():
            report.add("warning", path.name, f"{col} is not a non-negative integer (rows dropped; likes and views "
                       "of those items left empty)", df["item"].to_numpy()[wrong].tolist())
        bad |= wrong
    out = {"item": df["item"].to_numpy()[~bad]}
    for col, v in values.items():
        out[col] = v[~bad].astype(np.int64)
    result = pd.DataFrame(out).astype({"item": str})
    dup = result.duplicated(subset=["item"]).to_numpy()
    if dup.any():
        report.add("error", path.name, "duplicate item ids", pd.unique(result.loc[dup, "item"]).tolist())
        result = result.loc[~dup]
    return result.reset_index(drop=True)


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
    pairs = (_read_pairs_csv if pairs_format == "csv" else _read_pairs_tsv)(pairs_path, report)
    titles = _read_titles(root / f"{name}_titles.csv", report)
    likes_views = _read_likes_views(root / f"{name}_likes_and_views.txt", report)
    if pairs is None:
        return report, None
    pairs = _check_pairs(pairs, pairs_path.name, report)
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


def write_pairs_csv(df: pd.DataFrame) -> bytes:
    """``user,item,timestamp`` rows as CSV bytes (the layout's pairs file)."""
    buf = io.StringIO()
    df[list(PAIRS_COLUMNS)].to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


def write_titles_csv(items: Sequence[str], titles: Sequence[str]) -> bytes:
    """``item,title`` rows as CSV bytes, quoted where needed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TITLES_COLUMNS)
    writer.writerows(zip(items, titles))
    return buf.getvalue().encode("utf-8")
