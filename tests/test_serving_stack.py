"""The online half end to end on loopback: the real Triton server, the KServe transformer, a Feast store.

A toy LinkedOut model is trained, exported and published to Feast; ``LocalStack`` starts the real
``tritonserver`` (its own virtual environment; where the binary cannot run, the KServe predictor
over the same repository) and the transformer process; ``tritonclient.grpc`` queries them. The
answers are checked against the PyTorch model's top-K for the same users and histories; a video is
added live; Triton is killed and restarted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import Toy
from process_checks import wait_until

from linkedout.data.microlens import load_microlens
from linkedout.export import Catalog, ModelRepository, update_catalog
from linkedout.export.graphs import full_scores
from linkedout.featurestore import HistoryReader
from linkedout.job.catalog import add_videos
from linkedout.job.feast import publish_features
from linkedout.job.publish import export_if_new, export_run
from linkedout.job.training import train_variant
from linkedout.serving.client import RecommendClient, RecommendError
from linkedout.serving.local import LocalStack, StackSettings
from linkedout.shards import FeatureReader
from linkedout.training.checkpoint import load_model_from_checkpoint

pytestmark = pytest.mark.integration


@dataclass
class Served:
    workdir: Path
    stack: LocalStack
    client: RecommendClient
    model: Any
    toy: Toy


@pytest.fixture(scope="module")
def served(toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("stack")
    run_dir = work / "runs" / "linkedout"
    train_variant(toy.data, str(toy.features), run_dir, "linkedout", epochs=2, split=toy.split,
                           item_features=toy.item_features)
    export_run(toy.data, str(toy.features), run_dir, work / "model_repository", name="linkedout",
                       split=toy.split, item_features=toy.item_features)
    publish_features(toy.data, work / "model_repository", work / "feast", name="linkedout")
    stack = LocalStack(StackSettings(workdir=work, sync_interval=0.3)).start()
    client = RecommendClient(stack.info["transformer"]["grpc"], timeout=5.0)
    model = load_model_from_checkpoint(run_dir / "checkpoints" / "best.pt", toy.split.num_items).eval()
    try:
        yield Served(work, stack, client, model, toy)
    finally:
        client.close()
        stack.stop()


def pytorch_top_k(served: Served, version: int, history_ids: list[int], k: int) -> list[int]:
    catalog = Catalog.load(served.workdir / "model_repository" / "linkedout_ranker" / str(version))
    rows = catalog.rows_of(history_ids)
    rows = rows[rows > 0][-10:]
    hist = np.zeros((1, 10), dtype=np.int64)
    hist[0, 10 - len(rows):] = rows
    with torch.no_grad():
        full, _ = full_scores(served.model, torch.from_numpy(catalog.embeddings), torch.from_numpy(hist))
    top = torch.topk(full, min(20, catalog.num_items), dim=1).indices
    return catalog.ids_of(top[0].numpy())[:k].tolist()


def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout} s")


def test_answers_are_the_pytorch_models_top_k_for_the_users_feast_history(served: Served) -> None:
    if os.environ.get("LINKEDOUT_REQUIRE_TRITON") == "1":  # CI: the real Triton, not the KServe fallback
        assert served.stack.info["model_server"]["kind"] == "triton"
    users = list(served.toy.split.test.user_ids[:8])
    feast_histories = HistoryReader(served.workdir / "feast").get(users)
    recs = served.client.recommend(users, k=10)
    for user, rec, hist in zip(users, recs, feast_histories):
        assert hist, f"user {user} has no history in Feast"
        assert rec.items == pytorch_top_k(served, 1, hist, 10)
        assert not set(hist) & set(rec.items)  # never a video the user already watched
        assert rec.variant == "linkedout" and rec.model_version == "linkedout_ranker:1"
        assert not rec.cold_start and rec.unknown_items == []
        assert rec.scores == sorted(rec.scores, reverse=True)


def test_unknown_users_get_the_cold_start_answer_and_explain_returns_layers(served: Served) -> None:
    rec = served.client.recommend(["somebody-new"], k=5, explain=True)[0]
    assert rec.cold_start and len(rec.items) == 5
    assert rec.layers == ["L0", "L4", "L8", "L12", "L16", "L20"]
    assert rec.contributions is not None and np.allclose(np.sum(rec.contributions, axis=1), 1.0, atol=1e-4)
    hist = np.array([[-1] * 8 + [int(served.toy.split.item_ids[1]), 987654321]])
    rec = served.client.recommend([1], k=5, history=hist)[0]
    assert rec.unknown_items == [987654321] and not rec.cold_start
    assert rec.items == pytorch_top_k(served, 1, [int(served.toy.split.item_ids[1])], 5)


def test_malformed_requests_are_invalid_argument_naming_the_input(served: Served) -> None:
    with pytest.raises(RecommendError, match="input 'k'") as err:
        served.client.recommend([1], k=0)
    assert err.value.status == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(RecommendError, match=r"input 'user_id'.*maximum batch size 64"):
        served.client.recommend(list(range(65)), k=5)
    with pytest.raises(RecommendError, match="input 'history'"):
        served.client.recommend([1, 2], k=5, history=np.array([[1, 2, 3]]))


def test_metrics_and_request_log(served: Served) -> None:
    served.client.recommend([str(served.toy.split.test.user_ids[0])], k=3)
    with urllib.request.urlopen(served.stack.info["transformer"]["metrics"], timeout=5) as r:
        text = r.read().decode()
    for name in ("linkedout_requests_total", "linkedout_request_latency_seconds_bucket",
                 "linkedout_feast_latency_seconds_count", "linkedout_triton_latency_seconds_count"):
        assert name in text
    log_path = Path(served.stack.info["request_log"])
    rows = wait_for(lambda: [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else [])
    assert {"request_id", "ts", "user_id", "variant", "items", "scores", "latency_ms"} <= set(rows[-1])


def test_a_video_added_live_is_recommended_without_a_restart(served: Served, tmp_path: Path) -> None:
    """``linkedout catalog add``'s path: a new mp4 is extracted, encoded, appended, pushed to Feast, served."""
    user = str(served.toy.split.test.user_ids[2])
    before = served.client.recommend([user], k=10)[0]
    target = before.items[0]  # the user's best match; a copy of its file is a new video of the same content
    dataset = load_microlens(served.toy.data, check_videos=False)
    twin = 7_000_001
    shutil.copy(dataset.video_path(str(target)), tmp_path / f"{twin}.mp4")
    pid_before = served.stack.server.pid
    out = add_videos([tmp_path / f"{twin}.mp4"], repository=served.workdir / "model_repository",
                     name="linkedout", features=str(served.toy.features),
                     added_store=served.workdir / "features-added", feast_dir=served.workdir / "feast")
    assert out["version"] == 1 and out["added"] == [twin] and not out["failed"]
    t0 = time.monotonic()
    rec = wait_for(lambda: twin in (r := served.client.recommend([user], k=10)[0]).items and r, timeout=10)
    assert time.monotonic() - t0 < 3.0  # the transformer polls every 0.3 s here
    assert target in rec.items and rec.model_version == "linkedout_ranker:1"  # same version, no reload
    assert abs(rec.items.index(twin) - rec.items.index(target)) == 1  # the twin scores as the original
    assert served.stack.server.pid == pid_before and ModelRepository(
        served.workdir / "model_repository").versions("linkedout_ranker") == [1]
    from linkedout.featurestore import open_repo
    from linkedout.featurestore.online import read_rows

    rows = read_rows(open_repo(served.workdir / "feast"), "video_embedding", [twin], ["model_version"])
    assert rows[0][1] is not None  # the new video is in Feast's online store
    # the main job run again on the same checkpoint keeps serving the catalogue with the live addition
    assert export_if_new(served.toy.data, str(served.toy.features), served.workdir / "runs" / "linkedout",
                         served.workdir / "model_repository", name="linkedout", split=served.toy.split,
                         item_features=served.toy.item_features) == 1
    assert ModelRepository(served.workdir / "model_repository").latest("linkedout_ranker") == 1
    # removed: never recommended again, with no restart either
    update_catalog(served.workdir / "model_repository", "linkedout", remove_ids=[twin])
    wait_for(lambda: twin not in served.client.recommend([user], k=10)[0].items, timeout=10)


_KILLED_ADD = """
import sys, time
import numpy as np
import linkedout.export.index_files as files
from linkedout.export.update import update_catalog
from linkedout.shards import FeatureReader

def hang(path, text):
    # the rows and records are appended; the manifest that would commit them is never put in place
    open(sys.argv[4], "w").close()
    time.sleep(120)

files.atomic_write_text = hang
update_catalog(sys.argv[1], "linkedout", add_ids=[int(sys.argv[3])],
               add_features=FeatureReader(sys.argv[2]).get_many([sys.argv[5]]))
"""


def test_an_addition_killed_mid_write_leaves_the_catalogue_served_as_it_was(served: Served, tmp_path: Path) -> None:
    repo = served.workdir / "model_repository"
    vdir = repo / "linkedout_ranker" / "1"
    user = str(served.toy.split.test.user_ids[4])
    before = served.client.recommend([user], k=10)[0].items
    target, new_id, ready = before[0], 7_000_002, tmp_path / "ready"
    size_before = (vdir / "index" / "added-0.f32").stat().st_size
    child = subprocess.Popen([sys.executable, "-c", _KILLED_ADD, str(repo), str(served.toy.features), str(new_id),
                              str(ready), str(target)], cwd=Path(__file__).resolve().parents[1])
    try:
        wait_for(lambda: ready.exists() or child.poll() is not None, timeout=120)
        assert ready.exists(), f"the writer did not reach its manifest (exit {child.poll()})"
        assert (vdir / "index" / "added-0.f32").stat().st_size > size_before  # half-written on disk
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    time.sleep(1.0)  # three catalogue polls of the transformer
    assert served.client.recommend([user], k=10)[0].items == before  # nothing half-written is read
    assert new_id not in Catalog.load(vdir)
    # the next writer cuts the dead one's bytes off and commits its own
    feats = FeatureReader(served.toy.features).get_many([str(target)])
    update_catalog(repo, "linkedout", add_ids=[new_id], add_features=feats)
    rec = wait_for(lambda: new_id in (r := served.client.recommend([user], k=10)[0]).items and r, timeout=10)
    assert target in rec.items


def test_killing_triton_is_a_clean_error_within_a_second_and_a_restart_serves_again(served: Served) -> None:
    user = str(served.toy.split.test.user_ids[3])
    assert served.client.recommend([user], k=5)[0].items
    os.kill(served.stack.server.pid, signal.SIGKILL)
    wait_until(lambda: not served.stack.server.running(), timeout=10)
    t0 = time.perf_counter()
    with pytest.raises(RecommendError, match="UNAVAILABLE") as err:
        served.client.recommend([user], k=5)
    assert time.perf_counter() - t0 < 1.0
    assert "Triton" in str(err.value)
    served.stack.restart_model_server()
    rec = wait_for(lambda: _try(served, user))
    assert len(rec.items) == 5


def _try(served: Served, user: str) -> Any:
    try:
        return served.client.recommend([user], k=5)[0]
    except RecommendError:
        return None
