# headstart for GPU nodes, in two stages:
# - export: TensorFlow (`.[tensorflow]`, CPU is enough) exports the ONNX backbone
#   (`headstart backbones` names them) into the model cache, once, at build time;
# - runtime: Ubuntu with ONNX Runtime, CUDA and cuDNN installed by pip (`.[gpu]`), so they
#   always match the CUDA major version the installed onnxruntime-gpu is built for (a CUDA
#   base image pins one: onnxruntime-gpu moved from CUDA 12 to 13 in 1.27), the exported
#   cache, a non-root user and `headstart` as entrypoint. No TensorFlow (~1.9 GB): embed,
#   predict, export and info run offline from the cache; train --head mlp, train-cnn and
#   other backbones' exports are not available in the image (they say so).
# Both install with docker/constraints.txt (`python docker/pin.py` writes it), so two builds
# from one commit get the same packages. The host needs only the NVIDIA driver and container
# toolkit.
#
#   docker build -t headstart .                               # exports ImageNet InceptionV3
#   docker build -t headstart --build-arg BACKBONE=convnext_tiny .   # another backbone
#   docker build -t headstart --build-arg EXPORT_MODEL=0 .    # no export, no TensorFlow installed
#   docker run --gpus all -v /data:/data headstart embed /data/images -o /data/features
ARG BASE_IMAGE=ubuntu:24.04

FROM ${BASE_IMAGE} AS export

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/headstart \
    PATH=/opt/headstart/bin:$PATH \
    HEADSTART_CACHE=/opt/headstart-cache \
    KERAS_HOME=/tmp/keras

# The base image pins the distribution; pinning apt versions too would break on each of its
# security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/headstart \
    && mkdir -p /opt/headstart-cache

WORKDIR /opt/src
COPY docker/constraints.txt ./docker/
COPY pyproject.toml README.md __init__.py __main__.py cli.py launch.py ./
COPY extractor ./extractor
COPY heads ./heads
ARG EXPORT_MODEL=1
# The versions are docker/constraints.txt's.
# hadolint ignore=DL3013
RUN if [ "$EXPORT_MODEL" = "1" ]; then pip install -c docker/constraints.txt ".[tensorflow]"; fi

# What `headstart embed` would do on its first run, done here: containers start offline.
# Its own step, after the install, so that another backbone reuses the installed layer.
ARG WEIGHTS=imagenet
ARG BACKBONE=inception_v3
# hadolint ignore=DL3059
RUN if [ "$EXPORT_MODEL" = "1" ]; then python -m headstart.extractor.backbone "$WEIGHTS" "$BACKBONE"; fi


FROM ${BASE_IMAGE} AS runtime

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    VIRTUAL_ENV=/opt/headstart \
    PATH=/opt/headstart/bin:$PATH \
    HEADSTART_CACHE=/opt/headstart-cache

# ubuntu:24.04 has a user `ubuntu` of uid 1000: the uid goes to `headstart`.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/headstart \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 headstart \
    && mkdir -p /data \
    && chown headstart /data

WORKDIR /opt/src
COPY docker/constraints.txt ./docker/
COPY pyproject.toml README.md __init__.py __main__.py cli.py launch.py ./
COPY extractor ./extractor
COPY heads ./heads
# hadolint ignore=DL3013
RUN pip install -c docker/constraints.txt ".[gpu]"

# The user's: --precision int8 adds its quantized copy next to the export
COPY --from=export --chown=1000 /opt/headstart-cache /opt/headstart-cache

USER 1000
WORKDIR /data
ENTRYPOINT ["headstart"]
CMD ["--help"]
