# One flipfleet replica: a single waitress process serving the flip service.
# Offline machines build a local stand-in for the base image: scripts/offline-images.sh.
ARG PYTHON_IMAGE=python:3.13-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A virtualenv copies cleanly into the final stage, without pip's build leftovers.
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# Dependencies in their own layer: code changes do not reinstall them. The lock pins every
# package, direct or not, with the hashes of its files: a tampered download fails the build.
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
    && /opt/venv/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
# TurboJPEG for lossless JPEG flips (service/jpeg_lossless.py, through ctypes). First: it changes
# least, so a change below it never runs apt-get again.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libturbojpeg0 \
    && rm -rf /var/lib/apt/lists/*
# MALLOC_ARENA_MAX: two glibc arenas instead of 8 per core, which together with Pillow's kept
# blocks held memory flat under steady load. MALLOC_MMAP_THRESHOLD_: bodies and answers over
# 8 MiB get pages of their own, handed back when freed; glibc's sliding threshold otherwise puts
# them in the heap, which floods of 20 MB uploads fragment (python -m loadtest.memory).
# MALLOC_TRIM_THRESHOLD_: up to 16 MiB free at the top of a heap (a request's blocks under the
# mmap threshold) is kept for the next request, not handed back and faulted in again, which
# costs a replica 7 to 9 % more CPU a flip (python -m loadtest.containers).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    FLIP_SAMPLE_PATH=/srv/flipfleet/sample.jpg \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=8388608 \
    MALLOC_TRIM_THRESHOLD_=16777216
# A fixed numeric uid, so compose and the host can refer to it.
RUN groupadd --system --gid 10001 flipfleet \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin flipfleet
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/flipfleet
COPY service/ service/
# Bake the sample photo in, so that no replica spends start-up time making it.
RUN python -m service.sample "$FLIP_SAMPLE_PATH"
# What /healthz and X-Flipfleet-Version report (empty: "dev"). Last, so that a new version
# rebuilds only this layer.
ARG FLIP_VERSION=
ENV FLIP_VERSION=${FLIP_VERSION}
USER flipfleet
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# On SIGINT (or SIGTERM) a replica stops accepting and finishes what it holds (service/server.py).
STOPSIGNAL SIGINT
CMD ["python", "-m", "service"]
