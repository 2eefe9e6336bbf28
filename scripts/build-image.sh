#!/usr/bin/env bash
# Build the plura-relay image with podman, without a registry: make the local
# debian:bookworm-slim base first (scripts/make-base-image.sh), then build the Dockerfile and tag
# it plura-relay:<version> and plura-relay:test.
#
#   scripts/build-image.sh [extra podman build args...]
#
# The flags are those this kind of machine needs: --runtime runc (crun fails on its cgroups),
# explicit ulimits (podman's defaults fail here), --network host (the build's apt and pip reach
# the registries as the host does), --pull=never (the base is local), --format docker (OCI
# images have no HEALTHCHECK). The host's CA bundle (this machine reaches PyPI through a
# TLS-inspecting proxy) is given to pip as a build secret: present while pip runs, never in a
# layer of the image.
#
# Environment: IMAGE (default plura-relay); BASE_IMAGE (default debian:bookworm-slim);
# PIP_CA_BUNDLE (default: $PIP_CERT, else /etc/ssl/certs/ca-certificates.crt; "" = none);
# NOFILE (default: the hard limit of open files here, `ulimit -Hn`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

IMAGE=${IMAGE:-plura-relay}
export BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
# Not above this shell's hard limit: raising it needs CAP_SYS_RESOURCE, which root lacks here.
if [ -z "${NOFILE:-}" ]; then
  NOFILE=$(ulimit -Hn)
  [ "$NOFILE" != unlimited ] || NOFILE=1048576
fi
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
[ -n "$version" ] || { echo "build-image: no version in pyproject.toml" >&2; exit 1; }

scripts/make-base-image.sh

ca=${PIP_CA_BUNDLE-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
ca_args=()
if [ -n "$ca" ] && [ -f "$ca" ]; then
  # A build secret: mounted (at /run/secrets/pip-ca) into the builder's pip RUN only. A bind
  # mount (--volume) would leave an empty mount point file in every stage, the final one's too.
  ca_args=(--secret "id=pip-ca,src=$ca")
fi

echo "build-image: building $IMAGE:$version" >&2
podman build \
  --runtime runc \
  --pull=never \
  --force-rm \
  --network host \
  --format docker \
  --ulimit "nofile=$NOFILE:$NOFILE" \
  --ulimit nproc=32768:32768 \
  "${ca_args[@]}" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --tag "$IMAGE:$version" \
  --tag "$IMAGE:test" \
  --file Dockerfile \
  "$@" \
  .
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "/$IMAGE:" >&2 || true
# Earlier builds, untagged now, go (other images are left alone): the final images, and the
# builder stage's but the newest (the layer cache of the next build).
podman image prune -f --filter "label=org.opencontainers.image.title=$IMAGE" >/dev/null || true
mapfile -t stale < <(podman images -q --filter dangling=true --sort created \
  --filter "label=org.opencontainers.image.title=$IMAGE-builder" | tail -n +2)
[ ${#stale[@]} -eq 0 ] || podman rmi "${stale[@]}" >/dev/null 2>&1 || true
