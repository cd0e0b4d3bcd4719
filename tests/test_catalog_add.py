"""The live catalogue (``linkedout catalog add``'s library path) used as an operator uses it: batch after
batch into one work directory, a known id refused before any extraction, a failed batch leaving nothing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from linkedout.data.microlens import load_microlens
from linkedout.export import Catalog, ModelRepository, ranker_name
from linkedout.job.catalog import add_videos


@pytest.fixture
def repository(serving_repo: Any, tmp_path: Path) -> Path:
    """A copy of the exported toy repository (each test adds to its own)."""
    shutil.copytree(serving_repo.root, tmp_path / "model_repository")
    return tmp_path / "model_repository"


def _video(toy: Any, tmp_path: Path, vid: int, like: int = 0) -> Path:
    dataset = load_microlens(toy.data, check_videos=False)
    out = tmp_path / f"{vid}.mp4"
    shutil.copy(dataset.video_path(dataset.item_ids[like]), out)
    return out


def test_videos_are_added_batch_after_batch(serving_repo: Any, repository: Path, tmp_path: Path) -> None:
    toy, added = serving_repo.toy, tmp_path / "features-added"
    first = add_videos([_video(toy, tmp_path, 9_000_001)], repository=repository, name="linkedout",
                       features=str(toy.features), added_store=added, check=False)
    second = add_videos([_video(toy, tmp_path, 9_000_002, like=1), _video(toy, tmp_path, 9_000_003, like=2)],
                        repository=repository, name="linkedout", features=str(toy.features), added_store=added,
                        check=False)
    n = serving_repo.toy.split.num_items
    assert (first["version"], second["version"]) == (1, 1)  # appended in place: no new version
    assert first["rows"] == [n + 1] and second["rows"] == [n + 2, n + 3]
    assert second["added"] == [9_000_002, 9_000_003] and second["catalogue"] == first["catalogue"] + 2
    assert ModelRepository(repository).versions(ranker_name("linkedout")) == [1]
    catalog = Catalog.load(ModelRepository(repository).version_dir(ranker_name("linkedout"), 1))
    assert all(v in catalog for v in (9_000_001, 9_000_002, 9_000_003))
    # each batch's shards, no staging left
    assert sorted(p.name for p in added.iterdir()) == [f"v1-row{n + 1}", f"v1-row{n + 2}"]


def test_an_id_already_in_the_catalogue_is_refused_before_extraction(serving_repo: Any, repository: Path,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from linkedout.job import catalog as job_catalog

    toy, added = serving_repo.toy, tmp_path / "features-added"
    known = int(toy.split.item_ids[1])
    monkeypatch.setattr(job_catalog, "load_backbone", lambda cfg: pytest.fail("the backbone was loaded"))
    with pytest.raises(ValueError, match=rf"\[{known}\] are already in the catalogue of linkedout"):
        add_videos([_video(toy, tmp_path, known)], repository=repository, name="linkedout",
                   features=str(toy.features), added_store=added, check=False)
    assert not added.exists()
    monkeypatch.undo()
    out = add_videos([_video(toy, tmp_path, 9_000_010)], repository=repository, name="linkedout",
                     features=str(toy.features), added_store=added, check=False)
    assert out["rows"] == [serving_repo.toy.split.num_items + 1]  # the refused batch did not block the next one


def test_a_batch_that_fails_leaves_nothing_and_the_catalogue_as_it_was(serving_repo: Any, repository: Path,
                                                                      tmp_path: Path) -> None:
    toy, added = serving_repo.toy, tmp_path / "features-added"
    corrupt = tmp_path / "9000020.mp4"
    corrupt.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="none of the videos could be decoded"):
        add_videos([corrupt], repository=repository, name="linkedout", features=str(toy.features),
                   added_store=added, check=False)
    assert list(added.iterdir()) == []
    assert ModelRepository(repository).latest(ranker_name("linkedout")) == 1
    assert Catalog.load(ModelRepository(repository).version_dir(ranker_name("linkedout"), 1)).num_items == \
        serving_repo.toy.split.num_items
