# The operator image: `redis-messaging run --standalone` as a non-root user, fit for a read-only
# root filesystem. Build from the repository root: docker build -t redis-messaging-operator:dev .

# -- build: a wheel of the project, then a virtualenv with it and its dependencies -----------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY .ci/constraints.txt ./

# The venv lives at the path it has in the runtime image: its scripts name their interpreter by path.
# Its dependencies are the versions the tests passed with (.ci/constraints.txt).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/redis-messaging \
 && /opt/redis-messaging/bin/pip install -c constraints.txt /wheels/*.whl \
 && /opt/redis-messaging/bin/pip uninstall --yes pip \
 && /opt/redis-messaging/bin/redis-messaging --help > /dev/null

# -- runtime: the same Python, the venv, nothing else ----------------------------------------------
FROM python:3.11-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="redis-messaging-operator" \
      org.opencontainers.image.description="Kubernetes operator for highly available Redis used for messaging" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="redis-messaging-operator maintainers"

# Bytecode was compiled at install time; nothing is written at run time (read-only root filesystem).
# HOME points at /tmp (an emptyDir in the chart) for any library that looks for a home directory.
ENV PATH=/opt/redis-messaging/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

COPY --from=build /opt/redis-messaging /opt/redis-messaging

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090

ENTRYPOINT ["redis-messaging"]
CMD ["run", "--standalone"]
