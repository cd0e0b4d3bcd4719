"""A stage of the main job as a pipeline step: its log set up, its error recorded for the local runner.

Every stage function of :mod:`linkedout.job` is wrapped by :func:`step`: in a pipeline task
(``LINKEDOUT_LOG_LEVEL`` set by the pipeline) it configures logging as the CLI does for a command;
and when it fails with ``LINKEDOUT_STEP_ERRORS`` set (the local runner sets it), it records the
error (type, message, traceback) in that directory before re-raising, so that the runner stops with
the step's own error (:class:`StepFailed`) rather than KFP's "task failed".
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from linkedout.utils import atomic_write_text, configure_logging, get_logger

log = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Environment: the log level of a step's process (set on every pipeline task).
LOG_LEVEL_ENV = "LINKEDOUT_LOG_LEVEL"
#: Environment: a directory where a failing step records its error (set by the local runner).
ERRORS_ENV = "LINKEDOUT_STEP_ERRORS"


class StepFailed(RuntimeError):
    """A pipeline step failed; the message is the step's own error (type and message) and where its log is."""

    def __init__(self, step: str, error_type: str, message: str, log: str | None = None) -> None:
        self.step = step
        self.error_type = error_type
        self.message = message
        self.log = log
        where = f" (the task's whole output: {log})" if log else ""
        super().__init__(f"step {step} failed: {error_type}: {message}{where}")


def step(name: str, *label_args: str) -> Callable[[F], F]:
    """Mark a step function; ``label_args`` name the arguments shown in its log label (``train[linkedout]``)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            label = name + "".join(f"[{kwargs[a]}]" for a in label_args if a in kwargs)
            level = os.environ.get(LOG_LEVEL_ENV)
            if level:
                _configure_logging(level)
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            except BaseException as e:
                _record_error(label, e)
                raise
            log.info("%s done in %.1f s", label, time.perf_counter() - t0)
            return out

        return cast(F, run)

    return wrap


def _configure_logging(level: str) -> None:
    """As the CLI does for a command (a task's process is a step's entry point); no progress bars: a task's
    output is a log (kfp.local and the cluster collect it line by line), its progress the epoch and shard lines."""
    configure_logging(level.upper())
    os.environ.setdefault("LINKEDOUT_PROGRESS", "0")


def _record_error(label: str, e: BaseException) -> None:
    where = os.environ.get(ERRORS_ENV)
    if not where:
        return
    record = {"step": label, "type": type(e).__name__, "module": type(e).__module__,
              "message": str(e) if not isinstance(e, KeyError) or not e.args else str(e.args[0]),
              "traceback": traceback.format_exc(), "time": time.time(), "pid": os.getpid()}
    with contextlib.suppress(OSError):  # the error itself is what matters; the traceback is in the task's log
        atomic_write_text(Path(where) / f"{time.time_ns()}-{os.getpid()}.json", json.dumps(record, indent=2))


def read_errors(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The error records written by failed steps into ``directory``, oldest first."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out
