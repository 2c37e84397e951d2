# TinyCompress: the package, its CLI, the shipped checkpoints (serve/assets) and Ray, installed
# the way the Makefile and README install them (torch first, pinned; then the project with its
# test extras, every other dependency pinned in pyproject.toml). Runs as an unprivileged user.
#
#   docker build -t tinycompress:0.1.0 .                                   # CPU torch
#   docker build --build-arg TORCH_INDEX=https://pypi.org/simple \
#                -t tinycompress:0.1.0-cuda .                              # CUDA torch
#   docker run --rm -p 8000:8000 tinycompress:0.1.0                        # the HTTP service
#
# PyPI's Linux torch wheel is the CUDA build (its CUDA libraries come as pip packages), so the
# CUDA variant only changes the index; the node needs an NVIDIA driver. KubeRay manifests that
# run this image are in deploy/kuberay/ (docs/CLUSTER.md).
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# wget: KubeRay's readiness and liveness probes call it; curl: `make demo` and health checks.
# Debian's bookworm versions (security updates included) rather than pinned ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget curl \
    && rm -rf /var/lib/apt/lists/*

# Into the system Python, not a venv: KubeRay starts Ray through `bash -l`, whose profile resets
# PATH to one that has /usr/local/bin (where pip puts `ray` and `tinycompress`) but no venv.
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0

WORKDIR /app
COPY . .
RUN pip install -e '.[test]' \
    && useradd --create-home --uid ${UID} --user-group --shell /bin/bash tinycompress

USER ${UID}
ENV HOME=/home/tinycompress
EXPOSE 8000
CMD ["tinycompress", "serve", "--host", "0.0.0.0", "--port", "8000"]
