# syntax=docker/dockerfile:1.7
# lorafleet: one image for the API, bridge, workers, beat and engines.
#
#   docker build -t lorafleet:latest .                                   # CPU torch
#   docker build -t lorafleet:latest-cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .  # CUDA torch
#
# torch 2.13 publishes CUDA wheels on the cu126 (legacy: pre-Turing GPUs), cu130 (stable) and
# cu132 (experimental) indexes; cu130 needs an NVIDIA driver >= 580 (older drivers: cu126).
ARG PYTHON_VERSION=3.11

# --- build: a virtual environment with torch first (from the chosen index), then lorafleet.
FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch on its own layer and from its own index: a bare `torch` requirement on PyPI would
# pull the CUDA wheels (GBs) even for a CPU image.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lorafleet ./lorafleet
COPY events ./events
COPY store ./store
COPY workers ./workers
COPY engine ./engine
# The engine extra: torch (above), safetensors, numpy, tokenizers for the API, workers, engine.
RUN pip install ".[engine]"

# --- runtime: the venv only, no compilers, a non-root user.
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 lorafleet \
 && useradd --system --uid 10001 --gid lorafleet --home-dir /var/lib/lorafleet --create-home lorafleet \
 && mkdir -p /models /run/lorafleet \
 && chown lorafleet:lorafleet /models /run/lorafleet
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LORAFLEET_HOME=/var/lib/lorafleet \
    LORAFLEET_LOG_FORMAT=json
WORKDIR /var/lib/lorafleet
USER lorafleet:lorafleet
EXPOSE 8080 8000
ENTRYPOINT ["lorafleet"]
CMD ["--help"]
