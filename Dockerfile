# plura-relay container image.
#
#   scripts/build-image.sh          # podman, no registry: makes debian:bookworm-slim locally first
#   docker build -t plura-relay .   # Docker with BuildKit (RUN --mount) and Docker Hub's base
#
# Stages: `python` (Debian 12 slim + python3) is the base of the other two; `builder` makes a
# venv with the project in it, its hot path compiled with mypyc (setup.py, PLURA_RELAY_MYPYC=1:
# 5-10 % less CPU per message; gcc and the Python headers stay in the builder; uvloop and
# msgspec come as manylinux wheels); the final image is `python` plus the venv and the default
# config, run as the unprivileged user plura (uid 65532). tests/image builds and runs it.
# `--build-arg MYPYC=0` builds the pure Python package instead.
#
# Behind a TLS-inspecting proxy pip needs the host's CA bundle. It is given to the one RUN that
# runs pip as a build secret, never copied into a layer:
#   podman build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt ...
#   docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt ...
# (scripts/build-image.sh does this). Without the secret pip uses its own CA bundle. (A bind
# mount, `podman build -v CA:/tmp/ca.crt:ro`, works too but leaves an empty /tmp/ca.crt
# mount point in the layers of every stage's RUN, the final image's included.)

ARG BASE_IMAGE=debian:bookworm-slim

# --- python: the base of both stages (the venv's interpreter is this python3) ----------------
FROM ${BASE_IMAGE} AS python
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log /var/cache/debconf/*-old

# --- builder: the venv --------------------------------------------------------------------------
FROM python AS builder
# Lets scripts/build-image.sh remove the stale builder images of earlier builds.
LABEL org.opencontainers.image.title="plura-relay-builder"
ARG MYPYC=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && if [ "$MYPYC" = 1 ]; then \
        apt-get install -y --no-install-recommends gcc libc6-dev python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/plura-relay
# Only what the package needs, so that editing tests or docs does not invalidate this layer.
COPY pyproject.toml README.md setup.py build_backend.py /src/
COPY relay /src/relay
# The image runs the server and installs nothing: pip and setuptools go after the install.
RUN --mount=type=secret,id=pip-ca \
    set -eu; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=120; \
    PLURA_RELAY_MYPYC="$MYPYC" /opt/plura-relay/bin/pip install --no-cache-dir "/src[kubernetes]"; \
    /opt/plura-relay/bin/pip uninstall -y -q pip setuptools; \
    /opt/plura-relay/bin/plura-relay --help >/dev/null; \
    /opt/plura-relay/bin/python -c 'import relay.pipeline as p, sys; sys.exit(sys.argv[1] == "1" and not p.__file__.endswith(".so"))' "$MYPYC"

# --- final image --------------------------------------------------------------------------------
FROM python
LABEL org.opencontainers.image.title="plura-relay" \
      org.opencontainers.image.description="Node-side syslog receiver and relay for the PLURA SIEM" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /opt/plura-relay /opt/plura-relay
COPY conf/plura-relay.toml /etc/plura-relay/plura-relay.toml

# Port 514. The production default listens on 0.0.0.0:514; uid 65532 may bind a port below 1024
# only with CAP_NET_BIND_SERVICE. A capability the runtime grants (it is in Docker's, containerd's
# and podman's default set; Kubernetes: `capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}`)
# reaches only the bounding set of a non-root process and is gone after execve (no ambient
# capabilities: kubernetes#56374). So the venv's interpreter, a copy of python3 that runs
# `plura-relay` and nothing else, carries it as a file capability (cap_net_bind_service=ep,
# written as the security.capability xattr: setcap is not in the image). What follows:
#   - as uid 65532 (the image's USER) the server binds 514 as long as the container keeps
#     NET_BIND_SERVICE in its bounding set and may gain privileges: no_new_privs (Kubernetes
#     `allowPrivilegeEscalation: false`, Docker `--security-opt no-new-privileges`) makes the
#     kernel ignore file capabilities, and the bind fails with "Permission denied". Such a pod
#     runs as uid 0 with only NET_BIND_SERVICE (drop ALL, add it back), or listens on a
#     port >= 1024;
#   - with NET_BIND_SERVICE missing from the bounding set (drop ALL without adding it back) the
#     kernel refuses to exec the server at all ("operation not permitted"): for a port >= 1024
#     with every capability dropped, build with `--build-arg NET_BIND_CAP=0`.
ARG NET_BIND_CAP=1
RUN set -eu; \
    groupadd --system --gid 65532 -K SYS_GID_MAX=65532 plura; \
    useradd --system --uid 65532 --gid 65532 -K SYS_UID_MAX=65532 --no-create-home \
        --no-log-init --home-dir /var/lib/plura-relay --shell /usr/sbin/nologin plura; \
    install -d -o 65532 -g 65532 -m 0755 /var/log/plura /var/lib/plura-relay; \
    if [ "$NET_BIND_CAP" = 1 ]; then \
        rm /opt/plura-relay/bin/python3; \
        cp "$(readlink -f /usr/bin/python3)" /opt/plura-relay/bin/python3; \
        python3 -c 'import os, struct; os.setxattr("/opt/plura-relay/bin/python3", "security.capability", struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0))'; \
    fi; \
    /opt/plura-relay/bin/plura-relay --help >/dev/null

ENV PATH=/opt/plura-relay/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# 514 = syslog (UDP and TCP); 9514 = /metrics, /healthz, /readyz on 127.0.0.1 by default.
EXPOSE 514/udp 514/tcp
# Output (ceelog-<ip>.log) and state (children.json): mount these; both belong to uid 65532.
WORKDIR /var/lib/plura-relay
USER 65532:65532

# The health check asks the server itself, over its /healthz endpoint (metrics.listen,
# 127.0.0.1:9514 by default). It is a python one-liner with urllib until the server has a
# subcommand of its own for it: any connection error or non-2xx answer exits non-zero.
# PLURA_RELAY_HEALTH_URL overrides the URL (for a different metrics.listen). It runs the
# system python3 (no file capability). Docker-format images only: podman build --format docker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/bin/python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('PLURA_RELAY_HEALTH_URL', 'http://127.0.0.1:9514/healthz'), timeout=4)"]

# SIGTERM (the runtime's stop signal) drains and exits 0; SIGHUP reopens the output files.
STOPSIGNAL SIGTERM
ENTRYPOINT ["plura-relay"]
CMD ["serve", "--config", "/etc/plura-relay/plura-relay.toml"]
