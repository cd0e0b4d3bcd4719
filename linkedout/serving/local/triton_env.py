"""The local Triton's own virtual environment, created on first use.

The ``tritonserver`` binary ships in the ``nvidia-pytriton`` wheel (DESIGN.md §2). Its Python backend
runs model code in a stub process that embeds the Python of the environment found first on ``PATH``;
that environment needs numpy < 2 (with numpy 2 the outputs come back empty) and onnxruntime, while
the project's own environment has numpy 2 (Feast). So Triton gets a venv of its own::

    CACHE/triton/nvidia-pytriton-0.7.0-<hash of the pins and the base Python>/
        venv/          python -m venv; nvidia-pytriton (--no-deps: only its binary is used), numpy, onnxruntime
        server/        bin/tritonserver, backends/python/ (+ the stub for this Python), caches/
        env.json       written last: the environment is complete (pins, paths, library path)

``CACHE`` is ``$LINKEDOUT_CACHE`` or ``~/.cache/linkedout``. Creation holds a file lock, so processes
racing to create it wait for one another and then reuse it; a half-built environment (interrupted
creation) is removed and built again. Pip reads its usual settings (``PIP_INDEX_URL``,
``PIP_FIND_LINKS`` + ``PIP_NO_INDEX`` for an offline wheel directory).

Errors are :class:`TritonUnavailable` (the caller falls back to the KServe predictor):
:class:`PlatformUnsupported` (not Linux x86-64, glibc older than the wheel's manylinux_2_35, a shared
library the binary needs is missing) or :class:`TritonInstallError` (pip failed, e.g. no network).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from linkedout.utils import atomic_write_text, get_logger, progress

LOG = get_logger(__name__)

#: The wheel that carries ``tritonserver`` 2.51.0 with the Python backend (installed with --no-deps).
PYTRITON = "nvidia-pytriton==0.7.0"
#: What the model code inside Triton imports (numpy < 2: DESIGN.md §2).
RUNTIME_PACKAGES: tuple[str, ...] = ("numpy==1.26.4", "onnxruntime==1.32.0")
#: The wheel is tagged manylinux_2_35_x86_64.
MIN_GLIBC = (2, 35)
ENV_FORMAT = 1


class TritonUnavailable(RuntimeError):
    """The local Triton cannot run here; serve the repository from the KServe predictor instead."""


class PlatformUnsupported(TritonUnavailable):
    """The ``tritonserver`` binary cannot run on this platform (OS, CPU, glibc, a missing library)."""


class TritonInstallError(TritonUnavailable):
    """Pip could not create the Triton environment (no network, no wheel for this Python, ...)."""


def default_cache_dir() -> Path:
    """``$LINKEDOUT_CACHE``, else ``~/.cache/linkedout``."""
    env = os.environ.get("LINKEDOUT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "linkedout"


@dataclass(frozen=True)
class TritonInstall:
    """A complete Triton environment: where everything is and how to run it."""

    root: Path
    python: Path             # the venv's interpreter
    site_packages: Path
    server_dir: Path         # bin/tritonserver, backends/, caches/
    library_path: tuple[str, ...]   # LD_LIBRARY_PATH entries: the wheel's bundled libs, libpython's dir
    python_version: str      # "3.11"
    packages: tuple[str, ...]

    @property
    def tritonserver(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def backend_dir(self) -> Path:
        return self.server_dir / "backends"

    @property
    def venv_bin(self) -> Path:
        return self.python.parent

    def server_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment ``tritonserver`` runs in: its libraries, and this venv's Python first on PATH.

        PYTHONPATH and PYTHONHOME are dropped so the Python-backend stub sees only this venv.
        """
        env = dict(os.environ if base is None else base)
        for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(key, None)
        libs = [*self.library_path, *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))]
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env["PATH"] = f"{self.venv_bin}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONNOUSERSITE"] = "1"
        return env


def glibc_version() -> tuple[int, int] | None:
    """The running glibc as (major, minor), or None when the C library is not glibc."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        text = ""
    if not text.startswith("glibc "):
        return None
    major, minor = text.split()[1].split(".")[:2]
    return int(major), int(minor)


def check_platform() -> None:
    """Raise :class:`PlatformUnsupported` unless this is Linux x86-64 with glibc >= 2.35."""
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "amd64"):
        raise PlatformUnsupported(
            f"the tritonserver binary of {PYTRITON} is built for Linux x86-64 only; this is "
            f"{sys.platform} {platform.machine()}")
    libc = glibc_version()
    if libc is None:
        raise PlatformUnsupported(f"the tritonserver binary of {PYTRITON} needs glibc; this C library "
                                  "is not glibc (musl?)")
    if libc < MIN_GLIBC:
        raise PlatformUnsupported(
            f"the tritonserver binary of {PYTRITON} needs glibc >= {MIN_GLIBC[0]}.{MIN_GLIBC[1]} "
            f"(manylinux_2_35); this system has glibc {libc[0]}.{libc[1]}")


def _base_python() -> str:
    """The interpreter the Triton venv is made from: ``$LINKEDOUT_TRITON_PYTHON`` or our base Python."""
    return str(os.environ.get("LINKEDOUT_TRITON_PYTHON") or getattr(sys, "_base_executable", None)
               or sys.executable)


class TritonEnvironment:
    """Creates (once) and locates the Triton virtual environment.

    ``ensure()`` is cheap when the environment exists (one small JSON read) and otherwise builds it
    under a lock, showing progress (one bar over the steps; pip's lines in the log).
    """

    def __init__(self, cache_dir: Path | None = None, *, base_python: str | None = None,
                 packages: tuple[str, ...] = (PYTRITON, *RUNTIME_PACKAGES)) -> None:
        if not packages or not packages[0].startswith("nvidia-pytriton"):
            raise ValueError(f"packages: the first package must be nvidia-pytriton, got {packages!r}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.base_python = base_python or _base_python()
        self.packages = tuple(packages)
        key = hashlib.sha256(json.dumps([ENV_FORMAT, self.base_python, *self.packages]).encode()).hexdigest()
        pytriton = self.packages[0].replace("==", "-")
        self.root = self.cache_dir / "triton" / f"{pytriton}-{key[:10]}"

    @property
    def marker(self) -> Path:
        return self.root / "env.json"

    def installed(self) -> TritonInstall | None:
        """The environment if it is complete, else None (no lock, no side effects)."""
        try:
            meta = json.loads(self.marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if meta.get("format") != ENV_FORMAT or tuple(meta.get("packages", ())) != self.packages:
            return None
        install = TritonInstall(root=Path(meta["root"]), python=Path(meta["python"]),
                                site_packages=Path(meta["site_packages"]),
                                server_dir=Path(meta["server_dir"]),
                                library_path=tuple(meta["library_path"]),
                                python_version=meta["python_version"], packages=tuple(meta["packages"]))
        if not install.tritonserver.exists() or not install.python.exists():
            return None
        return install

    def ensure(self) -> TritonInstall:
        """The environment, created first if needed. Raises :class:`TritonUnavailable` subclasses."""
        check_platform()
        found = self.installed()
        if found is not None:
            return found
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            found = self.installed()  # another process may have built it while we waited
            if found is not None:
                return found
            return self._create()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        lock_path = self.root.with_name(self.root.name + ".lock")
        with open(lock_path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                LOG.info("waiting for another process that is creating the Triton environment %s", self.root)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _create(self) -> TritonInstall:
        if self.root.exists():
            LOG.info("removing the incomplete Triton environment %s", self.root)
            shutil.rmtree(self.root)
        LOG.info("creating the local Triton environment in %s (first use: downloads about 150 MB: %s)",
                 self.root, ", ".join(self.packages))
        venv = self.root / "venv"
        python = venv / "bin" / "python"
        state: dict[str, object] = {}
        steps: list[tuple[str, Callable[[], None]]] = [
            ("create the venv", lambda: self._venv(venv)),
            ("install numpy, onnxruntime", lambda: self._pip(python, list(self.packages[1:]))),
            ("install nvidia-pytriton", lambda: self._pip(python, ["--no-deps", self.packages[0]])),
            ("prepare the server", lambda: state.update(self._prepare_server(python))),
            ("check the binary", lambda: check_binary(self._install_from(state))),
        ]
        start = time.monotonic()
        try:
            for name, step in progress(steps, total=len(steps), desc="Triton environment", unit="step"):
                LOG.info("Triton environment: %s", name)
                step()
            frozen = self._run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                               "pip freeze", quiet=True)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        install = self._install_from(state)
        meta = {"format": ENV_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "base_python": self.base_python, **asdict(install), "installed": frozen.splitlines()}
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in meta.items()}
        atomic_write_text(self.marker, json.dumps(meta, indent=2) + "\n")
        LOG.info("Triton environment ready in %.0f s: %s", time.monotonic() - start, self.root)
        return install

    def _install_from(self, state: Mapping[str, object]) -> TritonInstall:
        return TritonInstall(root=self.root, python=self.root / "venv" / "bin" / "python",
                             site_packages=Path(str(state["site_packages"])),
                             server_dir=self.root / "server",
                             library_path=tuple(str(p) for p in state["library_path"]),  # type: ignore[attr-defined]
                             python_version=str(state["python_version"]), packages=self.packages)

    def _run(self, cmd: list[str], what: str, *, quiet: bool = False) -> str:
        """Run ``cmd``, its output line by line into the log; raise TritonInstallError with the tail."""
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                LOG.log(logging.DEBUG if quiet else logging.INFO, "  %s", line)
        rc = proc.wait()
        if rc != 0:
            tail = "\n".join(lines[-15:])
            hint = ""
            if "pip" in what:
                hint = ("\n(is the package index reachable? Offline, point PIP_FIND_LINKS at a directory "
                        "holding these wheels and set PIP_NO_INDEX=1)")
            raise TritonInstallError(f"{what} failed (exit {rc}) while creating the Triton environment "
                                     f"{self.root}:\n{tail}{hint}")
        return "\n".join(lines)

    def _venv(self, venv: Path) -> None:
        self._run([self.base_python, "-m", "venv", str(venv)], "python -m venv")

    def _pip(self, python: Path, args: list[str]) -> None:
        self._run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                   "--progress-bar", "off", *args], f"pip install {' '.join(args)}")

    def _prepare_server(self, python: Path) -> dict[str, object]:
        probe = self._run([str(python), "-c", (
            "import json, site, sys, sysconfig; print(json.dumps({'site': site.getsitepackages()[0], "
            "'libdir': sysconfig.get_config_var('LIBDIR'), 'ldlibrary': sysconfig.get_config_var('LDLIBRARY'), "
            "'version': f'{sys.version_info[0]}.{sys.version_info[1]}'}))")], "probe the venv", quiet=True)
        info = json.loads(probe.splitlines()[-1])
        site = Path(info["site"])
        wheel_server = site / "pytriton" / "tritonserver"
        stub = wheel_server / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
        if not stub.exists():
            available = sorted(p.name for p in (wheel_server / "python_backend_stubs").iterdir())
            raise PlatformUnsupported(f"{PYTRITON} has no Python-backend stub for Python {info['version']} "
                                      f"(it has {', '.join(available)}); set LINKEDOUT_TRITON_PYTHON to one of those")
        server = self.root / "server"
        shutil.copytree(wheel_server, server, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
        return {"site_packages": site, "python_version": info["version"],
                "library_path": [str(site / "nvidia_pytriton.libs"), info["libdir"]]}


def _missing_libraries(binary: Path, env: Mapping[str, str]) -> list[str]:
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    out = subprocess.run([ldd, str(binary)], env=dict(env), capture_output=True, text=True, timeout=60)
    return [line.split("=>")[0].strip() for line in out.stdout.splitlines() if "not found" in line]


def check_binary(install: TritonInstall) -> None:
    """Raise :class:`PlatformUnsupported` naming what is missing, unless ``tritonserver --help`` runs."""
    env = install.server_env()
    for binary in (install.tritonserver, install.backend_dir / "python" / "libtriton_python.so",
                   install.backend_dir / "python" / "triton_python_backend_stub"):
        missing = _missing_libraries(binary, env)
        if missing:
            hint = ""
            if any(m.startswith("libpython") for m in missing):
                hint = (f" (the Python-backend stub embeds Python {install.python_version} as a shared "
                        "library: use a Python built with --enable-shared, e.g. Debian's "
                        f"libpython{install.python_version}, via LINKEDOUT_TRITON_PYTHON)")
            raise PlatformUnsupported(f"{binary.name} cannot run here: missing shared libraries "
                                      f"{', '.join(missing)}{hint}")
    try:
        out = subprocess.run([str(install.tritonserver), "--help"], env=env, capture_output=True, text=True,
                             timeout=60)
    except OSError as e:
        raise PlatformUnsupported(f"{install.tritonserver} cannot be executed: {e}") from e
    text = (out.stdout + out.stderr).strip()
    if "--model-repository" not in text:
        raise PlatformUnsupported(f"{install.tritonserver} --help failed (exit {out.returncode}):\n"
                                  + "\n".join(text.splitlines()[-15:]))
