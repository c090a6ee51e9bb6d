# rmos-runs worker image. Build: docker build -t rmos-runs .
# Run:   docker run --rm -e RMOS_NATS_URL=nats://HOST:4222 -v runs-data:/data rmos-runs
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fixed uid/gid so that bind-mounted data directories can be prepared on the host.
RUN groupadd --system --gid 10001 rmos \
    && useradd --system --uid 10001 --gid rmos --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rmos

WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts/ ./contracts/
COPY worker/ ./worker/
RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info

# Create the data directory owned by the runtime user *before* declaring the volume, so that a
# fresh named volume mounted here inherits that ownership and the worker can write to it.
RUN mkdir -p /data && chown rmos:rmos /data
ENV RMOS_DATA_DIR=/data
VOLUME /data

USER rmos:rmos
WORKDIR /data

# Ready = /readyz answers 200 on the metrics port (RMOS_METRICS_PORT): connected to NATS, streams,
# consumers and store ready. The probe is python, which the image has; without a metrics port
# (the explainer, a client command) there is nothing to probe and the check passes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "worker.probe", "/readyz"]

# Exec form: rmos-runs is PID 1 and receives SIGTERM directly, so it can drain before exiting.
ENTRYPOINT ["rmos-runs"]
CMD ["worker"]
