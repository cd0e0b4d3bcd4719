"""The Triton model repository: ``config.pbtxt`` per model, numbered versions, publish and roll back.

Layout (docs/serving.md §1)::

    ROOT/NAME_encoder/config.pbtxt   ROOT/NAME_encoder/<v>/model.onnx, id_rows.json
    ROOT/NAME_ranker/config.pbtxt    ROOT/NAME_ranker/<v>/model.onnx, catalog.json, catalog.npz

- A version is published by writing it into a hidden staging directory (``.staging-<v>-<pid>``,
  which Triton ignores: it only reads numeric directory names), checking it (the ONNX file loads in
  onnxruntime and its inputs and outputs match ``config.pbtxt``), and renaming it to ``<v>``. A
  version that fails its check is never renamed: the repository, and what Triton serves from it,
  are left as they were, and the error says why.
- Version numbers only grow: a rolled-back version moves to ``.retired/<v>`` and its number is
  never reused, so a client pinned to a version number never gets another model under it.
- ``config.pbtxt`` is written for Triton's ONNX Runtime backend (``config_pbtxt``): dynamic batching,
  an instance group, ``version_policy { latest { num_versions: 2 } }`` so that the old version keeps
  serving while the new one loads. A version whose graph does not fit the model's existing
  configuration is refused: a retrained model with other dimensions is a new model name, or
  ``replace=True`` retires every old version first. Configurations are compared as Triton reads
  them (``_same_config``), not by their text layout.

``config_pbtxt`` builds Triton's own ``ModelConfig`` protobuf message (the class that
``linkedout.export.model_config`` loads) and writes it in that module's one format. No server import
here.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkedout.export.graphs import GraphSpec, TensorSpec
from linkedout.export.index_files import writer_lock
from linkedout.export.model_config import (
    ModelConfigError,
    format_config,
    model_config_pb2,
    new_config,
    parse_config,
)
from linkedout.shards.storage import open_storage
from linkedout.utils import atomic_write_text, get_logger

log = get_logger(__name__)

__all__ = ["ModelRepository", "RepositoryError", "TritonConfig", "config_pbtxt", "validate_onnx"]

INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
#: Files that commit the others of their directory: uploaded last, whatever their size.
_COMMITS = ("manifest.json", "catalog.json")
#: A catalogue index's files changed in place (``linkedout.export.index_files``): uploaded whole each time.
_APPENDED = ("added-", "payload-", "removed-")


class RepositoryError(RuntimeError):
    """A model or version is missing, a new version fails its check, or a configuration conflicts."""


@dataclass(frozen=True)
class TritonConfig:
    """What ``config.pbtxt`` says beyond the graph's inputs and outputs."""

    # Largest batch Triton's dynamic batcher forms (and a client may send); >= 1.
    max_batch_size: int = 64
    # Where each instance runs: KIND_GPU (production) or KIND_CPU.
    instance_kind: str = "KIND_GPU"
    # Model instances per device; >= 1.
    instance_count: int = 1
    # How long the dynamic batcher may hold a request to form a batch, in microseconds; >= 0.
    max_queue_delay_us: int = 100
    # Versions served at once (version_policy latest N): 2 keeps the old one up while a new one loads; >= 1.
    num_versions: int = 2
    # Triton backend: onnxruntime in production.
    backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        for name, lo in (("max_batch_size", 1), ("instance_count", 1), ("max_queue_delay_us", 0), ("num_versions", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"TritonConfig.{name} must be an int >= {lo}, got {v!r}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(f"TritonConfig.instance_kind must be one of {list(INSTANCE_KINDS)}, got {self.instance_kind!r}")
        if not self.backend:
            raise ValueError("TritonConfig.backend must not be empty")


def _add_tensor(tensors: Any, t: TensorSpec) -> None:
    if not t.shape or t.shape[0] != -1:
        raise ValueError(f"tensor {t.name}: the first axis must be the batch axis (-1), got {list(t.shape)}")
    try:
        data_type = model_config_pb2().DataType.Value(f"TYPE_{t.dtype}")
    except ValueError:
        raise ValueError(f"tensor {t.name}: {t.dtype} is not a Triton data type") from None
    tensor = tensors.add()
    tensor.name = t.name
    tensor.data_type = data_type
    dims = list(t.shape[1:])
    if dims:
        tensor.dims.extend(dims)
    else:
        # one value per batch entry: Triton needs non-empty dims, so [1] reshaped to a scalar
        tensor.dims.append(1)
        tensor.reshape.SetInParent()


def config_pbtxt(name: str, spec: GraphSpec, cfg: TritonConfig | None = None) -> str:
    """``config.pbtxt`` text for a graph: Triton's ``ModelConfig`` message, in ``format_config``'s format."""
    cfg = cfg or TritonConfig()
    if not name or any(c not in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-" for c in name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_' or '-'")
    config = new_config()
    config.name = name
    config.backend = cfg.backend
    config.max_batch_size = cfg.max_batch_size
    for t in spec.inputs:
        _add_tensor(config.input, t)
    for t in spec.outputs:
        _add_tensor(config.output, t)
    group = config.instance_group.add()
    group.count = cfg.instance_count
    group.kind = model_config_pb2().ModelInstanceGroup.Kind.Value(cfg.instance_kind)
    config.dynamic_batching.SetInParent()
    config.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    config.version_policy.latest.num_versions = cfg.num_versions
    return format_config(config)


def _same_config(a: str, b: str) -> bool:
    """Whether two ``config.pbtxt`` texts configure the same (by the message, whatever the layout)."""
    try:
        return bool(parse_config(a) == parse_config(b))
    except ModelConfigError:
        return a == b


def validate_onnx(path: str | os.PathLike[str], spec: GraphSpec) -> None:
    """Load ``path`` in onnxruntime and check its inputs and outputs against ``spec``.

    Raises ``RepositoryError`` saying what is wrong: the file does not load (corrupt, truncated, not
    ONNX), or a tensor's name, type or shape disagrees with the configuration.
    """
    import onnxruntime as ort

    ort_types = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(bool)": "BOOL",
                 "tensor(float16)": "FP16", "tensor(int32)": "INT32"}
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise RepositoryError(f"{path} does not load in onnxruntime: {e}") from e
    problems = []
    for what, want_list, got_list in (("input", spec.inputs, sess.get_inputs()),
                                      ("output", spec.outputs, sess.get_outputs())):
        got = {g.name: g for g in got_list}
        if set(got) != {w.name for w in want_list}:
            problems.append(f"{what}s are {sorted(got)}, the configuration says {sorted(w.name for w in want_list)}")
            continue
        for w in want_list:
            g = got[w.name]
            dtype = ort_types.get(g.type, g.type)
            shape = tuple(d if isinstance(d, int) else -1 for d in g.shape)
            if dtype != w.dtype or len(shape) != len(w.shape) or any(
                    a != b and -1 not in (a, b) for a, b in zip(shape, w.shape)):
                problems.append(f"{what} {w.name} is {dtype}{list(shape)}, the configuration says "
                                f"{w.dtype}{list(w.shape)}")
    if problems:
        raise RepositoryError(f"{path} does not match its configuration: {'; '.join(problems)}")


class ModelRepository:
    """A Triton model repository on a local directory (upload it to S3 with ``upload``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRepository({str(self.root)!r})"

    # ------------------------------------------------------------------------------ reading

    def models(self) -> list[str]:
        """Model names (directories with a ``config.pbtxt``), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "config.pbtxt").is_file())

    def model_dir(self, model: str) -> Path:
        return self.root / model

    def versions(self, model: str) -> list[int]:
        """Published versions of ``model`` (numeric directories), ascending."""
        d = self.model_dir(model)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))

    def latest(self, model: str) -> int | None:
        vs = self.versions(model)
        return vs[-1] if vs else None

    def version_dir(self, model: str, version: int | None = None) -> Path:
        """The directory of ``version`` (default: the latest); ``RepositoryError`` when there is none."""
        v = self.latest(model) if version is None else version
        if v is None:
            raise RepositoryError(f"{self.root}: model {model!r} has no published version")
        d = self.model_dir(model) / str(v)
        if not d.is_dir():
            raise RepositoryError(f"{self.root}: model {model!r} has no version {v} (versions: {self.versions(model)})")
        return d

    def config_text(self, model: str) -> str:
        f = self.model_dir(model) / "config.pbtxt"
        if not f.is_file():
            raise RepositoryError(f"{self.root}: model {model!r} has no config.pbtxt")
        return f.read_text()

    def _next_version(self, model: str) -> int:
        d = self.model_dir(model)
        used = self.versions(model)
        retired = d / ".retired"
        if retired.is_dir():
            used += [int(p.name.split("-")[0]) for p in retired.iterdir() if p.name.split("-")[0].isdigit()]
        return max(used, default=0) + 1

    # ------------------------------------------------------------------------------ writing

    def publish(self, model: str, config: str, spec: GraphSpec, write: Callable[[Path, int], None], *,
                replace: bool = False) -> int:
        """Publish a new version of ``model``; returns its number.

        ``write(staging_dir, version)`` writes the version's files (``model.onnx`` and any others) into a
        staging directory; the graph is checked against ``spec`` (``validate_onnx``), then the
        directory is renamed to the next version number and ``config.pbtxt`` written. If the model
        exists with another configuration, ``RepositoryError`` (or, with ``replace``, every existing
        version is retired first).
        """
        mdir = self.model_dir(model)
        cfg_file = mdir / "config.pbtxt"
        if cfg_file.is_file() and not _same_config(cfg_file.read_text(), config) and self.versions(model):
            if not replace:
                raise RepositoryError(
                    f"{self.root}: model {model!r} exists with another configuration (other inputs, outputs or "
                    f"serving settings); publish under a new name, or replace it (retires versions "
                    f"{self.versions(model)})")
            for v in self.versions(model):
                self.retire(model, v)
        version = self._next_version(model)
        mdir.mkdir(parents=True, exist_ok=True)
        staging = mdir / f".staging-{version}-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            write(staging, version)
            onnx_file = staging / "model.onnx"
            if not onnx_file.is_file():
                raise RepositoryError(f"version {version} of {model!r} has no model.onnx")
            validate_onnx(onnx_file, spec)
            _fsync_dir(staging)
            os.replace(staging, mdir / str(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not cfg_file.is_file() or not _same_config(cfg_file.read_text(), config):
            atomic_write_text(cfg_file, config)
        _fsync_dir(mdir)
        log.info("published %s version %d in %s", model, version, self.root)
        return version

    def retire(self, model: str, version: int) -> Path:
        """Move ``version`` out of the served versions (to ``.retired/<v>-<time>``); returns where."""
        src = self.version_dir(model, version)
        dst = self.model_dir(model) / ".retired" / f"{version}-{int(time.time())}"
        dst.parent.mkdir(exist_ok=True)
        os.replace(src, dst)
        log.info("retired %s version %d (kept in %s)", model, version, dst)
        return dst

    def rollback(self, model: str) -> int:
        """Retire the latest version of ``model``; returns the version that is now the latest."""
        vs = self.versions(model)
        if len(vs) < 2:
            raise RepositoryError(f"{self.root}: model {model!r} has {len(vs)} version(s); nothing to roll back to")
        self.retire(model, vs[-1])
        return vs[-2]

    def upload(self, uri: str, *, endpoint_url: str | None = None) -> list[str]:
        """Copy the repository to ``uri`` (a directory or ``s3://bucket/prefix``); returns the keys written.

        Version files go first and each model's ``config.pbtxt`` last; files already there with the
        same size are skipped, except a catalogue's: its index's files are changed in place, so they
        are sent whole, the index's ``manifest.json`` (read first, under the index's writer lock) after
        them, and ``catalog.json`` (whose presence means complete) last; staging and retired directories and
        hidden files (the index's writer lock) are not copied.
        """
        store = open_storage(uri, endpoint_url=endpoint_url)
        written: list[str] = []
        for model in self.models():
            mdir = self.model_dir(model)
            for v in self.versions(model):
                vdir = mdir / str(v)
                # a catalogue's index changes in place (appends, committed by its manifest): the manifest
                # is read first, under the writer lock, and sent after the files it names, which by then
                # hold at least what it names (appends only add past it)
                index_dir = vdir / "index"
                manifest = None
                if (index_dir / "manifest.json").is_file():
                    with writer_lock(index_dir):
                        manifest = (index_dir / "manifest.json").read_bytes()
                files = [f for f in sorted(vdir.rglob("*")) if f.is_file() and not f.name.startswith(".")
                         and f.name not in _COMMITS]
                for f in files:  # appended files are sent whole: a same-size file may hold other bytes
                    key = f.relative_to(self.root).as_posix()
                    appended = f.parent == index_dir and f.name.startswith(_APPENDED)
                    if appended or not (store.exists(key) and store.size(key) == f.stat().st_size):
                        store.write_bytes(key, f.read_bytes())
                        written.append(key)
                if manifest is not None:
                    store.write_bytes(f"{model}/{v}/index/manifest.json", manifest)
                    written.append(f"{model}/{v}/index/manifest.json")
                if (vdir / "catalog.json").is_file():
                    store.write_bytes(f"{model}/{v}/catalog.json", (vdir / "catalog.json").read_bytes())
                    written.append(f"{model}/{v}/catalog.json")
            key = f"{model}/config.pbtxt"
            store.write_bytes(key, (mdir / "config.pbtxt").read_bytes())
            written.append(key)
        return written


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
