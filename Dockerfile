# One flipfleet replica: a single waitress process serving the flip service.
# Offline machines build a local stand-in for the base image: scripts/offline-images.sh.
ARG PYTHON_IMAGE=python:3.13-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C compiler for the JPEG scan walk (service/formats/jpeg_scan.c); only this stage has it.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# A virtualenv copies cleanly into the final stage, without pip's build leftovers.
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# Dependencies in their own layer: code changes do not reinstall them. The lock pins every
# package, direct or not, with the hashes of its files: a tampered download fails the build.
RUN /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
    && /opt/venv/bin/pip uninstall --yes pip
COPY scripts/build-native.sh service/formats/jpeg_scan.c /build/
RUN bash /build/build-native.sh /build/jpeg_scan.c /build/jpeg_scan.so \
    && test -f /build/jpeg_scan.so

FROM ${PYTHON_IMAGE}
# TurboJPEG for lossless JPEG flips (service/formats/jpeg_lossless.py, through ctypes), and jemalloc, the
# replica's allocator (below). First: it changes least, so a change below it never runs apt-get
# again.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libturbojpeg0 libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*
# jemalloc keeps every page a flip frees for the next flip (dirty_decay_ms:-1), so libjpeg's 150 MB
# of coefficient arrays are not mapped and faulted in afresh 4 KiB at a time, a third of a
# lossless flip's CPU under glibc; the replica hands them back itself once no flip has come for
# 10 s (service/allocator.py). oversize_threshold:0: large blocks too (jemalloc's own default
# purges those at once); narenas:2: two pools of kept pages, not four a core; muzzy_decay_ms:0:
# a page handed back leaves the container's memory at once. LD_PRELOAD is a bare soname, which
# the loader finds on every architecture (and on a host, for loadtest.memory).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    FLIP_SAMPLE_PATH=/srv/flipfleet/sample.jpg \
    LD_PRELOAD=libjemalloc.so.2 \
    MALLOC_CONF=narenas:2,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:0
# A fixed numeric uid, so compose and the host can refer to it.
RUN groupadd --system --gid 10001 flipfleet \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin flipfleet
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/flipfleet
COPY service/ service/
COPY --from=build /build/jpeg_scan.so service/formats/
# Bake the sample photo in, so that no replica spends start-up time making it.
RUN python -m service.sample "$FLIP_SAMPLE_PATH"
# What /healthz and X-Flipfleet-Version report (empty: "dev"). Last, so that a new version
# rebuilds only this layer.
ARG FLIP_VERSION=
ENV FLIP_VERSION=${FLIP_VERSION}
USER flipfleet
EXPOSE 8000
# bash's /dev/tcp: a check costs the container ~30 ms of CPU, a Python client ~110 ms.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# On SIGINT (or SIGTERM) a replica stops accepting and finishes what it holds (service/server.py).
STOPSIGNAL SIGINT
CMD ["python", "-m", "service"]
