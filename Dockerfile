# apro-sync: one image for every role (producer, worker, lag-exporter, replay, ...): `docker run IMAGE <command>`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# .dockerignore keeps tests, docs, deploy files, state and secrets (.env) out of the build context.
COPY . /app
# gcc only for the install: it compiles the normalizer with mypyc (setup.py), then leaves the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && (cd / && python -c "from foundations import native; import sys; sys.exit(native.install() != 'compiled')") \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin apro \
    && mkdir -p /var/lib/apro-sync \
    && chown apro /var/lib/apro-sync

# Faust state (rebuilt from changelog topics when missing); mount a volume per worker.
ENV APRO_STATE_DIR=/var/lib/apro-sync
VOLUME ["/var/lib/apro-sync"]

USER apro
# 8080 webhook producer, 9108 worker metrics, 9308 lag exporter
EXPOSE 8080 9108 9308

ENTRYPOINT ["apro-sync"]
CMD ["--help"]
