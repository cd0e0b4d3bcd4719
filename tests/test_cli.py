"""The ``linkedout`` command line: every subcommand's --help, clear errors, and the figures it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from linkedout.cli import build_parser, main

SUBCOMMANDS = [
    ["data", "synth"], ["data", "validate"], ["data", "stats"], ["extract"], ["features", "info"],
    ["model", "summary"], ["train"], ["evaluate"], ["report"], ["run"],
]


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=lambda a: " ".join(a))
def test_every_subcommand_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: linkedout " + " ".join(argv))


def test_help_is_fast_and_needs_no_heavy_imports() -> None:
    # --help must not import torch/transformers (the CLI imports lazily inside handlers)
    code = "import sys; from linkedout.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_features_info_at_the_paper_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", "info", "--layers", "6", "--tokens", "64", "--hidden", "4096"]) == 0
    fp16 = capsys.readouterr().out
    assert "3,145,728" in fp16  # 6 x 64 x 4096 x 2 B = 3.15 MB per video (paper)
    assert main(["features", "info", "--hidden", "4096", "--dtype", "int8"]) == 0
    int8 = capsys.readouterr().out
    assert "1,574,400" in int8  # values (1,572,864 B) + per-row float32 scales (1,536 B): ~half


def test_model_summary_prints_the_paper_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "summary"]) == 0
    out = capsys.readouterr().out
    # counted from the built model, not the paper's text: D=4096 -> MoE 6.31 M + head 2.11 M
    assert "6,313,286" in out and "2,108,672" in out and "8,421,958" in out


def test_bad_input_gives_one_clear_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linkedout data: error:") and "nowhere" in err
    assert "Traceback" not in err


def test_unknown_variant_is_rejected_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workdir", str(tmp_path / "w"), "--variants", "linkedout,bogus"]) == 2
    assert "unknown variant 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "w" / "data").exists()


def test_bad_layer_list_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["extract", "--data", "d", "--out", "o", "--layers", "0,four"])
    assert exc.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_validate_lists_problems_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "MicroLens-x_pairs.csv").write_text("user,item,timestamp\n1,7,100\n1,8,200\n")
    (tmp_path / "MicroLens-x_titles.csv").write_text("item,title\n7,a video\n")
    assert main(["data", "validate", str(tmp_path), "--no-videos"]) == 1
    out = capsys.readouterr().out
    assert "8" in out and "titles" in out.lower()
