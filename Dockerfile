# syntax=docker/dockerfile:1
# LinkedOut's images (docs/deploy.md, "Images"). Two targets from one file, installed the way the
# README and CI install the package (torch pinned first from PyTorch's index, then `pip install .`):
#
#   docker build --target cpu -t ghcr.io/linkedout/linkedout:0.1.0-cpu .   # slim: the KServe transformer,
#                                                                           # the Feast feature server, the
#                                                                           # light pipeline steps
#   docker build --target gpu -t ghcr.io/linkedout/linkedout:0.1.0-gpu .   # CUDA PyTorch: extraction and
#                                                                           # training (TrainJob, GPU steps)
#
# The CUDA wheels of PyTorch carry their CUDA and cuDNN libraries, so the GPU image needs only the
# node's NVIDIA driver (device plugin / GPU operator), not a CUDA base image. Triton is not built
# here: production runs NVIDIA's Triton image through KServe's kserve-tritonserver runtime, pinned by
# the InferenceService's runtimeVersion (linkedout/ab/deploy.py: TRITON_RUNTIME_VERSION).
# Both images run as uid 10001 with no write access to their own files.

FROM python:3.11.13-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LINKEDOUT_PROGRESS=0 \
    HOME=/tmp \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --gid 10001 linkedout \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin linkedout

# ---- build stages: one virtual environment each, copied whole into the runtime stages
FROM base AS build-cpu
WORKDIR /src
RUN python -m venv /opt/venv
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY linkedout ./linkedout
RUN pip install .

FROM base AS build-gpu
WORKDIR /src
RUN python -m venv /opt/venv
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY linkedout ./linkedout
RUN pip install .

# ---- runtime stages
FROM base AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build-gpu /opt/venv /opt/venv
WORKDIR /tmp
USER 10001
ENTRYPOINT ["linkedout"]
CMD ["--help"]

# The default target (`docker build .`): the slim CPU image.
FROM base AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
WORKDIR /tmp
USER 10001
ENTRYPOINT ["linkedout"]
CMD ["--help"]
