"""LinkedOut's Feast repository (docs/serving.md §2): definitions, environments, writing and reading.

- :mod:`.definitions`: the entities ``video``/``user``, the file sources (``interactions`` among
  them), the push source ``user_history_push``, the feature views ``video_meta``,
  ``video_embedding``, ``user_history`` and the FeatureService ``NAME_vV`` per model version.
- :mod:`.settings`: :class:`FeastSettings` (environment ``local`` = parquet files + SQLite, or
  ``production`` = S3 parquet + Redis).
- :mod:`.repo`: :func:`render_repo` (``feature_store.yaml`` + a shim so ``feast -c DIR apply``
  works; a rendered directory can be copied or moved), :func:`open_repo`, :func:`apply`.
- :mod:`.write`: :class:`Videos`, :func:`write_videos`, :func:`histories_from_interactions`,
  :func:`write_histories`, :func:`materialize`, :func:`register_model_version`,
  :func:`publish_model_version`, :func:`publish_catalog`.
- :mod:`.push`: :func:`push_watches`, :func:`record_watch` (live updates through the push source).
- :mod:`.online`: :class:`HistoryReader` (the transformer's reader: no kserve, no tritonclient).
- :mod:`.offline`: :func:`write_interactions`, :func:`read_interactions` (training data from
  Feast's offline store).

Importing this package imports Feast (several seconds the first time).
"""

from linkedout.featurestore.definitions import (
    HISTORY_LENGTH,
    PROJECT,
    WATCHED,
    Definitions,
    build_definitions,
    service_name,
)
from linkedout.featurestore.errors import FeatureRepoError, OfflineStoreError, OnlineStoreUnavailable
from linkedout.featurestore.offline import read_interactions, write_interactions
from linkedout.featurestore.online import HistoryReader
from linkedout.featurestore.push import push_watches, record_watch
from linkedout.featurestore.repo import FeatureRepo, apply, open_repo, render_repo
from linkedout.featurestore.settings import ENVIRONMENTS, FeastSettings
from linkedout.featurestore.write import (
    Videos,
    VideoWrite,
    histories_from_interactions,
    materialize,
    publish_catalog,
    publish_model_version,
    register_model_version,
    write_histories,
    write_videos,
)

__all__ = [
    "ENVIRONMENTS",
    "HISTORY_LENGTH",
    "PROJECT",
    "WATCHED",
    "Definitions",
    "FeastSettings",
    "FeatureRepo",
    "FeatureRepoError",
    "HistoryReader",
    "OfflineStoreError",
    "OnlineStoreUnavailable",
    "VideoWrite",
    "Videos",
    "apply",
    "build_definitions",
    "histories_from_interactions",
    "materialize",
    "open_repo",
    "publish_catalog",
    "publish_model_version",
    "push_watches",
    "read_interactions",
    "record_watch",
    "register_model_version",
    "render_repo",
    "service_name",
    "write_histories",
    "write_interactions",
    "write_videos",
]
