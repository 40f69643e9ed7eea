# One image for both processes of the gateway:
#
#   docker run ... IMAGE                       the HTTP API: gateway serve --bind 0.0.0.0:8000
#   docker run ... --no-healthcheck IMAGE listen   the listener (no HTTP port: turn the check off)
#   docker run ... --rm IMAGE migrate          apply the schema before starting a new version
#
# Configuration comes only from the environment at run time (--env-file): no setting, secret or
# credential is baked in. See docs/deploy.md. CI does not need docker: scripts/check-dockerfile.sh
# runs this file's COPY and RUN lines on the host (tests/test_deploy.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/gateway \
    STATE_DIR=/var/lib/comfy-gateway

WORKDIR /app
# Only what runs: the code, its schema and workflow files, what pip needs to install it.
COPY pyproject.toml constraints.txt README.md ./
COPY scripts/docker-build.sh scripts/
COPY shared/ shared/
COPY functions/ functions/
COPY listener/ listener/
COPY sql/ sql/
COPY workflows/ workflows/
RUN sh scripts/docker-build.sh "$VENV"
# A user of its own; its home is STATE_DIR (local storage when STORAGE_URL is file://: mount a volume there).
RUN groupadd --gid 10001 gateway \
 && useradd --uid 10001 --gid gateway --no-log-init --home-dir "$STATE_DIR" --create-home --shell /usr/sbin/nologin gateway

ENV PATH=$VENV/bin:$PATH
USER gateway
EXPOSE 8000
# For `serve`. The listener has no HTTP port: run it with --no-healthcheck (compose: healthcheck:
# disable: true) and watch it through /healthz's backends[] instead (README, "Monitoring").
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# SIGTERM is what both expect: gunicorn stops gracefully (20 s), the listener finishes the image
# copies in progress (at most OUTPUT_COPY_DEADLINE_S) and hands its servers over: `docker stop -t 150`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve", "--bind", "0.0.0.0:8000"]
