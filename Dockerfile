# syntax=docker/dockerfile:1
# The receiver image: the package installed from its wheel on a slim Python, run as a non-root user.
#   docker build -t modelarts-otel-receiver .
#   docker run -v $PWD/config.yaml:/etc/modelarts-receiver/config.yaml:ro \
#     -e HUAWEICLOUD_SDK_AK -e HUAWEICLOUD_SDK_SK modelarts-otel-receiver
# The config is mounted at the fixed path below (the Helm chart mounts its ConfigMap there);
# checkpoints live in /var/lib/modelarts-receiver, a volume. Other commands:
#   docker run ... modelarts-otel-receiver validate --config /etc/modelarts-receiver/config.yaml

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist/*.whl /tmp/wheels/
RUN python -m pip install --no-cache-dir /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && groupadd --system --gid 10001 receiver \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/modelarts-receiver --shell /usr/sbin/nologin receiver \
 && mkdir -p /etc/modelarts-receiver /var/lib/modelarts-receiver \
 && chown 10001:10001 /var/lib/modelarts-receiver
USER 10001:10001
WORKDIR /var/lib/modelarts-receiver
VOLUME ["/var/lib/modelarts-receiver"]
# /metrics, /healthz, /readyz (telemetry.listen); Kubernetes probes these itself.
EXPOSE 8888
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=4)"]
ENTRYPOINT ["modelarts-receiver"]
CMD ["run", "--config", "/etc/modelarts-receiver/config.yaml"]
