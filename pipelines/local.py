"""Run a pipeline on this machine through ``kfp.local`` (``SubprocessRunner``, one subprocess per task).

This is how ``linkedout run`` runs the main job: the same compiled pipeline as on a cluster, its
tasks run by kfp's local orchestrator (``ParallelFor`` iterations two at a time, ``dsl.If``,
``dsl.Collected``, retries), each task a ``python -m kfp.dsl.executor_main`` subprocess of the
current interpreter (``use_venv=False``: the tasks run in the project's own environment, as they
run in the project's image on a cluster). The work directory ``W`` plays the role of the
cluster's work volume; kfp's own records (task outputs, artifacts: the ``Model`` checkpoints, the
``HTML`` report, ``Metrics``) go to ``W/kfp/runs/`` (the last few runs are kept).

What the runner adds to ``kfp.local``:

- every task's whole output goes to ``W/kfp/logs/<run>/<task>.log``; the console shows the
  steps' own lines, prefixed with the task, and kfp's task start/finish lines, without the
  executor's input dumps;
- a failed task stops the run with that step's own error (:class:`linkedout.job.step.StepFailed`:
  the step, the exception and its message, the task's log), not only kfp's "task failed";
  everything the earlier steps wrote stays and the next run reuses it;
- kfp's caching stays off: what is reused is decided by the stage functions' fingerprints.

Per-task overhead (measured on the 2-core development machine): kfp's own part of a task is
about 0.3 s (subprocess, executor, output files); the imports of the step dominate: torch about
3-4 s, Feast about 10 s on a busy machine, so a ~20-task run of the main job spends roughly one
to two minutes in process start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from kfp import local
from kfp.local import subprocess_task_handler

from linkedout.extraction.backbone_config import BackboneConfig
from linkedout.extraction.extractor import ExtractionConfig
from linkedout.job.extraction import MAIN_JOB_SHARD_SIZE
from linkedout.job.params import DEPLOY, as_parameter, training_defaults
from linkedout.job.step import ERRORS_ENV, StepFailed, read_errors
from linkedout.job.variants import DEFAULT_VARIANTS, parse_variant
from linkedout.utils import format_duration
from linkedout.workdir import Workdir
from pipelines import PIPELINES
from pipelines.compile import build
from pipelines.submit import package_of, parameters_of, parse_arguments

KEEP_RUNS = 3


def run(name: str, arguments: Mapping[str, Any], workdir: str | os.PathLike[str], *, image: str | None = None,
        echo: bool = True) -> dict[str, Any]:
    """Run pipeline ``name`` with ``arguments`` through kfp.local; returns its outputs (``{"Output": ...}``).

    ``workdir`` holds kfp's records and the task logs (``W/kfp/``); the steps write where their
    arguments say (the pipelines' ``workdir`` parameter, normally the same directory). A failed
    task raises :class:`linkedout.job.step.StepFailed`.
    """
    pipeline = build(name, image)
    root = Path(workdir).resolve() / "kfp"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    logs, errors = root / "logs" / stamp, root / "errors" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    errors.mkdir(parents=True, exist_ok=True)
    runs = root / "runs"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(runs), raise_on_error=True)
    streamer = _Streamer(logs, runs, echo=echo)
    try:
        with _environment({ERRORS_ENV: str(errors), "PYTHONUNBUFFERED": "1", **task_threads()}), \
                _quiet_kfp_warnings(), \
                _streaming(streamer):
            task = pipeline(**dict(arguments))
    except RuntimeError as e:
        records = read_errors(errors)
        failed = streamer.failed()
        if records:  # the last one is the final attempt of the failed task (kfp retries a task in place)
            last = records[-1]
            raise StepFailed(last["step"], last["type"], last["message"],
                             str(streamer.logs.get(failed, logs)) if failed else str(logs)) from None
        raise StepFailed(failed or "a task", "TaskFailed", f"{_plain(str(e))} (no error was recorded: the task's "
                         "process died or its component failed before the step started)",
                         str(streamer.logs.get(failed, logs)) if failed else str(logs)) from None
    finally:
        shutil.rmtree(errors, ignore_errors=True)
        _prune(runs, KEEP_RUNS)
        _prune(root / "logs", KEEP_RUNS)
    outputs = getattr(task, "outputs", None) or {}
    return dict(outputs)


#: kfp.local 2.17 runs at most this many tasks at once (the iterations of a ParallelFor).
PARALLEL_TASKS = 2


def task_threads(cpus: int | None = None) -> dict[str, str]:
    """The thread count of each task's math libraries (torch reads ``OMP_NUM_THREADS``): this machine's cores
    shared by the tasks that run at once, so that two extraction or training tasks do not each start a
    thread per core. A thread setting already in the environment is kept."""
    n = str(max(1, (cpus or os.cpu_count() or 1) // PARALLEL_TASKS))
    return {k: os.environ.get(k, n) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def _plain(text: str) -> str:
    """``text`` without terminal colour codes (kfp colours task names)."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the tasks (they inherit this process's environment), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_kfp_warnings() -> Iterator[None]:
    """kfp.local warns, per task, that the project's image is not a python image and that GPU, CPU and
    memory settings do nothing locally: true, expected, and no help to the reader."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=r"Task .* have no effect in the current local runner")
        yield


@contextlib.contextmanager
def _streaming(streamer: _Streamer) -> Iterator[None]:
    """Route kfp.local's task subprocesses through ``streamer`` (kfp 2.17 has no hook for a task's output).

    Also puts back the builtin ``print``: kfp.local replaces it while a task runs, and two tasks
    running at once (a ParallelFor) can leave its replacement in place."""
    import builtins

    original, original_print = subprocess_task_handler.run_local_subprocess, builtins.print
    subprocess_task_handler.run_local_subprocess = streamer.run
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = original
        builtins.print = original_print


class _Streamer:
    """Runs one task's subprocess: its output to the task's log file, the readable part to the console."""

    def __init__(self, logs: Path, runs: Path, *, echo: bool) -> None:
        self.dir = logs
        self.runs = runs
        self.echo = echo
        self.logs: dict[str, Path] = {}
        self.status: dict[str, int] = {}
        self._lock = threading.Lock()

    def run(self, full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        task = self._task_name(full_command)
        path = self.dir / (task.replace("/", "__") + ".log")
        with self._lock:
            self.logs[task] = path
        env = {**os.environ, **(env_vars or {})}
        with open(path, "a", encoding="utf-8") as log, subprocess.Popen(
                full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                errors="replace") as proc:
            skipping = False
            assert proc.stdout is not None
            for line in iter(proc.stdout.readline, ""):
                log.write(line)
                log.flush()
                if not self.echo:
                    continue
                if skipping:
                    skipping = line.rstrip("\n") != "}"
                    continue
                if line.startswith("[KFP Executor"):
                    skipping = line.rstrip().endswith("Got executor_input:")
                    continue
                if line.strip():
                    # sys.stdout, not print: kfp.local indents print() per running task by patching the
                    # builtin, and with two tasks at once the patches stack up
                    with self._lock:
                        sys.stdout.write(f"    [{task}] {line}")
                        sys.stdout.flush()
            code = proc.wait()
        with self._lock:
            self.status[task] = code
        return code

    def _task_name(self, full_command: list[str]) -> str:
        """The task's directory under the run (``shard-groups-iteration-0/extract-shards``), from its executor input."""
        try:
            i = full_command.index("--executor_input")
            out = json.loads(full_command[i + 1])["outputs"]["outputFile"]
            parts = Path(out).resolve().relative_to(self.runs.resolve()).parts[1:-1]
            name = "/".join(parts)
        except (ValueError, IndexError, KeyError, TypeError):
            name = f"task-{time.time_ns()}"
        return _short(name)

    def failed(self) -> str | None:
        bad = [t for t, code in self.status.items() if code != 0]
        return bad[-1] if bad else None


def _short(name: str) -> str:
    """``variants-iteration-1/train`` -> ``train[1]``; condition groups dropped: ``condition-3/export`` -> ``export``."""
    import re

    parts = name.split("/")
    loops = [m.group(1) for p in parts[:-1] if (m := re.search(r"-iteration-(\d+)$", p))]
    return parts[-1] + "".join(f"[{i}]" for i in loops)


def _prune(directory: Path, keep: int) -> None:
    """Keep the ``keep`` newest entries of ``directory`` (kfp's local run records and logs accumulate)."""
    if not directory.is_dir():
        return
    entries = sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime)
    for old in entries[:-keep] if keep > 0 else entries:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ the main job

#: What ``linkedout run --stop-after`` accepts: ``extract`` runs the ``extract`` pipeline alone; ``report`` the
#: ``linkedout`` pipeline with ``deploy_to="none"`` (no export, Feast or serving).
STOP_AFTER = ("extract", "report")


def local_arguments(workdir: Path, *, preset: str = "small", data: Path | None = None, epochs: int | None = None,
                    variants: Sequence[str] | None = None, seed: int = 42, extraction: ExtractionConfig | None = None,
                    backbone: BackboneConfig | None = None, force: bool = False, retry_failed: bool = False,
                    max_failed_share: float = 0.01, deploy_to: str = "local", extract_workers: int = 2,
                    model_repository_uri: str = "", s3_endpoint: str = "") -> dict[str, Any]:
    """The ``linkedout`` pipeline's arguments for a run on this machine (validated before anything runs).

    ``extraction`` / ``backbone``: an ``ExtractionConfig`` / ``BackboneConfig`` (default: the paper's
    layers and prompts, 8 frames at 224 px, K = 64, float16, shards of 64 videos, on the tiny seeded
    backbone), passed whole as the pipeline's ``extraction`` / ``backbone`` parameters. GPU counts
    are this machine's; the first variant is the model that is served.
    """
    names = tuple(variants) if variants else DEFAULT_VARIANTS
    for name in names:
        parse_variant(name)  # a bad name fails before any work
    if not 0 <= max_failed_share <= 1:
        raise ValueError(f"max_failed_share must be in [0, 1], got {max_failed_share}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    ecfg = extraction or ExtractionConfig(shard_size=MAIN_JOB_SHARD_SIZE)
    bcfg = backbone or BackboneConfig()
    bcfg.check()  # a missing GPU or checkpoint directory, before any work
    import torch  # here: `linkedout --help` and the pipelines' compilation do not need it

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    training = {**training_defaults(), "seed": seed, **({"epochs": epochs} if epochs else {})}
    return {
        "workdir": str(Path(workdir).resolve()), "dataset": "" if data is None else str(Path(data).resolve()),
        "preset": preset, "features": "", "extraction": as_parameter(dataclasses.asdict(ecfg)),
        "backbone": as_parameter(dataclasses.asdict(bcfg)), "extract_workers": extract_workers,
        "extract_gpus": min(gpus, 1), "max_failed_share": max_failed_share, "retry_failed": retry_failed,
        "variants": list(names), "model_variant": names[0], "model_name": DEPLOY.model_name, "training": training,
        "train_gpus": gpus, "deploy_to": deploy_to, "model_repository_uri": model_repository_uri,
        "s3_endpoint": s3_endpoint, "force": force,
    }


def run_main_job(workdir: Path, *, preset: str = "small", data: Path | None = None, epochs: int | None = None,
                 variants: Sequence[str] | None = None, seed: int = 42, stop_after: str | None = None,
                 extraction: ExtractionConfig | None = None, backbone: BackboneConfig | None = None,
                 force: bool = False, retry_failed: bool = False, max_failed_share: float = 0.01,
                 extract_workers: int = 2) -> Path:
    """The main job on the embedded default (``linkedout run``): the ``linkedout`` pipeline through kfp.local,
    deployed to the local stack (Triton, the KServe transformer, Feast on loopback) and asked one gRPC
    query. Returns the report's path (the feature store's with ``stop_after="extract"``).

    What a re-run reuses is decided inside the stages (:mod:`linkedout.job`); ``force`` redoes, instead of
    refusing, the stages whose recorded inputs differ; ``retry_failed`` tries every failed video again;
    more failed videos than ``max_failed_share`` stop the job after extraction. A failed step raises
    :class:`linkedout.job.step.StepFailed` with that step's own error.
    """
    if stop_after not in (None, *STOP_AFTER):
        raise ValueError(f"stop_after must be one of {STOP_AFTER} (or None), got {stop_after!r}")
    t0 = time.time()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    args = local_arguments(workdir, preset=preset, data=data, epochs=epochs, variants=variants, seed=seed,
                           extraction=extraction, backbone=backbone, force=force, retry_failed=retry_failed,
                           max_failed_share=max_failed_share, extract_workers=extract_workers,
                           deploy_to="none" if stop_after == "report" else "local")
    name = "extract" if stop_after == "extract" else "linkedout"
    if name == "extract":
        accepted = parameters_of(package_of("extract"))
        args = {k: v for k, v in args.items() if k in accepted}
    print(f"== the {name!r} pipeline through kfp.local, one subprocess per task (their logs: "
          f"{Workdir(workdir).kfp / 'logs'}/)", flush=True)
    outputs = run(name, args, workdir)
    took = format_duration(time.time() - t0)
    if name == "extract":
        features = Path(str(outputs.get("Output", Workdir(workdir).features)))
        print(f"== features: {features}  ({took} in all)", flush=True)
        return features
    report = Path(str(outputs.get("Output", Workdir(workdir).report)))
    print(f"== report: {report}", flush=True)
    _print_outcome(Workdir(workdir), t0)
    print(f"== done in {took}", flush=True)
    return report


def _print_outcome(work: Workdir, since: float) -> None:
    """The deploy decision and the query's answer of this run (files the steps wrote after ``since``)."""
    decision = _fresh_json(work.decision, since)
    answer = _fresh_json(work.answer, since)
    if decision is not None and not decision.get("deploy"):
        print(f"== not deployed: {decision['reason']}\n   the serving model answers as before: "
              f"linkedout serve --workdir {work.root}", flush=True)
    if answer is not None:
        first = answer["answers"][0]
        print(f"== answer to the query: user {answer['user']}, top {len(first['items'])} of {first['model_version']}: "
              f"{first['items']}", flush=True)
        print(f"   serve it again: linkedout serve --workdir {work.root}\n"
              f"   then ask it:    linkedout recommend --workdir {work.root} --user {answer['user']} --k 10 --explain",
              flush=True)


def _fresh_json(path: Path, since: float) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and float(doc.get("time", 0)) >= since else None


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.local NAME --workdir W key=value ...``: run any pipeline locally."""
    p = argparse.ArgumentParser(prog="python -m pipelines.local", description=main.__doc__)
    p.add_argument("name", choices=PIPELINES)
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("args", nargs="*", metavar="KEY=VALUE",
                   help="pipeline arguments, typed by the compiled pipeline's parameters (as `linkedout pipeline submit`)")
    a = p.parse_intermixed_args(argv)  # KEY=VALUE items may follow --workdir
    try:
        arguments = parse_arguments(package_of(a.name),
                                    [f"workdir={a.workdir.resolve()}", *a.args])
    except (OSError, ValueError) as e:
        p.error(str(e))
    print(run(a.name, arguments, a.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
