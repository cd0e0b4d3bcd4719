"""The dataset: validated (or the synthetic one generated) — :func:`linkedout.job.dataset.validate_dataset`."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Output

from components.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_dataset(workdir: str, dataset: str, preset: str, force: bool,
                     stats: Output[Metrics]) -> NamedTuple("Dataset", [("data", str), ("name", str)]):
    """The dataset at ``dataset`` (empty: the synthetic ``preset`` at ``WORKDIR/data``), checked; its figures."""
    from collections import namedtuple

    from linkedout.job.dataset import validate_dataset

    out = validate_dataset(workdir=workdir, dataset=dataset, preset=preset, force=force)
    for key in ("users", "videos", "interactions"):
        stats.log_metric(key, out[key])
    stats.metadata["location"] = out["data"]
    return namedtuple("Dataset", ["data", "name"])(out["data"], out["name"])
