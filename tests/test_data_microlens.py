"""Reading and checking the MicroLens layout: csv and tsv pairs, and every kind of problem reported."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from linkedout.data import DatasetError, find_prefix, load_microlens, validate_microlens

PREFIX = "MicroLens-test"


def _tiny_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


MP4 = _tiny_mp4()

PAIRS = [  # user, item, timestamp (deliberately not sorted)
    ("2", "3", 300), ("10", "1", 100), ("2", "1", 100), ("10", "4", 50), ("2", "2", 200), ("10", "2", 900),
]


def make_dataset(root: Path, pairs_format: str = "csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if pairs_format == "csv":
        df = pd.DataFrame(PAIRS, columns=["user", "item", "timestamp"])
        df.to_csv(root / f"{PREFIX}_pairs.csv", index=False)
    else:
        (root / f"{PREFIX}_pairs.tsv").write_text("2\t1 2 3\n10\t4 1 2\n")
    titles = pd.DataFrame({"item": ["1", "2", "3", "4"],
                           "title": ["cats, dogs and more #pets", "b #x", "c #y", "d #z"]})
    titles.to_csv(root / f"{PREFIX}_titles.csv", index=False)
    (root / f"{PREFIX}_likes_and_views.txt").write_text("1\t5\t50\n2\t1\t10\n3\t0\t7\n4\t2\t20\n")
    (root / f"{PREFIX}_videos").mkdir()
    (root / f"{PREFIX}_covers").mkdir()
    for item in ("1", "2", "3", "4"):
        (root / f"{PREFIX}_videos" / f"{item}.mp4").write_bytes(MP4)
        Image.new("RGB", (8, 8), (255, 0, 0)).save(root / f"{PREFIX}_covers" / f"{item}.jpg")
    return root


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


def _errors(root: Path) -> str:
    report = validate_microlens(root)
    return "\n".join(str(e) for e in report.errors)


def test_reads_csv_layout(ds: Path) -> None:
    d = load_microlens(ds)
    assert d.prefix == PREFIX and d.pairs_format == "csv"
    # sorted by user (numeric ids numerically: 2 before 10) then time
    assert list(d.interactions.itertuples(index=False, name=None)) == [
        ("2", "1", 100), ("2", "2", 200), ("2", "3", 300), ("10", "4", 50), ("10", "1", 100), ("10", "2", 900)]
    assert d.interactions["timestamp"].dtype == np.int64
    assert d.item_ids == ["1", "2", "3", "4"]
    assert d.user_ids == ["2", "10"]
    assert d.title_of("1") == "cats, dogs and more #pets"  # quoted comma survives
    assert d.likes_views.set_index("item").loc["1", "views"] == 50
    assert d.video_path("3").is_file() and d.cover_path("3").is_file()
    assert find_prefix(ds)[0] == PREFIX
    report = validate_microlens(ds)
    assert report.ok and not report.warnings, report.format()
    assert "OK" in report.format()


def test_reads_tsv_layout_with_made_up_increasing_timestamps(tmp_path: Path) -> None:
    d = load_microlens(make_dataset(tmp_path / "ds", pairs_format="tsv"))
    assert d.pairs_format == "tsv"
    assert d.interactions.groupby("user", sort=False)["item"].apply(list).to_dict() == {
        "2": ["1", "2", "3"], "10": ["4", "1", "2"]}
    for _, ts in d.interactions.groupby("user")["timestamp"]:
        assert np.all(np.diff(ts.to_numpy()) > 0)


def test_missing_pairs_file(ds: Path) -> None:
    (ds / f"{PREFIX}_pairs.csv").unlink()
    assert "_pairs.csv" in _errors(ds)
    with pytest.raises(DatasetError, match="missing file"):
        load_microlens(ds)


def test_missing_titles_file(ds: Path) -> None:
    (ds / f"{PREFIX}_titles.csv").unlink()
    with pytest.raises(DatasetError, match=f"{PREFIX}_titles.csv: missing file"):
        load_microlens(ds)


def test_missing_likes_views_is_only_a_warning(ds: Path) -> None:
    (ds / f"{PREFIX}_likes_and_views.txt").unlink()
    report = validate_microlens(ds)
    assert report.ok and any("likes_and_views" in str(w) for w in report.warnings)
    assert load_microlens(ds).likes_views.empty


def test_missing_column(ds: Path) -> None:
    pd.DataFrame(PAIRS, columns=["user", "item", "time"]).to_csv(ds / f"{PREFIX}_pairs.csv", index=False)
    errors = _errors(ds)
    assert f"{PREFIX}_pairs.csv" in errors and "missing column(s) ['timestamp']" in errors


def test_non_integer_timestamp(ds: Path) -> None:
    (ds / f"{PREFIX}_pairs.csv").write_text("user,item,timestamp\n1,1,100\n1,2,soon\n")
    assert "timestamp is not an integer" in _errors(ds)


def test_unknown_items_in_pairs(ds: Path) -> None:
    rows = [*PAIRS, ("2", "99", 400), ("10", "77", 1000), ("2", "77", 500)]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(ds / f"{PREFIX}_pairs.csv", index=False)
    report = validate_microlens(ds)
    (issue,) = [e for e in report.errors if "unknown" in e.problem]
    assert issue.file == f"{PREFIX}_pairs.csv"
    assert issue.count == 2 and set(issue.examples) == {"99", "77"}
    assert "3 rows" in issue.problem
    with pytest.raises(DatasetError, match="99"):
        load_microlens(ds)


def test_missing_video(ds: Path) -> None:
    (ds / f"{PREFIX}_videos" / "2.mp4").unlink()
    (ds / f"{PREFIX}_videos" / "4.mp4").unlink()
    report = validate_microlens(ds)
    (issue,) = report.errors
    assert "missing video" in issue.problem and issue.count == 2 and issue.examples == ("2", "4")
    with pytest.raises(DatasetError, match="missing video"):
        load_microlens(ds)
    assert load_microlens(ds, check_videos=False).item_ids == ["1", "2", "3", "4"]
    assert validate_microlens(ds, check_videos=False).ok


def test_unreadable_videos(ds: Path) -> None:
    (ds / f"{PREFIX}_videos" / "3.mp4").write_bytes(b"\x00garbage, not a video\xff" * 20)
    (ds / f"{PREFIX}_videos" / "1.mp4").write_bytes(b"")
    report = validate_microlens(ds)
    assert all(e.problem.startswith("unreadable video files") for e in report.errors)
    assert {ex for e in report.errors for ex in e.examples} == {"1.mp4", "3.mp4"}
    # load's fast check (stat only) catches the empty file; the probe catches the garbage one
    with pytest.raises(DatasetError, match="zero size"):
        load_microlens(ds)
    (ds / f"{PREFIX}_videos" / "1.mp4").write_bytes(MP4)
    load_microlens(ds)
    with pytest.raises(DatasetError, match=r"PyAV cannot open them.*3\.mp4"):
        load_microlens(ds, probe_videos=True)


def test_duplicate_rows(ds: Path) -> None:
    rows = [*PAIRS, PAIRS[0], PAIRS[0]]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(ds / f"{PREFIX}_pairs.csv", index=False)
    report = validate_microlens(ds)
    assert report.ok
    (issue,) = [w for w in report.warnings if "duplicate rows" in w.problem]
    assert issue.count == 2 and issue.examples[0] == "2/3"
    assert len(load_microlens(ds).interactions) == len(PAIRS)  # exact duplicates dropped


def test_duplicate_title_ids_are_an_error(ds: Path) -> None:
    (ds / f"{PREFIX}_titles.csv").write_text("item,title\n1,a\n2,b\n3,c\n4,d\n2,other\n")
    errors = _errors(ds)
    assert f"{PREFIX}_titles.csv: duplicate item ids (1; first: 2)" in errors


def test_several_prefixes_are_reported(ds: Path) -> None:
    (ds / "Other_pairs.csv").write_text("user,item,timestamp\n")
    assert "several datasets" in _errors(ds)
    assert load_microlens(ds, prefix=PREFIX).prefix == PREFIX


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load_microlens(tmp_path / "nowhere")


def _warnings(root: Path) -> str:
    return "\n".join(str(w) for w in validate_microlens(root).warnings)


def test_negative_timestamps_are_a_warning(ds: Path) -> None:
    pd.DataFrame([*PAIRS[:-1], ("10", "2", -900)], columns=["user", "item", "timestamp"]).to_csv(
        ds / f"{PREFIX}_pairs.csv", index=False)
    assert "negative timestamps" in _warnings(ds) and "(1; first: 7)" in _warnings(ds)  # file line 7
    assert not validate_microlens(ds).errors  # still usable: the rows are kept, in time order
    assert (load_microlens(ds).interactions["timestamp"] < 0).sum() == 1


@pytest.mark.parametrize("first_row_bad", [True, False], ids=["first-row", "later-row"])
def test_non_numeric_likes_and_views_are_a_warning_naming_the_items(ds: Path, first_row_bad: bool) -> None:
    rows = ["1\t5\t50", "2\t1\t10", "3\t0\t7", "4\t2\t20"]
    rows[0 if first_row_bad else 2] = rows[0 if first_row_bad else 2].replace("\t5\t", "\tmany\t").replace("\t0\t", "\tn/a\t")
    (ds / f"{PREFIX}_likes_and_views.txt").write_text("\n".join(rows) + "\n")
    bad = "1" if first_row_bad else "3"
    warnings = _warnings(ds)
    # before: a bad first row was silently taken for a header (and dropped), a later one refused the dataset
    assert "likes is not a non-negative integer" in warnings and f"first: {bad})" in warnings
    assert not validate_microlens(ds).errors
    lv = load_microlens(ds).likes_views
    assert bad not in set(lv["item"]) and len(lv) == 3


def test_a_header_line_in_likes_and_views_is_still_accepted(ds: Path) -> None:
    (ds / f"{PREFIX}_likes_and_views.txt").write_text("item\tlikes\tviews\n1\t5\t50\n2\t1\t10\n3\t0\t7\n4\t2\t20\n")
    assert "likes" not in _warnings(ds) and len(load_microlens(ds).likes_views) == 4


def test_several_prefixes_name_an_option_that_exists(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from linkedout.cli import main

    (ds / "Other_pairs.csv").write_text("user,item,timestamp\n")
    assert main(["data", "validate", str(ds), "--no-videos"]) == 1
    out = capsys.readouterr().out
    assert "--prefix NAME" in out and "prefix=" not in out  # the advice names a real option...
    assert main(["data", "validate", str(ds), "--no-videos", "--prefix", PREFIX]) == 0  # ...that works
    assert main(["data", "stats", str(ds), "--prefix", PREFIX]) == 0
