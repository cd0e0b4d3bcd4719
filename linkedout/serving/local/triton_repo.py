"""The local Triton repository: the Python-backend twin of a production model repository.

The production repository (``linkedout export``; docs/serving.md §1) is written for Triton's ONNX
Runtime backend, which the ``nvidia-pytriton`` binary lacks. :class:`LocalRepository` mirrors it::

    SOURCE/NAME/config.pbtxt        ->  TARGET/NAME/config.pbtxt   backend python, KIND_CPU, same tensors,
                                                                   max_batch_size, batching, version policy
    SOURCE/NAME/<v>/model.onnx      ->  TARGET/NAME/<v>/model.onnx  hard link (copy across file systems)
                                        TARGET/NAME/<v>/model.py    linkedout/serving/local/triton_model.py

``sync()`` is incremental: a new source version appears in the twin, a removed one disappears, an
unchanged one is left alone. The twin holds the versions the config's version policy selects among
the *valid* source versions: each new version is loaded with onnxruntime in Triton's own environment
and checked against the config (names, types, shapes, a test run) before Triton can see it. A version
that fails is left out and reported (:attr:`ModelSync.rejected`) — so a corrupt publish never reaches
Triton, and the versions already serving keep serving. Rejections are remembered per file
fingerprint, so an unchanged bad version is not checked again at every sync.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkedout.export.model_config import (
    CONFIG_NAME,
    ModelConfigError,
    config_to_dict,
    format_config,
    model_config_pb2,
    new_config,
    read_config,
)
from linkedout.serving.local.triton_env import TritonEnvironment
from linkedout.serving.local.versions import fingerprint, policy_candidates, version_numbers
from linkedout.utils import atomic_write_text, get_logger

LOG = get_logger(__name__)

#: The Python-backend model copied as each version's ``model.py`` (package data of this package).
MODEL_TEMPLATE = Path(__file__).with_name("triton_model.py")
SOURCE_STAMP = ".source.json"
REJECTED = ".rejected.json"


@dataclass
class ModelSync:
    """What one sync did to one model."""

    name: str
    versions: list[int] = field(default_factory=list)     # in the twin now (what Triton will serve)
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # version -> why it cannot serve
    config_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.config_changed)


@dataclass
class SyncReport:
    models: dict[str, ModelSync] = field(default_factory=dict)
    removed_models: list[str] = field(default_factory=list)

    def rejected(self) -> dict[tuple[str, int], str]:
        return {(m.name, v): why for m in self.models.values() for v, why in m.rejected.items()}


def to_python_backend(config: Any, *, threads: int = 0, instances: int = 1) -> Any:
    """The local twin of a production config: the same tensors, batching and version policy, run by
    the Python backend on CPU (:mod:`.triton_model` as each version's ``model.py``).

    ONNX-Runtime-specific settings (``platform``, ``default_model_filename``, execution
    accelerators, backend parameters) are dropped; ``threads`` (onnxruntime intra-op threads, 0 =
    its default) is passed as the parameter ``intra_op_num_threads``. Ensembles are kept as they are.
    """
    local = new_config()
    local.CopyFrom(config)
    if config.platform == "ensemble" or config.backend == "ensemble":
        return local
    local.backend = "python"
    local.platform = ""
    local.ClearField("default_model_filename")
    local.ClearField("cc_model_filenames")
    local.ClearField("optimization")
    local.ClearField("parameters")
    del local.instance_group[:]
    group = local.instance_group.add()
    group.kind = model_config_pb2().ModelInstanceGroup.Kind.KIND_CPU
    group.count = max(1, instances)
    local.parameters["intra_op_num_threads"].string_value = str(max(0, threads))
    return local


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class LocalRepository:
    """Keeps ``target`` a Python-backend twin of the production repository ``source``.

    Args:
        source: the production model repository (directory).
        target: the local Triton repository (created; owned by this class: do not edit by hand).
        environment: the Triton environment whose onnxruntime validates new versions.
        threads: onnxruntime intra-op threads per model instance (0 = onnxruntime's default).
        instances: model instances (Python-backend stub processes) per model, KIND_CPU.
        validate: check every new version before it enters the twin (off only to observe what Triton
            itself does with a bad version).
    """

    def __init__(self, source: Path, target: Path, *, environment: TritonEnvironment | None = None,
                 threads: int = 0, instances: int = 1, validate: bool = True) -> None:
        if threads < 0:
            raise ValueError(f"threads: must be >= 0, got {threads}")
        if instances < 1:
            raise ValueError(f"instances: must be >= 1, got {instances}")
        self.source = Path(source)
        self.target = Path(target)
        self.environment = environment or TritonEnvironment()
        self.threads = threads
        self.instances = instances
        self.validate = validate

    def model_names(self) -> list[str]:
        """Models of the source repository (directories with a ``config.pbtxt``)."""
        if not self.source.is_dir():
            raise FileNotFoundError(f"model repository {self.source} does not exist")
        return sorted(d.name for d in self.source.iterdir()
                      if d.is_dir() and not d.name.startswith(".") and (d / CONFIG_NAME).exists())

    def sync(self, models: Sequence[str] | None = None) -> SyncReport:
        """Bring the twin up to date (all models, or just ``models``); see the module docstring.

        Holds a file lock on the twin, so ``linkedout serve`` and ``linkedout catalog add`` can both sync.
        """
        self.target.mkdir(parents=True, exist_ok=True)
        with open(self.target / ".sync.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._sync(models)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sync(self, models: Sequence[str] | None) -> SyncReport:
        report = SyncReport()
        names = self.model_names() if models is None else list(models)
        for name in names:
            if not (self.source / name / CONFIG_NAME).exists():
                if (self.target / name).exists():
                    shutil.rmtree(self.target / name)
                    report.removed_models.append(name)
                    continue
                raise FileNotFoundError(f"model '{name}' is not in the repository {self.source} "
                                        f"(no {self.source / name / CONFIG_NAME})")
            report.models[name] = self._sync_model(name)
        if models is None:
            for stale in sorted(d.name for d in self.target.iterdir() if d.is_dir() and not d.name.startswith(".")):
                if stale not in report.models:
                    shutil.rmtree(self.target / stale)
                    report.removed_models.append(stale)
        return report

    # -- one model ---------------------------------------------------------------------------------

    def _sync_model(self, name: str) -> ModelSync:
        src, dst = self.source / name, self.target / name
        prod = read_config(src / CONFIG_NAME)
        if prod.name and prod.name != name:
            raise ModelConfigError(f"{src / CONFIG_NAME}: name '{prod.name}' differs from its directory '{name}'")
        local = to_python_backend(prod, threads=self.threads, instances=self.instances)
        local.name = name
        ensemble = local.platform == "ensemble"  # steps only: no model file, nothing to run or check
        text = format_config(local)
        dst.mkdir(parents=True, exist_ok=True)
        old_text = (dst / CONFIG_NAME).read_text() if (dst / CONFIG_NAME).exists() else None
        result = ModelSync(name, config_changed=old_text != text)
        config = config_to_dict(local)
        rejected_cache = self._load_rejected(dst, text)
        template = None if ensemble else MODEL_TEMPLATE.read_bytes()

        available = version_numbers(src)
        candidates, limit = policy_candidates(local, available)  # newest first
        keep: list[int] = []
        for v in candidates:
            if len(keep) >= limit:
                break
            fp = fingerprint(src / str(v))
            stamp = self._read_stamp(dst / str(v))
            if stamp == fp and not result.config_changed:
                keep.append(v)  # already in the twin, unchanged, checked under this config
                continue
            key = json.dumps([v, fp], sort_keys=True)
            reason = rejected_cache.get(key)
            if reason is None and self.validate and not ensemble:
                reason = self._check(src / str(v) / "model.onnx", config)
            if reason is not None:
                rejected_cache[key] = reason
                result.rejected[v] = reason
                LOG.warning("%s version %d is not served: %s", name, v, reason)
                continue
            self._install_version(src / str(v), dst / str(v), fp, template)
            if stamp is None:
                result.added.append(v)
            keep.append(v)
        for v in version_numbers(dst):
            if v not in keep and v not in result.rejected:
                shutil.rmtree(dst / str(v))
                result.removed.append(v)
            elif v in keep and template is not None and (dst / str(v) / "model.py").read_bytes() != template:
                atomic_write_text(dst / str(v) / "model.py", template.decode())
        if result.config_changed:
            atomic_write_text(dst / CONFIG_NAME, text)
        rejected_cache = {k: r for k, r in rejected_cache.items() if json.loads(k)[0] in available}
        self._save_rejected(dst, text, rejected_cache)
        result.versions = version_numbers(dst)
        result.added.sort()
        result.removed.sort()
        if result.changed:
            LOG.info("%s: twin versions %s (added %s, removed %s)", name, result.versions, result.added,
                     result.removed)
        return result

    def _install_version(self, src: Path, dst: Path, fp: dict[str, list[int]], template: bytes | None) -> None:
        tmp = dst.with_name(f".{dst.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for fname in fp:
            _link_or_copy(src / fname, tmp / fname)
        if template is not None:
            (tmp / "model.py").write_bytes(template)
        (tmp / SOURCE_STAMP).write_text(json.dumps(fp, sort_keys=True))
        old = dst.with_name(f".{dst.name}.old")
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old.exists():
            shutil.rmtree(old)

    @staticmethod
    def _read_stamp(version_dir: Path) -> dict[str, list[int]] | None:
        try:
            return dict(json.loads((version_dir / SOURCE_STAMP).read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @staticmethod
    def _load_rejected(dst: Path, config_text: str) -> dict[str, str]:
        try:
            data = json.loads((dst / REJECTED).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return dict(data["rejected"]) if data.get("config") == config_text else {}

    @staticmethod
    def _save_rejected(dst: Path, config_text: str, rejected: dict[str, str]) -> None:
        if rejected:
            atomic_write_text(dst / REJECTED, json.dumps({"config": config_text, "rejected": rejected}))
        else:
            with contextlib.suppress(FileNotFoundError):
                (dst / REJECTED).unlink()

    # -- validation in Triton's environment ---------------------------------------------------------

    def _check(self, onnx_path: Path, config: dict[str, Any]) -> str | None:
        """Why ``onnx_path`` cannot serve under ``config`` (Triton's onnxruntime), or None."""
        if not onnx_path.exists():
            return f"{onnx_path} is missing"
        install = self.environment.ensure()
        request = json.dumps({"threads": 1, "items": [{"path": str(onnx_path), "config": config}]})
        env = install.server_env()
        try:
            out = subprocess.run([str(install.python), str(MODEL_TEMPLATE), "--check"], input=request,
                                 capture_output=True, text=True, env=env, timeout=600)
        except subprocess.TimeoutExpired:
            return f"checking {onnx_path} with onnxruntime took longer than 600 s"
        for line in out.stdout.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                answer = json.loads(line)
                return None if answer["ok"] else str(answer["reason"])
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-5:])
        return f"onnxruntime crashed while loading {onnx_path} (exit {out.returncode}): {tail}"
