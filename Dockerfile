# The image the LinkedOut pipeline steps (extraction, training, evaluation) run in.
#
#   docker build -t linkedout:cpu .                                     # CPU build (the embedded default)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t linkedout:cuda .
#
# The KServe transformer and the Triton model server get images of their own (later milestones):
# Triton needs numpy 1.x in its Python backend, Feast needs numpy 2 (see DESIGN.md §2).
FROM python:3.11-slim AS base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LINKEDOUT_PROGRESS=0

WORKDIR /opt/linkedout
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY linkedout ./linkedout
RUN pip install . && useradd --create-home --uid 1000 linkedout
USER linkedout
ENTRYPOINT ["linkedout"]
CMD ["--help"]
