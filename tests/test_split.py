"""MicroLens preprocessing and the leave-one-out split on a hand-made example with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from linkedout.data import DatasetError, SplitData, leave_one_out, preprocess, training_examples


def _interactions() -> pd.DataFrame:
    rows = []
    # user "a": 4 interactions -> dropped (< 5)
    rows += [("a", f"x{k}", 10 * k) for k in range(4)]
    # user "b": 6 interactions, given out of time order; items 1..6 at times 60,50,...
    rows += [("b", str(k), 100 - 10 * k) for k in range(6, 0, -1)]
    # user "c": 15 interactions (items 101..115 at increasing times) -> last 13 kept (103..115)
    rows += [("c", str(100 + k), 1000 + k) for k in range(1, 16)]
    # user "d": 5 interactions with a timestamp tie: "7" and "8" both at 5, file order kept
    rows += [("d", "1", 1), ("d", "7", 5), ("d", "8", 5), ("d", "2", 9), ("d", "999", 12)]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"]).sample(frac=1.0, random_state=0)


def test_preprocess_drops_short_users_and_keeps_last_13() -> None:
    df = _interactions()
    # shuffling above would break file-order ties; restore d's order for the tie check
    df = pd.concat([df[df.user != "d"], _interactions().sort_index().query("user == 'd'")])
    out = preprocess(df)
    seqs = out.groupby("user", sort=False)["item"].apply(list).to_dict()
    assert list(seqs) == ["b", "c", "d"]
    assert seqs["b"] == ["6", "5", "4", "3", "2", "1"]  # time order (item 6 at t=40 is first)
    assert seqs["c"] == [str(100 + k) for k in range(3, 16)]
    assert seqs["d"] == ["1", "7", "8", "2", "999"]  # the tie keeps file order
    assert preprocess(df, min_interactions=3, max_interactions=3).groupby("user").size().to_dict() == {
        "a": 3, "b": 3, "c": 3, "d": 3}


def test_leave_one_out_exact_histories_targets_and_cold_flags() -> None:
    rows = [("u1", i, t) for t, i in enumerate(["A", "B", "C", "D", "E"])]
    rows += [("u2", i, t) for t, i in enumerate(["B", "C", "A", "F", "G"])]
    rows += [("u3", i, t) for t, i in enumerate(["A", "B", "C", "D", "F"])]
    split = leave_one_out(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), max_history=3)
    assert split.item_ids == ["", "A", "B", "C", "D", "E", "F", "G"]
    a, b, c, d, e, f, g = range(1, 8)
    assert split.user_ids == ["u1", "u2", "u3"]
    assert [s.tolist() for s in split.train_sequences] == [[a, b, c], [b, c, a], [a, b, c]]
    # validation: target = second-to-last; history = training items only, left-padded
    assert split.valid.targets.tolist() == [d, f, d]
    assert split.valid.histories.tolist() == [[a, b, c], [b, c, a], [a, b, c]]
    # test: target = last; history ends with the validation item
    assert split.test.targets.tolist() == [e, g, f]
    assert split.test.histories.tolist() == [[b, c, d], [c, a, f], [b, c, d]]
    # cold = the target never occurs in any training sequence
    assert split.valid.cold.tolist() == [True, True, True]
    assert split.test.cold.tolist() == [True, True, True]
    assert split.item_counts.tolist() == [0, 3, 3, 3, 0, 0, 0, 0]
    assert split.user_full_history["u2"].tolist() == [b, c, a, f, g]
    assert split.num_items == 7 and split.max_history == 3

    long_hist = leave_one_out(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), max_history=6)
    assert long_hist.test.histories[0].tolist() == [0, 0, a, b, c, d]
    assert long_hist.valid.histories[0].tolist() == [0, 0, 0, a, b, c]


def test_cold_flag_false_for_items_seen_in_training() -> None:
    rows = [("u1", i, t) for t, i in enumerate(["A", "B", "C"])]
    rows += [("u2", i, t) for t, i in enumerate(["C", "D", "A"])]
    split = leave_one_out(pd.DataFrame(rows, columns=["user", "item", "timestamp"]))
    # training: u1 [A], u2 [C]; u1 test target C (seen), u2 test target A (seen), valid B / D (unseen)
    assert split.test.cold.tolist() == [False, False]
    assert split.valid.cold.tolist() == [True, True]


def test_full_pipeline_on_the_hand_made_example(tmp_path: Path) -> None:
    split = leave_one_out(preprocess(_interactions()), max_history=10)
    assert split.user_ids == ["b", "c", "d"]
    idx = split.item_index()
    assert [split.item_ids[i] for i in split.train_sequences[1]] == [str(100 + k) for k in range(3, 14)]
    assert split.item_ids[split.test.targets[1]] == "115"
    assert [split.item_ids[i] for i in split.test.histories[1]] == [str(100 + k) for k in range(4, 15)][-10:]
    # b's test target "1" is in d's training sequence; "115" and "999" are never trained on
    assert split.test.cold.tolist() == [False, True, True]
    assert idx["999"] == split.test.targets[2]

    split.save(tmp_path / "split")
    back = SplitData.load(tmp_path / "split")
    assert back.item_ids == split.item_ids and back.user_ids == split.user_ids
    for name in ("valid", "test"):
        for field in ("histories", "targets", "cold"):
            np.testing.assert_array_equal(getattr(getattr(back, name), field), getattr(getattr(split, name), field))
    assert [s.tolist() for s in back.train_sequences] == [s.tolist() for s in split.train_sequences]
    np.testing.assert_array_equal(back.item_counts, split.item_counts)
    assert {u: h.tolist() for u, h in back.user_full_history.items()} == {
        u: h.tolist() for u, h in split.user_full_history.items()}


def test_catalog_numbers_unwatched_items_too() -> None:
    rows = [("u", i, t) for t, i in enumerate(["2", "10", "3"])]
    split = leave_one_out(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), catalog=["1", "2", "3", "10"])
    assert split.item_ids == ["", "1", "2", "3", "10"] and split.item_counts.shape == (5,)
    with pytest.raises(DatasetError, match="not in the catalog"):
        leave_one_out(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), catalog=["2", "3"])


def test_training_examples_are_next_item_windows() -> None:
    rows = [("u1", str(i), i) for i in range(1, 6)]  # train [1, 2, 3]
    rows += [("u2", str(i), i) for i in range(1, 10)]  # train [1..7] -> 6 pairs -> 2 windows of 4
    rows += [("u3", str(i), i) for i in (1, 2, 3)]  # train [1] -> no pairs
    split = leave_one_out(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), max_history=4)
    inputs, targets = training_examples(split, max_history=4)
    assert inputs.dtype == np.int64 and targets.dtype == np.int64
    assert inputs.tolist() == [[0, 0, 1, 2], [0, 0, 1, 2], [3, 4, 5, 6]]
    assert targets.tolist() == [[0, 0, 2, 3], [0, 0, 2, 3], [4, 5, 6, 7]]


def test_bad_input_is_rejected() -> None:
    with pytest.raises(DatasetError, match="missing column"):
        preprocess(pd.DataFrame({"user": ["a"], "item": ["b"]}))
    with pytest.raises(ValueError, match="max_interactions"):
        preprocess(_interactions(), min_interactions=5, max_interactions=4)
    short = pd.DataFrame([("u", "a", 1), ("u", "b", 2)], columns=["user", "item", "timestamp"])
    with pytest.raises(DatasetError, match="fewer than 3"):
        leave_one_out(short)
    with pytest.raises(ValueError, match="max_history"):
        leave_one_out(_interactions(), max_history=0)


def test_load_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"split\.json: missing file"):
        SplitData.load(tmp_path)
