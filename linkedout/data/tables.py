"""The MicroLens layout's table files: reading and checking each one, and writing pairs and titles.

Every problem goes into a :class:`ValidationReport` (errors make the dataset unusable, warnings do
not), naming the file, the problem, how many rows or ids are affected and the first few of them;
:mod:`.microlens` reads a whole dataset with these.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

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


def read_pairs_csv(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    """``{prefix}_pairs.csv`` as ``user, item, timestamp:int64``; None after reporting why it cannot be read."""
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


def read_pairs_tsv(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    """``{prefix}_pairs.tsv`` as ``user, item, timestamp`` (the position in the user's sequence); None after
    reporting why it cannot be read."""
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


def check_pairs(df: pd.DataFrame, name: str, report: ValidationReport) -> pd.DataFrame:
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


def read_titles(path: Path, report: ValidationReport) -> pd.DataFrame | None:
    """``{prefix}_titles.csv`` as ``item, title`` (duplicate and empty ids dropped); None after reporting why
    it cannot be read."""
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


def read_likes_views(path: Path, report: ValidationReport) -> pd.DataFrame:
    """``{prefix}_likes_and_views.txt`` as ``item, likes:int64, views:int64`` (empty when absent or unreadable)."""
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
