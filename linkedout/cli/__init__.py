"""The ``linkedout`` command-line tool.

Subcommands map one to one onto library functions, so that every step of the main job can be run,
resumed and inspected on its own::

    linkedout data synth     write a synthetic dataset in the MicroLens layout (real mp4 videos)
    linkedout data validate  check a MicroLens-layout dataset and list what is wrong
    linkedout data stats     users, items, interactions, sequence lengths, popularity, cold start
    linkedout extract        frozen video-LLM features of every video -> feature shards
    linkedout features info  bytes per video and totals (for a store, or for a given setting)
    linkedout features verify  every checksum and every id of a feature store
    linkedout model summary  trainable parameters per part
    linkedout train          train one model (LinkedOut, a baseline or an ablation)
    linkedout evaluate       full-catalogue and sampled metrics of a trained run
    linkedout report         one HTML page: metrics, curves, gate heatmaps, layer shares
    linkedout export         a trained run -> ONNX encoder and ranker in a versioned Triton model repository
    linkedout serve          the local stack: Triton, the KServe transformer, Feast, on loopback
    linkedout recommend      ask the running stack for recommendations over gRPC
    linkedout catalog add    new videos recommendable at once (no retraining, no restart)
    linkedout run            the main job end to end on the embedded default (the linkedout pipeline, kfp.local)
    linkedout pipeline       Kubeflow pipelines: compile, submit to a KFP API server, run locally
    linkedout ab             A/B experiments: render, status, promote, rollback, analyze, simulate
    linkedout manifests      Kubernetes manifests: list, render, validate

One module per command group (``linkedout/cli/<group>.py``), each with a ``register(subparsers)``
that adds its commands; ``COMMAND_MODULES`` lists them in ``--help`` order. Heavy imports (torch,
transformers, av, servers) happen inside the handlers so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from linkedout.utils import configure_logging

#: Command modules under ``linkedout.cli``, in the order their commands appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = ("data", "extract", "model", "train", "export", "serve", "catalog", "run", "pipeline", "ab",
                                     "manifests")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkedout", description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"linkedout.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader went away (`linkedout recommend ... | head`): not an error of ours; silence the
        # interpreter's own flush of stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConnectionError as e:
        # a server that cannot be reached (the KFP API, a stack that is not running): one line naming it
        if args.verbose:
            raise
        print(f"linkedout {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: one line, and what was written stays (shards, checkpoints): the same command resumes.
        print(f"linkedout {args.command}: interrupted; everything written so far is kept: run the same "
              "command again to resume", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        # Bad input of any kind: a clear one-line error naming the problem, no traceback. Of the
        # RuntimeErrors only LinkedOut's own (ShardStoreError, CheckpointError) are bad input; any
        # other (CUDA out of memory, a shape bug) keeps its traceback.
        own = type(e).__module__.startswith("linkedout.")
        if args.verbose or (isinstance(e, RuntimeError) and not own):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"linkedout {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
