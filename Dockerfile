# syntax=docker/dockerfile:1
# The receiver image: the package installed from its wheel on a slim Python, run as a non-root user.
# No public image is published: build it and push it to a registry your cluster pulls from,
#   docker build -t REGISTRY/modelarts-otel-receiver:VERSION .
#   docker push REGISTRY/modelarts-otel-receiver:VERSION
# (VERSION: the package version, e.g. 0.1.0, which the Helm chart's appVersion follows), or run it:
#   docker run -v $PWD/config.yaml:/etc/modelarts-receiver/config.yaml:ro \
#     -e HUAWEICLOUD_SDK_AK -e HUAWEICLOUD_SDK_SK REGISTRY/modelarts-otel-receiver:VERSION
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
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODELARTS_RECEIVER_CONFIG=/etc/modelarts-receiver/config.yaml
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
# /metrics, /healthz, /readyz on telemetry.listen (default 0.0.0.0:8888; the sidecar example uses
# 9464); Kubernetes probes these itself. The HEALTHCHECK reads the port from the config at
# $MODELARTS_RECEIVER_CONFIG, so it follows whatever telemetry.listen says.
EXPOSE 8888
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["modelarts-receiver", "healthcheck", "--timeout", "4"]
ENTRYPOINT ["modelarts-receiver"]
CMD ["run", "--config", "/etc/modelarts-receiver/config.yaml"]
