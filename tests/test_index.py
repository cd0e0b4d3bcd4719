"""The retrieval index (linkedout/export/index.py): exact and ANN searches agree, exclusions and removals
hold, live additions are seen, the directory survives a writer killed mid-append, bad settings are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from linkedout.export.index import IndexSettings, RetrievalIndex, RetrievalIndexError, auto_nlist
from linkedout.export.index_files import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
D = 16


def clustered(n: int, d: int = D, topics: int = 20, seed: int = 0) -> np.ndarray:
    """Rows of a mixture of Gaussians (topic structure, varied norms), float32 (n, d)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, d))
    x = centres[rng.integers(0, topics, n)] + 0.5 * rng.standard_normal((n, d))
    return (x * rng.lognormal(0, 0.2, (n, 1))).astype(np.float32)


def users_near(table: np.ndarray, b: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = table[rng.integers(0, table.shape[0], (b, 5))].mean(1)
    return (picks + 0.1 * rng.standard_normal(picks.shape)).astype(np.float32)


def brute_force(table: np.ndarray, users: np.ndarray, n: int, banned: list[set[int]]) -> list[list[int]]:
    """The reference: the n best rows (1-based) by float64 inner product, banned rows skipped."""
    scores = users.astype(np.float64) @ table.astype(np.float64).T
    return [[int(r) + 1 for r in np.argsort(-s) if int(r) + 1 not in ban][:n] for s, ban in zip(scores, banned)]


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return clustered(3000)


@pytest.fixture(scope="module")
def users(table: np.ndarray) -> np.ndarray:
    return users_near(table, 12)


def full_probe(kind: str) -> IndexSettings:
    """Every list searched (nprobe is capped at nlist), enough candidates: the ANN kinds then see every row."""
    return IndexSettings(kind=kind, nlist=16, nprobe=1000, candidates=300, ef_search=3000, pq_m=8)


# ---------------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq8"])
def test_ann_with_a_full_probe_gives_the_exact_answers(table: np.ndarray, users: np.ndarray, kind: str) -> None:
    exact = RetrievalIndex.build(table, IndexSettings(kind="exact"))
    ann = RetrievalIndex.build(table, full_probe(kind))
    history = np.zeros((len(users), 6), dtype=np.int64)
    history[:, 2:] = np.arange(1, 5)  # rows 1..4 watched, left-padded with 0
    rows, scores = exact.search(users, 10, exclude=history)
    rows_a, scores_a = ann.search(users, 10, exclude=history)
    np.testing.assert_array_equal(rows_a, rows)
    np.testing.assert_array_equal(scores_a, scores)
    assert rows.tolist() == brute_force(table, users, 10, [set(range(1, 5))] * len(users))


@pytest.mark.parametrize("kind", ["ivf_pq", "hnsw"])
def test_lossy_kinds_score_the_rows_they_share_with_exact_identically(table: np.ndarray, users: np.ndarray,
                                                                      kind: str) -> None:
    exact = RetrievalIndex.build(table, IndexSettings(kind="exact"))
    ann = RetrievalIndex.build(table, full_probe(kind))
    rows, scores = exact.search(users, 10)
    rows_a, scores_a = ann.search(users, 10)
    for r, s, ra, sa in zip(rows, scores, rows_a, scores_a):
        common = np.intersect1d(r, ra)
        assert common.size >= 9
        by_row, by_row_a = dict(zip(r.tolist(), s.tolist())), dict(zip(ra.tolist(), sa.tolist()))
        assert all(by_row[c] == by_row_a[c] for c in common.tolist())
        assert [x for x in r.tolist() if x in common] == [x for x in ra.tolist() if x in common]


def test_the_default_ann_finds_the_exact_top_10_on_clustered_data() -> None:
    table = clustered(20_000, d=32, topics=200)
    users = users_near(table, 200)
    ann = RetrievalIndex.build(table, IndexSettings(kind=IndexSettings().ann_kind))
    assert ann.kind == IndexSettings().ann_kind and ann.nlist == auto_nlist(20_000)
    truth = ann.exact().search(users, 10)[0]
    found = ann.search(users, 10)[0]
    recall = np.mean([np.intersect1d(f, t).size / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95


def test_auto_builds_exact_below_the_threshold_and_ann_from_it(table: np.ndarray) -> None:
    assert RetrievalIndex.build(table, IndexSettings(exact_below=3001)).kind == "exact"
    assert RetrievalIndex.build(table, IndexSettings(exact_below=3000)).kind == IndexSettings().ann_kind


# ---------------------------------------------------------------------------------- exclusions, removals

@pytest.mark.parametrize("kind", ["exact", "ivf_sq8"])
def test_excluded_rows_are_never_returned(table: np.ndarray, users: np.ndarray, kind: str) -> None:
    index = RetrievalIndex.build(table, full_probe(kind))
    best = index.search(users, 30)[0]
    banned = [set(b[::2].tolist()) for b in best]  # every other row of each user's best 30
    rows, _ = index.search(users, 10, exclude=[sorted(b) for b in banned])
    assert all(not (set(r.tolist()) & b) for r, b in zip(rows, banned))
    assert rows.tolist() == brute_force(table, users, 10, banned)


@pytest.mark.parametrize("kind", ["exact", "ivf_sq8", "hnsw"])
def test_removed_rows_are_never_returned(table: np.ndarray, users: np.ndarray, kind: str, tmp_path: Path) -> None:
    index = RetrievalIndex.build(table, full_probe(kind))
    gone = np.unique(index.search(users, 3)[0])
    index.remove(gone)
    rows, _ = index.search(users, 10)
    assert not np.isin(rows, gone).any()
    assert rows.tolist() == brute_force(table, users, 10, [set(gone.tolist())] * len(users))
    index.save(tmp_path)
    assert not np.isin(RetrievalIndex.load(tmp_path).search(users, 10)[0], gone).any()


def test_the_exact_search_over_many_blocks_and_added_rows_skips_removed_and_excluded_rows(table: np.ndarray,
                                                                                            users: np.ndarray) -> None:
    index = RetrievalIndex.build(table[:2000], IndexSettings(kind="exact", exact_block=1024))  # 2 blocks
    index.add(table[2000:])
    gone = np.unique(np.concatenate([index.search(users, 3)[0].ravel(), [5, 1999, 2001, 2999]]))
    index.remove(gone)
    banned = [set(b[1::2].tolist()) for b in index.search(users, 20)[0]]
    banned[0], banned[1] = set(), set(range(1, 3001, 3))  # none, and a thousand rows
    rows, scores = index.search(users, 15, exclude=[sorted(b) for b in banned])
    assert rows.tolist() == brute_force(table, users, 15, [b | set(gone.tolist()) for b in banned])
    assert np.allclose(scores, (table[rows - 1] * users[:, None, :]).sum(-1), atol=1e-5)


def test_a_search_past_the_live_rows_ends_with_padding() -> None:
    index = RetrievalIndex.build(clustered(5), IndexSettings(kind="exact"))
    index.remove([2])
    rows, scores = index.search(users_near(clustered(5), 1), 6, exclude=[[1]])
    assert sorted(rows[0, :3].tolist()) == [3, 4, 5] and rows[0, 3:].tolist() == [0, 0, 0]
    assert np.isfinite(scores[0, :3]).all() and np.isneginf(scores[0, 3:]).all()


# ---------------------------------------------------------------------------------- additions, files

@pytest.mark.parametrize("kind", ["exact", "ivf_sq8", "hnsw"])
def test_added_rows_are_found_at_once_and_after_reload(table: np.ndarray, users: np.ndarray, kind: str,
                                                       tmp_path: Path) -> None:
    index = RetrievalIndex.build(table, full_probe(kind))
    index.save(tmp_path)
    new = users[:3] * 10  # each new video is its user's best by far
    rows = index.add(new)
    assert rows.tolist() == [3001, 3002, 3003] and index.num_rows == 3003
    assert index.search(users[:3], 1)[0][:, 0].tolist() == rows.tolist()
    again = RetrievalIndex.load(tmp_path)
    assert again.search(users[:3], 1)[0][:, 0].tolist() == rows.tolist()
    np.testing.assert_array_equal(again.vectors(rows), new)


def test_an_add_writes_the_new_rows_and_the_manifest_only(table: np.ndarray, tmp_path: Path) -> None:
    index = RetrievalIndex.build(table, full_probe("ivf_sq8"))
    index.save(tmp_path)
    before = {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in tmp_path.iterdir()}
    index.add(table[:2])
    after = {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in tmp_path.iterdir()}
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"added-0.f32", MANIFEST}
    assert after["added-0.f32"][0] == 2 * D * 4


PAYLOAD = np.dtype([("id", "<i8"), ("gate", "<f4", (3,))])


def test_added_rows_carry_their_records_through_reload_save_and_refresh(table: np.ndarray, tmp_path: Path) -> None:
    index = RetrievalIndex.build(table, full_probe("ivf_sq8"), payload_dtype=PAYLOAD)
    index.save(tmp_path)
    reader = RetrievalIndex.load(tmp_path)
    rec = np.zeros(2, dtype=PAYLOAD)
    rec["id"], rec["gate"] = [70, 71], [[1, 2, 3], [4, 5, 6]]
    assert index.add(table[:2], rec).tolist() == [3001, 3002]
    assert index.payload_from == 3001 and index.added_payload()["id"].tolist() == [70, 71]
    assert reader.refresh() == 2 and reader.added_payload()["id"].tolist() == [70, 71]
    with pytest.raises(RetrievalIndexError, match="payload must be"):
        index.add(table[:1], rec)  # two records for one row
    with pytest.raises(RetrievalIndexError, match="needs a payload"):
        index.add(table[:1])
    index.save(tmp_path)  # a new generation: the added rows join the table, their records stay
    rec2 = np.zeros(1, dtype=PAYLOAD)
    rec2["id"] = 72
    index.add(table[:1], rec2)
    again = RetrievalIndex.load(tmp_path)
    assert again.num_rows == 3003 and again.added_payload()["id"].tolist() == [70, 71, 72]
    np.testing.assert_array_equal(again.added_payload()["gate"][1], [4, 5, 6])
    assert reader.refresh() == 1 and reader.added_payload()["id"].tolist() == [70, 71, 72]


def test_save_and_load_round_trip(table: np.ndarray, users: np.ndarray, tmp_path: Path) -> None:
    settings = IndexSettings(kind="ivf_sq8", nlist=32, nprobe=8, candidates=50)
    index = RetrievalIndex.build(table, settings)
    index.add(users[:2])
    index.remove([5, 3001])
    expected = index.search(users, 10)
    index.save(tmp_path)
    loaded = RetrievalIndex.load(tmp_path)
    assert (loaded.settings, loaded.kind, loaded.nlist, loaded.num_rows) == (settings, "ivf_sq8", 32, 3002)
    assert loaded.removed_rows().tolist() == [5, 3001]
    assert isinstance(loaded._base, np.memmap)
    np.testing.assert_array_equal(loaded.vectors(np.arange(3003)), np.concatenate([np.zeros((1, D)), table,
                                                                                    users[:2]]))
    for got, want in zip(loaded.search(users, 10), expected):
        np.testing.assert_array_equal(got, want)
    loaded.save(tmp_path)  # a new generation replaces the old one's files
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == [".lock", "added-1.f32", "ann-1.faiss", MANIFEST, "removed-1.i64", "table-1.npy"]
    assert RetrievalIndex.load(tmp_path).search(users, 10)[0].tolist() == expected[0].tolist()


def test_refresh_sees_another_writers_changes(table: np.ndarray, users: np.ndarray, tmp_path: Path) -> None:
    RetrievalIndex.build(table, full_probe("ivf_sq8")).save(tmp_path)
    writer, reader = RetrievalIndex.load(tmp_path), RetrievalIndex.load(tmp_path)
    rows = writer.add(users[:2] * 10)
    writer.remove([rows[1]])
    assert reader.search(users[:1], 1)[0][0, 0] != rows[0]
    assert reader.refresh() == 2
    assert reader.search(users[:2], 1)[0][:, 0].tolist()[0] == rows[0]
    assert rows[1] not in reader.search(users[1:2], 10)[0]
    writer.save(tmp_path)  # another generation: loaded whole
    reader.add(users[2:3] * 10)  # a writer first catches up with the directory, then appends
    assert RetrievalIndex.load(tmp_path).num_rows == 3003 and reader.removed_rows().tolist() == [rows[1]]


_KILLED_WRITER = """
import sys, time
import numpy as np
import linkedout.export.index as ix
import linkedout.export.index_files as files

def hang(path, text):
    # the rows are appended; the new manifest is half written to its temporary file and not yet in place
    with open(path.parent / ".manifest.json.crash.tmp", "w") as f:
        f.write(text[: len(text) // 2])
    open(sys.argv[2], "w").close()
    time.sleep(120)

files.atomic_write_text = hang
index = ix.RetrievalIndex.load(sys.argv[1])
index.add(np.full((50, index.dim), 7.0, dtype=np.float32))
"""


def test_a_writer_killed_mid_add_leaves_the_previous_state(table: np.ndarray, users: np.ndarray,
                                                           tmp_path: Path) -> None:
    d = tmp_path / "index"
    RetrievalIndex.build(table, full_probe("ivf_sq8")).save(d)
    expected = RetrievalIndex.load(d).search(users, 10)
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(d), str(ready)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"the writer did not reach its manifest (exit {child.poll()})"
        assert (d / "added-0.f32").stat().st_size == 50 * D * 4  # the rows are on disk, half-written state
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    index = RetrievalIndex.load(d)
    assert index.num_rows == 3000
    for got, want in zip(index.search(users, 10), expected):
        np.testing.assert_array_equal(got, want)
    rows = index.add(users[:1] * 10)  # the next writer cuts off the dead one's bytes
    assert (d / "added-0.f32").stat().st_size == D * 4
    again = RetrievalIndex.load(d)
    assert again.num_rows == 3001 and again.search(users[:1], 1)[0][0, 0] == rows[0]
    np.testing.assert_array_equal(again.vectors(rows), users[:1] * 10)


def test_a_shorter_file_than_the_manifest_names_is_an_error(table: np.ndarray, tmp_path: Path) -> None:
    index = RetrievalIndex.build(table, IndexSettings(kind="exact"))
    index.save(tmp_path)
    index.add(table[:3])
    with open(tmp_path / "added-0.f32", "r+b") as f:
        f.truncate(2 * D * 4)
    with pytest.raises(RetrievalIndexError, match="holds 32 of the 48 items"):
        RetrievalIndex.load(tmp_path)


def test_without_faiss_an_exact_index_is_built_and_saved_and_a_search_names_the_missing_package(
        tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.modules["faiss"] = None  # import faiss fails
        import numpy as np
        from linkedout.export.index import IndexSettings, RetrievalIndex, RetrievalIndexError
        x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
        RetrievalIndex.build(x, IndexSettings(kind="exact")).save({str(tmp_path)!r})
        index = RetrievalIndex.load({str(tmp_path)!r})
        print(index.num_rows)
        for call in (lambda: index.search(x[:1], 1), lambda: RetrievalIndex.build(x, IndexSettings(kind="ivf_sq8"))):
            try:
                call()
            except RetrievalIndexError as e:
                print(e)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "100"
    assert len(lines) == 3 and all("pip install faiss-cpu" in line for line in lines[1:])


# ---------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize(("changes", "message"), [
    ({"kind": "lsh"}, "IndexSettings.kind must be 'auto' or one of"),
    ({"ann_kind": "exact"}, "IndexSettings.ann_kind must be one of"),
    ({"nprobe": 0}, "IndexSettings.nprobe must be >= 1"),
    ({"candidates": 2.5}, "IndexSettings.candidates must be an integer"),
    ({"exact_below": True}, "IndexSettings.exact_below must be an integer"),
    ({"exact_block": 10}, "IndexSettings.exact_block must be >= 1024"),
])
def test_bad_settings_are_refused_naming_the_field(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RetrievalIndexError, match=message):
        IndexSettings(**changes)  # type: ignore[arg-type]


def test_bad_input_is_refused_naming_the_problem(table: np.ndarray, users: np.ndarray, tmp_path: Path) -> None:
    index = RetrievalIndex.build(table, IndexSettings(kind="exact"))
    cases = [
        (lambda: RetrievalIndex.build(table[:, :0]), r"embeddings must be \(N >= 1, d >= 1\)"),
        (lambda: RetrievalIndex.build(np.full((3, 2), np.nan)), "embeddings holds non-finite values"),
        (lambda: RetrievalIndex.build(table, IndexSettings(kind="ivf_flat", nlist=4000)),
         r"nlist \(4000\) must be <= the rows to index \(3000\)"),
        (lambda: RetrievalIndex.build(table, IndexSettings(kind="ivf_pq", pq_m=5)), r"pq_m \(5\) must divide"),
        (lambda: index.search(users[:, :4], 10), r"users must be \(M >= 1, 16\)"),
        (lambda: index.search(users, 0), "n must be an integer >= 1"),
        (lambda: index.search(users, 10, exclude=[[1]]), r"one list of rows per user \(12\), got 1"),
        (lambda: index.search(users[:1], 10, exclude=[[3001]]), r"exclude\[0\] holds rows outside 0..3000"),
        (lambda: index.add(table[:1, :3]), r"embeddings must be \(M >= 1, 16\)"),
        (lambda: index.remove([0, 7]), r"not live rows 1..3000: \[0\]"),
        (lambda: index.remove([7, 7]), "duplicates"),
        (lambda: index.vectors([3001]), "rows must be in 0..3000"),
        (lambda: index.tune(nlist=3), r"tune changes only .* not \['nlist'\]"),
        (lambda: index.refresh(), "refresh needs an index that was saved or loaded"),
        (lambda: RetrievalIndex.load(tmp_path), "manifest.json cannot be read .not a retrieval index directory"),
    ]
    for call, message in cases:
        with pytest.raises(RetrievalIndexError, match=message):
            call()
    index.remove([7])
    with pytest.raises(RetrievalIndexError, match=r"not live rows 1..3000: \[7\]"):
        index.remove([7])
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 99}))
    with pytest.raises(RetrievalIndexError, match="unknown index format 99"):
        RetrievalIndex.load(tmp_path)


def test_loading_faiss_logs_no_import_errors_where_info_is_shown() -> None:
    """Where the root logger shows INFO (a KFP step), loading faiss must not print the loader's failed
    attempts at SIMD builds (``ModuleNotFoundError("No module named 'faiss.swigfaiss_avx512'")``), which read
    like a failure of the job; a fresh interpreter, since faiss loads once per process."""
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from linkedout.export.index_kinds import faiss_module\n"
            "print(faiss_module().IndexFlatIP(4).d)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"
    assert "Error" not in out.stderr and "faiss.loader" not in out.stderr, out.stderr
