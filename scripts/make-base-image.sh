#!/usr/bin/env bash
# Make a local `debian:bookworm-slim` image for podman, without a registry: debootstrap a minbase
# Debian 12 from the apt mirror this machine already uses, slim it the way Debian's official
# *-slim images are slimmed (no docs, man pages or locales; apt keeps no caches), and
# `podman import` it.
#
# Idempotent: does nothing when the image already exists (pass --force to remake it). The root
# filesystem tarball is cached (PLURA_BASE_CACHE, default /var/cache/plura-relay), so a machine
# that lost its podman storage re-imports in seconds instead of debootstrapping again.
#
# Environment: MIRROR (default: this machine's Debian mirror, else http://deb.debian.org/debian),
# SECURITY_MIRROR (likewise, for bookworm-security), PLURA_BASE_CACHE, BASE_IMAGE.
# Needs root, podman and debootstrap (apt-get install podman runc debootstrap).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
CACHE_DIR=${PLURA_BASE_CACHE:-/var/cache/plura-relay}
TARBALL="$CACHE_DIR/debian-bookworm-slim-rootfs.tar"
SUITE=bookworm

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

log() { echo "make-base-image: $*" >&2; }

if [ "$force" = 0 ] && podman image exists "$BASE_IMAGE"; then
  log "$BASE_IMAGE already exists"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "needs root (debootstrap)"
  exit 1
fi

# The mirror apt is configured with here (/etc/apt/sources.list or sources.list.d, either
# format): apt itself tells the repository URI of each configured suite.
mirror_for() {
  # shellcheck disable=SC2016  # apt's own $(FIELD) placeholders, not shell
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
    awk -v suite="$1" '$2 == suite { print $1; exit }'
}
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(mirror_for "$SUITE")
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
if [ -z "${SECURITY_MIRROR:-}" ]; then
  SECURITY_MIRROR=$(mirror_for "$SUITE-security")
  SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
fi
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${SECURITY_MIRROR%/}

build_rootfs() {
  local tmp rootfs
  tmp=$(mktemp -d /var/tmp/plura-base.XXXXXX)
  # shellcheck disable=SC2064  # expand now: $tmp is local
  trap "rm -rf '$tmp'" EXIT
  rootfs="$tmp/rootfs"
  log "debootstrap --variant=minbase $SUITE from $MIRROR"
  local keyring=()
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
    keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
  if ! debootstrap --variant=minbase "${keyring[@]}" "$SUITE" "$rootfs" "$MIRROR" \
    >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
  fi

  # As the official slim images: dpkg leaves out docs, man pages and locales of later installs.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  # ... and apt keeps no package caches and fetches no translations.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' \
    >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

  # Trim what the image does not need; the container runtime provides /dev, /proc, /sys,
  # /etc/resolv.conf and /etc/hostname.
  local r=$rootfs
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${r:?}"/usr/share/{groff,info,linda,lintian,locale,man}/* \
    "${r:?}"/var/lib/apt/lists/* "${r:?}"/var/cache/apt/* "${r:?}"/var/cache/debconf/*-old \
    "${r:?}"/var/log/* "${r:?}"/tmp/* "${r:?}"/dev/* "${r:?}"/proc/* "${r:?}"/sys/* \
    "${r:?}/etc/resolv.conf" "${r:?}/etc/hostname" "${r:?}/debootstrap"
  mkdir -p "$rootfs/var/lib/apt/lists/partial" "$rootfs/var/cache/apt/archives/partial"

  mkdir -p "$CACHE_DIR"
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$tmp"
  trap - EXIT
}

if [ "$force" = 1 ] || [ ! -s "$TARBALL" ]; then
  build_rootfs
else
  log "using cached $TARBALL"
fi

log "podman import -> $BASE_IMAGE"
podman import -q --change 'CMD ["bash"]' \
  --message "debootstrap --variant=minbase $SUITE ($MIRROR), slimmed" \
  "$TARBALL" "$BASE_IMAGE" >/dev/null
# `FROM debian:bookworm-slim` must find it whichever way podman qualifies the short name.
case "$BASE_IMAGE" in
  */*) ;;
  *) podman tag "$BASE_IMAGE" "docker.io/library/$BASE_IMAGE" ;;
esac
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "$BASE_IMAGE" >&2 || true
