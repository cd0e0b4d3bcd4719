"""The images the components run in: the project's own (``Dockerfile``), named by one setting.

``LINKEDOUT_IMAGE`` (default ``ghcr.io/linkedout/linkedout:0.1.0``, the package version) names the
image without its target; CPU steps run ``<image>-cpu`` (the Dockerfile's ``cpu`` target) and GPU
steps ``<image>-gpu`` (its ``gpu`` target, CUDA PyTorch). Pipelines are compiled with
:func:`images` (``linkedout pipeline compile --image REGISTRY/NAME:TAG``) and every task gets its
image set at compile time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/linkedout/linkedout:0.1.0"
IMAGE_ENV = "LINKEDOUT_IMAGE"

_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Images:
    """``cpu`` and ``gpu`` image references of one release."""

    cpu: str
    gpu: str


def images(image: str | None = None) -> Images:
    """The images of ``image`` (``REGISTRY/NAME:TAG``; default ``$LINKEDOUT_IMAGE`` or :data:`DEFAULT_IMAGE`).

    ``ValueError`` for a reference without a tag, with ``latest``, or already ending in ``-cpu``/``-gpu``.
    """
    ref = image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    tag = ref.rsplit(":", 1)[-1] if ":" in ref.rsplit("/", 1)[-1] else ""
    if not _REF.match(ref) or not tag or tag == "latest":
        raise ValueError(f"image must be REGISTRY/NAME:TAG with a pinned tag (the CPU and GPU images are TAG-cpu "
                         f"and TAG-gpu), got {ref!r}")
    if tag.endswith(("-cpu", "-gpu")):
        raise ValueError(f"image {ref!r}: give the release without its target (…:{tag[:-4]}); -cpu and -gpu are added")
    return Images(cpu=f"{ref}-cpu", gpu=f"{ref}-gpu")


#: The default CPU image, the ``base_image`` of the components (the pipelines set each task's image).
IMAGE = images(DEFAULT_IMAGE).cpu
