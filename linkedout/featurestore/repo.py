"""Feast repositories on disk: rendering, opening, applying.

A repository directory is rendered from a :class:`~linkedout.featurestore.settings.FeastSettings`
by :func:`render_repo`::

    DIR/feature_store.yaml      from envs/<environment>.yaml (local: SQLite + parquet files;
                                production: Redis + parquet on S3)
    DIR/linkedout_feast.json    the settings it was rendered from (what :func:`open_repo` reads)
    DIR/feature_services.json   the published model versions (NAME_vV), kept in step with the registry
    DIR/linkedout_repo.py       a shim importing :mod:`.definitions`, so ``feast -c DIR apply`` works
    DIR/data/                   local registry and SQLite file (environment "local")

:func:`open_repo` gives a :class:`FeatureRepo` (the Feast ``FeatureStore``, the definitions, the
settings); :func:`apply` registers the definitions and every published feature service.

A repository is relocatable: the paths inside DIR (the defaults: ``offline``, ``data/registry.db``,
``data/online.db``) are written relative to DIR, in ``feature_store.yaml`` (Feast resolves them
against the repository directory it opens, the registry's file sources included) and in
``linkedout_feast.json``, so a copied or moved directory reads and writes its own files. Paths
outside DIR (given explicitly, e.g. a shared offline root) and ``s3://`` locations stay as given.
A repository rendered before (``"format": 1``: absolute paths) opens in place as it is; opened in
another directory it is rewritten for the new place by :func:`open_repo` (see
:func:`upgrade_moved_repo`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linkedout.featurestore.definitions import (
    TABLES,
    Definitions,
    build_definitions,
    service_name,
    table_uri,
)
from linkedout.featurestore.errors import FeatureRepoError, OnlineStoreUnavailable
from linkedout.featurestore.s3compat import ensure_s3_fsspec
from linkedout.featurestore.settings import FeastSettings, is_remote
from linkedout.shards.storage import Storage, open_storage
from linkedout.utils import atomic_write_text, get_logger

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

LOG = get_logger(__name__)

SETTINGS_FILE = "linkedout_feast.json"
SERVICES_FILE = "feature_services.json"
SHIM_FILE = "linkedout_repo.py"
#: What the shim of a format-1 repository recorded: the directory it was rendered in.
_SHIM_DIR = re.compile(r"`feast -c (/.*?) apply`")
#: ``format`` of ``linkedout_feast.json``: 1 = every local path absolute; 2 = paths inside the
#: repository directory relative to it.
SETTINGS_FORMAT = 2
_TEMPLATES = Path(__file__).with_name("envs")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_0-9]+)\s*\}\}")

_SHIM = '''"""LinkedOut's Feast repository (rendered by linkedout.featurestore.render_repo: re-render, do not edit).

`feast -c DIR apply` (DIR: this directory) registers what this module holds: the definitions of
linkedout.featurestore.definitions over the offline root in linkedout_feast.json, and one
FeatureService per model version listed in feature_services.json.
"""

from pathlib import Path

from linkedout.featurestore.repo import repo_objects

globals().update(repo_objects(Path(__file__).resolve().parent))
'''


class FeatureRepo:
    """An opened repository: ``store`` (a ``feast.FeatureStore``), ``definitions``, ``settings``, ``path``."""

    def __init__(self, path: Path, settings: FeastSettings, store: FeatureStore, definitions: Definitions) -> None:
        self.path = path
        self.settings = settings
        self.store = store
        self.definitions = definitions

    def __repr__(self) -> str:
        return f"FeatureRepo({str(self.path)!r}, environment={self.settings.environment!r}, online={self.online_address})"

    @property
    def online_address(self) -> str:
        """The online store, for messages: ``redis host:port`` or ``sqlite PATH``."""
        if self.settings.environment == "production":
            return f"redis {self.settings.redis_address}"
        return f"sqlite {self.settings.sqlite_path}"

    def offline_storage(self) -> Storage:
        """The offline root as a :class:`linkedout.shards.Storage` (local directory or S3)."""
        assert self.settings.offline_root is not None
        return open_storage(self.settings.offline_root, endpoint_url=self.settings.s3_endpoint)

    def table_uri(self, table: str) -> str:
        assert self.settings.offline_root is not None
        return table_uri(self.settings.offline_root, table)

    def published_services(self) -> list[tuple[str, int]]:
        """``(model, version)`` of every FeatureService listed in ``feature_services.json``."""
        return _read_services(self.path)


def _render_template(environment: str, values: dict[str, str]) -> str:
    text = (_TEMPLATES / f"{environment}.yaml").read_text()
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise ValueError(f"template envs/{environment}.yaml needs values for {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def feature_store_yaml(settings: FeastSettings, directory: str | os.PathLike[str] | None = None) -> str:
    """The ``feature_store.yaml`` text of ``settings`` (resolved against ``directory`` when given).

    What :func:`render_repo` writes; the Kubernetes manifests' ConfigMaps hold the production ones
    (a test checks that they are this function's output).
    """
    s = settings.resolved(Path(directory)) if directory is not None else settings
    if s.offline_root is None or s.registry is None or s.sqlite_path is None:
        s = s.resolved(Path("."))
    assert s.offline_root is not None and s.registry is not None and s.sqlite_path is not None
    values = {
        "project": s.project, "registry": s.registry, "registry_ttl_s": str(s.registry_ttl_s),
        "sqlite_path": s.sqlite_path, "offline_root": s.offline_root,
        "s3_endpoint_note": s.s3_endpoint or "AWS (or AWS_ENDPOINT_URL_S3)",
        "redis_address": s.redis_address, "redis_timeout_s": str(s.redis_timeout_s),
        "redis_connection": s.redis_connection_string(),
        "redis_key_ttl_s": "null" if s.redis_key_ttl_s is None else str(s.redis_key_ttl_s),
    }
    return _render_template(s.environment, values)


def render_repo(directory: str | os.PathLike[str], settings: FeastSettings) -> Path:
    """Write a Feast repository for ``settings`` into ``directory`` and return its absolute path.

    Idempotent: re-rendering rewrites the configuration and keeps the data and the list of published
    model versions. Nothing is registered yet: call :func:`apply` (or ``feast -c DIR apply``). The
    paths inside ``directory`` are written relative to it (the module's docstring says why).
    """
    path = Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    s = settings.resolved(path)
    assert s.offline_root is not None and s.registry is not None and s.sqlite_path is not None
    stored = s.relative_to(path)
    atomic_write_text(path / "feature_store.yaml", feature_store_yaml(stored))
    atomic_write_text(path / SETTINGS_FILE, json.dumps({"format": SETTINGS_FORMAT, **asdict(stored)}, indent=2) + "\n")
    atomic_write_text(path / SHIM_FILE, _SHIM)
    if not (path / SERVICES_FILE).exists():
        _write_services(path, [])
    (path / "data").mkdir(exist_ok=True)
    if not is_remote(s.offline_root):
        for table in TABLES:
            Path(table_uri(s.offline_root, table)).mkdir(parents=True, exist_ok=True)
    LOG.info("rendered the %s Feast repository %s (offline data: %s)", s.environment, path, s.offline_root)
    return path


def read_settings(directory: str | os.PathLike[str]) -> FeastSettings:
    """The settings a repository was rendered from, every local path absolute; :class:`FeatureRepoError`
    if it is not one."""
    path = Path(directory).expanduser().resolve()
    return stored_settings(path)[1].anchored(path)


def stored_settings(path: Path) -> tuple[int, FeastSettings]:
    """The ``format`` and the settings of ``path/linkedout_feast.json`` as written there (format 2: the
    local paths inside ``path`` relative to it); :class:`FeatureRepoError` if it is not a repository."""
    if not path.is_dir():
        raise FeatureRepoError(f"no Feast repository at {path}: the directory does not exist "
                               f"(render one with linkedout.featurestore.render_repo)")
    for name in ("feature_store.yaml", SETTINGS_FILE):
        if not (path / name).is_file():
            raise FeatureRepoError(f"no LinkedOut Feast repository at {path}: {name} is missing "
                                   f"(render one with linkedout.featurestore.render_repo)")
    try:
        raw = json.loads((path / SETTINGS_FILE).read_text())
        known = {f.name for f in fields(FeastSettings)}
        unknown = sorted(set(raw) - known - {"format"})
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        fmt = raw.get("format", 1)
        if fmt not in (1, SETTINGS_FORMAT):
            raise ValueError(f"format {fmt!r} is not one of 1, {SETTINGS_FORMAT} (rendered by a newer LinkedOut?)")
        return fmt, FeastSettings(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise FeatureRepoError(f"{path / SETTINGS_FILE} is not valid: {e}") from e


def rendered_in(path: Path) -> Path | None:
    """Where a format-1 repository (absolute paths) was rendered, as its shim recorded it; None if unknown."""
    try:
        found = _SHIM_DIR.search((path / SHIM_FILE).read_text())
    except OSError:
        return None
    return Path(found.group(1)) if found else None


def upgrade_moved_repo(path: Path, stored: FeastSettings) -> bool:
    """Rewrite a format-1 repository that was copied or moved to ``path`` for its new place.

    Its absolute paths under the directory it was rendered in (:func:`rendered_in`) are moved under
    ``path`` and it is rendered again (relative paths); other locations stay. Returns True if it was
    rewritten (then its registry still names the old file sources: :func:`open_repo` applies the
    definitions again), False for a repository in place or of unknown origin (opened as it is).
    """
    origin = rendered_in(path)
    if origin is None or origin == path:
        return False

    def moved(value: str) -> str:
        try:
            return str(path / Path(value).relative_to(origin))
        except ValueError:
            return value  # outside the old directory: a location shared on purpose

    LOG.warning("the Feast repository %s was rendered in %s with absolute paths: rewriting it for its new place "
                "(paths relative to the repository from now on)", path, origin)
    try:
        render_repo(path, stored.map_local_paths(moved))
    except OSError as e:
        raise FeatureRepoError(f"the Feast repository {path} was copied or moved from {origin} and names files "
                               f"there; rewriting it for {path} failed: {e}") from e
    return True


def open_repo(directory: str | os.PathLike[str], *, registry_ttl_s: int | None = None) -> FeatureRepo:
    """Open a rendered repository. ``registry_ttl_s`` overrides the registry cache TTL (0 = cache forever,
    what a latency-bound reader wants: the definitions it reads never change under it).

    A format-1 repository (absolute paths) copied or moved here from where it was rendered is first
    rewritten for this place (:func:`upgrade_moved_repo`) and its definitions applied again, so it
    reads and writes only its own files.
    """
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    path = Path(directory).expanduser().resolve()
    fmt, stored = stored_settings(path)
    upgraded = fmt == 1 and upgrade_moved_repo(path, stored)
    if upgraded:
        stored = stored_settings(path)[1]
    settings = stored.anchored(path)
    assert settings.offline_root is not None and stored.offline_root is not None
    _ensure_s3_environment(settings)
    try:
        config = load_repo_config(path, path / "feature_store.yaml")
        if registry_ttl_s is not None:
            config.registry.cache_ttl_seconds = registry_ttl_s
        store = FeatureStore(repo_path=str(path), config=config)  # the registry's base: repo_path, not config's
    except Exception as e:  # FeastConfigError, yaml errors, a bad registry path
        raise FeatureRepoError(f"cannot open the Feast repository {path}: {e}") from e
    # the registered file sources name the offline root as stored (relative: resolved by Feast against path)
    repo = FeatureRepo(path, settings, store, build_definitions(stored.offline_root, settings.s3_endpoint))
    if upgraded and settings.registry is not None and Path(settings.registry).is_file():
        apply(repo)
    return repo


def _ensure_s3_environment(settings: FeastSettings) -> None:
    """Point the S3 parts that read the environment at ``settings.s3_endpoint``.

    Feast's S3 registry takes its endpoint from ``FEAST_S3_ENDPOINT_URL`` only, and its file
    offline store reads S3 through fsspec (s3fs when installed, else the pyarrow bridge in
    :mod:`.s3compat`).
    """
    if settings.offline_root and settings.offline_root.startswith("s3://"):
        ensure_s3_fsspec()
    if settings.s3_endpoint and (settings.registry or "").startswith("s3://"):
        current = os.environ.get("FEAST_S3_ENDPOINT_URL")
        if current is None:
            os.environ["FEAST_S3_ENDPOINT_URL"] = settings.s3_endpoint
        elif current != settings.s3_endpoint:
            LOG.warning("FEAST_S3_ENDPOINT_URL=%s overrides the repository's s3_endpoint %s for the registry",
                        current, settings.s3_endpoint)


def _read_services(path: Path) -> list[tuple[str, int]]:
    file = path / SERVICES_FILE
    if not file.exists():
        return []
    try:
        entries = json.loads(file.read_text())
        out = [(str(e["model"]), int(e["version"])) for e in entries]
        for model, version in out:
            service_name(model, version)
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise FeatureRepoError(f"{file} is not valid (a JSON list of {{'model', 'version'}}): {e}") from e


def _write_services(path: Path, services: list[tuple[str, int]]) -> None:
    rows = [{"model": m, "version": v, "name": service_name(m, v)} for m, v in sorted(set(services))]
    atomic_write_text(path / SERVICES_FILE, json.dumps(rows, indent=2) + "\n")


def repo_objects(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Every Feast object of a rendered repository by a module-level name (what the shim exports to
    the ``feast`` CLI): the definitions and one FeatureService per published model version."""
    path = Path(directory).resolve()
    fmt, stored = stored_settings(path)
    origin = rendered_in(path) if fmt == 1 else None
    if origin is not None and origin != path:
        raise FeatureRepoError(f"the Feast repository {path} was copied or moved from {origin} and its "
                               f"feature_store.yaml names files there: open it once with "
                               f"linkedout.featurestore.open_repo (which rewrites it for {path}) before `feast apply`")
    assert stored.offline_root is not None
    _ensure_s3_environment(stored)
    defs = build_definitions(stored.offline_root, stored.s3_endpoint)
    objects: dict[str, Any] = {obj.name: obj for obj in defs.objects()}
    for model, version in _read_services(path):
        fs = defs.feature_service(model, version)
        objects[fs.name] = fs
    return objects


def _registered_services(repo: FeatureRepo) -> list[tuple[str, int]]:
    out = []
    for fs in repo.store.list_feature_services():
        model, version = fs.tags.get("model"), fs.tags.get("version", "")
        if model and version.isdigit() and fs.name == f"{model}_v{version}":
            out.append((model, int(version)))
    return out


def apply(repo: FeatureRepo, services: list[FeatureService] | None = None) -> None:
    """Register the definitions (and ``services``) in the registry and create the online tables.

    Re-running it changes nothing. Nothing is deleted: feature services already registered stay, and
    ``feature_services.json`` is brought in step with the registry so that ``feast -c DIR apply`` on
    this directory (which deletes what the directory does not declare) keeps them too.
    """
    from feast.errors import FeastError

    if not repo.settings.offline_root or not is_remote(repo.settings.offline_root):
        for table in TABLES:
            Path(repo.table_uri(table)).mkdir(parents=True, exist_ok=True)
    known = set(_read_services(repo.path))
    try:
        known |= set(_registered_services(repo))
    except FileNotFoundError:
        pass  # no registry yet
    except FeastError as e:
        raise FeatureRepoError(f"cannot read the Feast registry of {repo.path}: {e}") from e
    wanted = [repo.definitions.feature_service(m, v) for m, v in sorted(known)] + list(services or [])
    try:
        repo.store.apply([*repo.definitions.objects(), *wanted], partial=True)
    except FeastError as e:
        raise FeatureRepoError(f"feast apply failed for {repo.path}: {e}") from e
    except Exception as e:
        if _is_connection_error(e):
            raise OnlineStoreUnavailable(f"feast apply of {repo.path}: the online store ({repo.online_address}) "
                                         f"did not answer: {e}") from e
        raise
    for fs in services or []:
        known.add((fs.tags["model"], int(fs.tags["version"])))
    _write_services(repo.path, sorted(known))
    if repo.settings.environment == "local" and repo.settings.sqlite_path:
        _use_wal(Path(repo.settings.sqlite_path))


def _use_wal(db: Path) -> None:
    """Write-ahead logging on the SQLite online store: readers (the transformer) never wait for a
    writer (a pipeline step, a push) and a writer never waits for readers. A property of the file."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        LOG.warning("SQLite online store %s: journal_mode is %s, not WAL", db, mode)


def _is_connection_error(e: BaseException) -> bool:
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        return isinstance(e, ConnectionError | TimeoutError)
    return isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | ConnectionError)
