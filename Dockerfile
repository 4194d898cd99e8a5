# syntax=docker/dockerfile:1
# The production image of the scoreboard service.
#   docker build -t scoreboard .
#   docker run --rm -p 8080:8080 scoreboard                 # embedded default (trying it out)
#   docker run --rm -p 8080:8080 --env-file prod.env scoreboard serve
# Stage 1 builds a virtual environment with the locked runtime dependencies; stage 2 is a
# slim Python with only that environment, no compilers, running as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only here, for a platform where some dependency ships no binary wheel.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/scoreboard
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY scoreboard ./scoreboard
# The runtime dependencies only (no test or lint tools), at the versions CI tested.
RUN /opt/scoreboard/bin/pip install --constraint requirements.lock . \
 && /opt/scoreboard/bin/python -m compileall -q /opt/scoreboard

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="scoreboard" \
      org.opencontainers.image.description="Live leaderboard backend: Redis + PostgreSQL"
RUN groupadd --system --gid 10001 scoreboard \
 && useradd --system --uid 10001 --gid scoreboard --home-dir /var/lib/scoreboard \
      --create-home --shell /usr/sbin/nologin scoreboard
COPY --from=build /opt/scoreboard /opt/scoreboard
ENV PATH=/opt/scoreboard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SCOREBOARD_HTTP_HOST=0.0.0.0 \
    SCOREBOARD_HTTP_PORT=8080 \
    SCOREBOARD_DATA_DIR=/var/lib/scoreboard \
    SCOREBOARD_LOG_FORMAT=json
WORKDIR /var/lib/scoreboard
USER 10001:10001
EXPOSE 8080
# No curl in a slim image: the image's own Python asks /healthz on the configured port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SCOREBOARD_HTTP_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["scoreboard"]
CMD ["serve"]
