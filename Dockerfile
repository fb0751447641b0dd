# syntax=docker/dockerfile:1
# The etcdbot image: the bot (console script `etcdbot`) plus the host tools its procedures use:
#   etcdctl (Debian etcd-client)   snapshot status / member list when run beside the store
#   etcd    (Debian etcd-server)   the restore drill starts a throw-away etcd on a snapshot
#   ssh     (openssh-client)       ssh-keygen/ssh for operators debugging from `oc rsh`
# Two stages: the builder makes a venv with `pip install .`; the final stage copies only the venv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Only what the distribution is built from (see .dockerignore).
COPY . /src/
RUN pip install --no-cache-dir /src \
    && pip uninstall --yes pip setuptools wheel \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
    && test -x /opt/venv/bin/etcdbot

# --- final -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="etcdbot" \
      org.opencontainers.image.description="Slack bot for etcd incidents on OpenShift 4 clusters"

# Versions pinned to the bookworm release line; the wildcard lets Debian security updates in.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends \
       etcd-client=3.4.23-* \
       etcd-server=3.4.23-* \
       openssh-client=1:9.2p1-* \
    && rm -rf /var/lib/apt/lists/* \
    && etcd --version > /dev/null \
    && etcdctl version > /dev/null

# uid 10001, primary group 0: OpenShift runs images with an arbitrary uid in group 0, so every
# path the bot writes to is group-0 writable as well.
RUN useradd --uid 10001 --gid 0 --home-dir /home/etcdbot --create-home --shell /usr/sbin/nologin etcdbot \
    && mkdir -p /var/lib/etcdbot/backups /etc/etcdbot \
    && chown -R 10001:0 /var/lib/etcdbot /home/etcdbot \
    && chmod -R g=u /var/lib/etcdbot /home/etcdbot

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/etcdbot \
    ETCDBOT_HTTP_PORT=3000 \
    ETCDBOT_HEALTH_PORT=8080 \
    ETCDBOT_BACKUP_DIR=/var/lib/etcdbot/backups

USER 10001
WORKDIR /home/etcdbot

# 3000: Slack HTTP mode (Events/Interactivity request URL); 8080: /healthz, /readyz, /metrics.
EXPOSE 3000 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ETCDBOT_HEALTH_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["etcdbot", "run"]
