# One image for every Sluice service; SLUICE_SERVICE picks which one runs:
# demo, chat-proxy, progress, progress-worker, log-tail, mock-upstream.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-runtime.lock /tmp/requirements-runtime.lock
# Binary wheels only: no compiler is needed here, or shipped below.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: --no-deps -r /tmp/requirements-runtime.lock

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --home-dir /app --no-create-home sluice \
 && install -d -o 10001 -g 10001 /var/log/sluice
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY services/ /app/services/
COPY deploy/gunicorn.conf.py /app/deploy/gunicorn.conf.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/services \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SLUICE_SERVICE=demo \
    PROMETHEUS_MULTIPROC_DIR=/tmp/sluice-metrics
USER 10001:10001
EXPOSE 8001 8002 8003 8004 8009 8013
# gunicorn drains on SIGTERM: streams are told to reconnect over SLUICE_DRAIN_WINDOW (10 s)
# and workers get gunicorn's graceful timeout (window + 5 s); give containers 30 s to stop.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-m", "sluice.healthcheck"]
ENTRYPOINT ["python", "-m", "sluice.serve"]
