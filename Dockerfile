# headstart for GPU nodes: Ubuntu with CUDA and cuDNN installed by pip (`.[gpu]`), so they
# always match the CUDA major version the installed onnxruntime-gpu is built for (a CUDA
# base image pins one: onnxruntime-gpu moved from CUDA 12 to 13 in 1.27); a non-root user,
# `headstart` as entrypoint, and the ONNX backbone (`headstart backbones` names them)
# exported at build time so containers run offline. The host needs only the NVIDIA driver and container toolkit.
#
#   docker build -t headstart .                               # exports ImageNet InceptionV3
#   docker build -t headstart --build-arg BACKBONE=convnext_tiny .   # another backbone
#   docker build -t headstart --build-arg EXPORT_MODEL=0 .    # no export (no network needed)
#   docker run --gpus all -v /data:/data headstart embed /data/images -o /data/features
ARG BASE_IMAGE=ubuntu:24.04
FROM ${BASE_IMAGE}

ARG EXPORT_MODEL=1
ARG WEIGHTS=imagenet
ARG BACKBONE=inception_v3
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
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
    && useradd --create-home --uid 1000 headstart \
    && mkdir -p /opt/headstart-cache /data \
    && chown headstart /opt/headstart-cache /data

WORKDIR /opt/src
COPY pyproject.toml README.md __init__.py __main__.py cli.py launch.py ./
COPY extractor ./extractor
COPY heads ./heads
# The project itself: its dependencies' ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[gpu]"

USER 1000
# The export is what `headstart embed` would do on its first run; done here, containers
# start without TensorFlow and without network. The cache is read-only for later users.
RUN if [ "$EXPORT_MODEL" = "1" ]; then python -m headstart.extractor.backbone "$WEIGHTS" "$BACKBONE"; fi

WORKDIR /data
ENTRYPOINT ["headstart"]
CMD ["--help"]
