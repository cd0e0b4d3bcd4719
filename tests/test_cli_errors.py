"""Clear errors up front, a bounded failure policy, Ctrl-C, and what the commands print."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from linkedout.cli import build_parser, main
from linkedout.data.microlens import load_microlens
from linkedout.data.synth import SynthConfig, generate

FAST = ["--layers", "0,4", "--frames", "2", "--frame-size", "56", "--tokens", "8", "--text-tokens", "2",
        "--shard-size", "4", "--decode-workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("data"), SynthConfig.preset(
        "toy", num_videos=8, num_users=24, num_interactions=140, num_topics=2, video_size=32, num_frames=4,
        max_interactions_per_user=6,
        workers=0))


def _all_parsers(parser: argparse.ArgumentParser, name: str = "linkedout") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _all_parsers(sub, f"{name} {sub_name}")
    return out


def test_every_option_of_every_command_is_documented() -> None:
    undocumented = [f"{name}: {action.option_strings or action.dest}"
                    for name, parser in _all_parsers(build_parser()) for action in parser._actions
                    if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
                    and not (action.help or "").strip()]
    assert undocumented == []  # e.g. `evaluate --data/--features/--run-dir` had no help


def test_train_prints_a_summary_not_the_history(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(data), "--run-dir", str(tmp_path / "r"), "--variant", "sasrec_id",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 5 and "best validation ndcg@10" in out and "metrics.jsonl" in out
    assert main(["train", "--data", str(data), "--run-dir", str(tmp_path / "r"), "--variant", "sasrec_id",
                 "--epochs", "2", "--json"]) == 0
    assert '"history"' in capsys.readouterr().out  # the whole result on request


def test_train_into_a_run_dir_of_another_variant_is_refused_clearly(data: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from linkedout.extraction import BackboneConfig, ExtractionConfig, extract_dataset

    run = tmp_path / "run"
    store = tmp_path / "features"
    extract_dataset(load_microlens(data), store, ExtractionConfig(layers=(0, 4), num_frames=2, frame_size=56, tokens=8,
                                                                  text_tokens=2, decode_workers=0),
                    BackboneConfig(tiny_image_size=56, device="cpu"))
    assert main(["train", "--data", str(data), "--features", str(store), "--run-dir", str(run), "--variant",
                 "sasrec_id", "--epochs", "1"]) == 0
    config = (run / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--features", str(store), "--run-dir", str(run), "--variant",
                 "linkedout", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "variant: 'sasrec_id' -> 'linkedout'" in err and "--force" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line.lower()] == [
        line for line in err.splitlines() if line.startswith("linkedout train: error:")] != []
    assert (run / "config.json").read_text() == config  # nothing in the run directory was touched
    assert main(["train", "--data", str(data), "--features", str(store), "--run-dir", str(run), "--variant",
                 "linkedout", "--epochs", "1", "--force"]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_extract_on_cuda_without_cuda_is_a_clear_error_up_front(data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "f"), "--device", "cuda", *FAST]) == 2
    err = capsys.readouterr().err
    assert "BackboneConfig.device is 'cuda'" in err and "--device cpu" in err and "AssertionError" not in err
    assert not (tmp_path / "f").exists()


def test_a_missing_backbone_directory_is_named(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "models" / "llava-onevision-7b"
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "f"), "--backbone", str(missing), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"the backbone directory '{missing}' does not exist" in err and "repo" not in err.lower()
    (tmp_path / "empty").mkdir()
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "f"), "--backbone", str(tmp_path / "empty"),
                 *FAST]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_more_tokens_than_a_video_gives_is_refused(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "f"), *FAST, "--tokens", "5000"]) == 2
    err = capsys.readouterr().err
    assert "ExtractionConfig.tokens=5000" in err and "at most K = " in err
    assert not list((tmp_path / "f").glob("shards/*.npy"))


def test_a_dataset_no_user_can_train_on_fails_before_extraction(data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short"
    shutil.copytree(data, short)
    pairs = short / "MicroLens-synth_pairs.csv"
    df = pd.read_csv(pairs, dtype=str)
    df.groupby("user").head(4).to_csv(pairs, index=False)  # every user keeps 4 interactions
    assert main(["run", "--workdir", str(tmp_path / "w"), "--data", str(short), "--variants", "sasrec_id"]) == 2
    err = capsys.readouterr().err
    assert "no user has >= 5 interactions" in err
    assert not (tmp_path / "w" / "features").exists()  # refused before any extraction


def test_extract_fails_above_the_allowed_failed_share(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    bad = load_microlens(broken).item_ids[0]
    (broken / "MicroLens-synth_videos" / f"{bad}.mp4").write_bytes(b"")
    store = tmp_path / "f"
    assert main(["extract", "--data", str(broken), "--out", str(store), *FAST]) == 1  # 1 of 8 > 1 %
    out = capsys.readouterr().out
    assert f"{bad}:" in out and "failures.json" in out and "--max-failed-share" in out
    assert main(["extract", "--data", str(broken), "--out", str(store), *FAST, "--max-failed-share", "20%"]) == 0
    assert "0 failed videos retried" in capsys.readouterr().out  # unchanged file: not tried again
    assert main(["extract", "--data", str(broken), "--out", str(store), *FAST, "--retry-failed",
                 "--max-failed-share", "0.2"]) == 0
    assert "1 failed videos retried" in capsys.readouterr().out


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         data: Path, tmp_path: Path) -> None:

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("linkedout.job.extraction.extract", interrupted)
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "f")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == ("linkedout extract: interrupted; everything written so far is kept: run the same "
                           "command again to resume")


@pytest.mark.integration
@pytest.mark.slow  # two real extractions in subprocesses (~25 s here); the in-process tests cover the same paths
def test_sigint_during_extraction_stops_cleanly_and_the_run_resumes(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "f"
    env = {**os.environ, "LINKEDOUT_PROGRESS": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "linkedout", "extract", "--data", str(data), "--out", str(store), *FAST[:-2],
           "--shard-size", "2", "--batch-size", "1", "--decode-workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(store.glob("shards/shard-*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("linkedout extract: interrupted")
    assert 1 <= len(list(store.glob("shards/shard-*.json"))) < 4
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already complete" in done.stdout and (store / "index.json").is_file()


def test_run_exits_1_when_the_extraction_step_finds_too_many_failed_videos(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`linkedout run` exits as `extract` does (1) when the collect-index step stops on the failed share;
    any other failed step is an error of its own (2)."""
    from linkedout.job.step import StepFailed

    def too_many(*_a: object, **_k: object) -> None:
        raise StepFailed("collect-index", "TooManyFailures", "3 of 8 videos failed (37.5 %) > --max-failed-share 1 %",
                         str(tmp_path / "collect-index.log"))

    monkeypatch.setattr("pipelines.local.run_main_job", too_many)
    assert main(["run", "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "collect-index failed: TooManyFailures" in err and "--max-failed-share" in err

    def other(*_a: object, **_k: object) -> None:
        raise StepFailed("train", "StageMismatch", "train.seed: 42 -> 43")

    monkeypatch.setattr("pipelines.local.run_main_job", other)
    assert main(["run", "--workdir", str(tmp_path)]) == 2
    assert "train.seed: 42 -> 43" in capsys.readouterr().err


def test_export_of_a_missing_run_dir_says_it_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--run-dir", str(tmp_path / "nope"), "--repo", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert f"run directory {tmp_path / 'nope'} does not exist" in err and "--data" not in err


def test_the_export_step_refuses_an_s3_upload_without_credentials_at_once(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration error, not a transient one: it fails before the export, and the pipelines do not retry it."""
    from linkedout.job.publish import export

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ValueError, match="no S3 credentials to upload the model repository to s3://b/m"):
        export(str(tmp_path), str(tmp_path / "data"), "", str(tmp_path / "split"), "sasrec_id",
               upload_uri="s3://b/m")


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """``linkedout ... | head``: the reader goes away; no BrokenPipeError traceback."""
    import subprocess
    import sys

    code = "import sys; from linkedout.cli import main; sys.exit(main(['model', 'summary']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1)
    proc.stdout.close()  # as `head -c 1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err
