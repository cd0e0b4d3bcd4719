"""A Feast repository copied or moved to another directory uses its own files, never the original's.

Issue 17, defect 3: ``feature_store.yaml``, ``linkedout_feast.json`` and the registry's file sources
held absolute paths, so a copy of a work directory read (and created, empty) the original's SQLite
store and wrote into the original's offline store. Each test writes a repository in ``A``, copies
the tree to ``B`` (``shutil.copytree``), deletes ``A`` and works in ``B``: it must read ``B``'s
rows, write only under ``B``, and ``A`` must not come back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_featurestore import expected_histories, parquet_files, toy_interactions

import linkedout.featurestore as lf
from linkedout.featurestore.definitions import USER_HISTORY
from linkedout.featurestore.repo import SETTINGS_FILE, SHIM_FILE, feature_store_yaml, repo_objects

#: The shim the format-1 code wrote (the directory it was rendered in, in its docstring).
OLD_SHIM = '''"""LinkedOut's Feast repository (rendered by linkedout.featurestore.render_repo: re-render, do not edit).

`feast -c {dir} apply` registers what this module holds: the definitions of
linkedout.featurestore.definitions over the offline root in linkedout_feast.json, and one
FeatureService per model version listed in feature_services.json.
"""

from pathlib import Path

from linkedout.featurestore.repo import repo_objects

globals().update(repo_objects(Path(__file__).resolve().parent))
'''


def write_some(repo: lf.FeatureRepo) -> pd.DataFrame:
    """Interactions and histories (offline and online) and one published version: what a run leaves."""
    lf.apply(repo)
    pairs = toy_interactions()
    lf.write_interactions(repo, pairs)
    lf.write_histories(repo, lf.histories_from_interactions(pairs))
    lf.register_model_version(repo, "linkedout", 1)
    return pairs


def render_old_format(path: Path) -> Path:
    """A repository as the format-1 code rendered it: every local path absolute."""
    path = lf.render_repo(path, lf.FeastSettings())
    absolute = lf.FeastSettings().resolved(path)
    (path / "feature_store.yaml").write_text(feature_store_yaml(absolute))
    (path / SETTINGS_FILE).write_text(json.dumps({"format": 1, **absolute.__dict__}, indent=2))
    (path / SHIM_FILE).write_text(OLD_SHIM.format(dir=path))
    return path


def copy_and_delete(a: Path, b: Path) -> Path:
    shutil.copytree(a, b)
    shutil.rmtree(a)
    return b / "feast"


def texts_of(repo: Path) -> str:
    """Every configuration file of a repository and its registry's live objects, as one string to search.

    Left out: Feast's version history of the feature views (snapshots of past definitions, read
    only for an explicit ``view@vN`` reference, which LinkedOut never makes).
    """
    from feast.protos.feast.core.Registry_pb2 import Registry

    registry = Registry()
    registry.ParseFromString((repo / "data" / "registry.db").read_bytes())
    registry.ClearField("feature_view_version_history")
    parts = [(repo / name).read_text() for name in ("feature_store.yaml", SETTINGS_FILE, SHIM_FILE)]
    return "\n".join([*parts, str(registry)])


def check_the_copy(b_repo: Path, a_root: Path, pairs: pd.DataFrame) -> None:
    """``b_repo`` reads its own rows (online, offline, through the registry) and writes only under itself."""
    repo = lf.open_repo(b_repo)
    assert repo.settings.sqlite_path == str(b_repo / "data" / "online.db")
    assert repo.settings.offline_root == str(b_repo / "offline")
    assert str(a_root) not in texts_of(b_repo)
    expected = expected_histories(pairs)
    users = list(expected)
    reader = lf.HistoryReader(b_repo)
    assert reader.get(users) == [expected[u] for u in users]
    assert reader.address == f"sqlite {b_repo}/data/online.db"
    got = lf.read_interactions(repo)
    assert len(got) == len(pairs)
    # the registry's file sources: a materialisation reads the offline rows of B
    assert lf.materialize(repo, [USER_HISTORY], incremental=False) == {USER_HISTORY: "full"}
    assert reader.get(users) == [expected[u] for u in users]
    lf.record_watch(repo, users[0], 7, timestamp_ms=4_000_000_000_000)
    assert reader.get([users[0]]) == [[*expected[users[0]], 7][-10:]]
    assert any(name.startswith("events-") for name in parquet_files(b_repo / "offline", "interactions"))
    assert not a_root.exists()
    assert {s.name for s in repo.store.list_feature_services()} == {"linkedout_v1"}


def test_a_copied_repository_uses_its_own_files(tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    repo = lf.open_repo(lf.render_repo(a / "feast", lf.FeastSettings()))
    pairs = write_some(repo)
    b_repo = copy_and_delete(a, b)
    check_the_copy(b_repo, a, pairs)
    stored = json.loads((b_repo / SETTINGS_FILE).read_text())
    assert (stored["format"], stored["offline_root"], stored["registry"], stored["sqlite_path"]) == (
        2, "offline", "data/registry.db", "data/online.db")


def test_an_old_repository_opens_in_place_and_a_copy_is_rewritten(tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    old = render_old_format(a / "feast")
    pairs = write_some(lf.open_repo(old))  # in place: opened as it is
    assert json.loads((old / SETTINGS_FILE).read_text())["format"] == 1
    assert str(old) in (old / "feature_store.yaml").read_text()
    b_repo = copy_and_delete(a, b)
    with pytest.raises(lf.FeatureRepoError, match=r"copied or moved from .*/A/feast.*open it once"):
        repo_objects(b_repo)  # what `feast -c B apply` would register: refused, it would name A's files
    check_the_copy(b_repo, a, pairs)
    assert json.loads((b_repo / SETTINGS_FILE).read_text())["format"] == 2
    assert lf.open_repo(b_repo).settings.registry == str(b_repo / "data" / "registry.db")  # rewritten once


def test_paths_outside_the_repository_stay_absolute(tmp_path: Path) -> None:
    shared = tmp_path / "shared-offline"
    path = lf.render_repo(tmp_path / "repo", lf.FeastSettings(offline_root=str(shared)))
    stored = json.loads((path / SETTINGS_FILE).read_text())
    assert (stored["offline_root"], stored["sqlite_path"]) == (str(shared), "data/online.db")
    assert lf.repo.read_settings(path) == lf.FeastSettings(offline_root=str(shared)).resolved(path)
