#!/usr/bin/env bash
# Builds the molecule test image without any image registry: a minimal Debian bookworm
# root file system from debootstrap, imported with `docker import`.
#
# The image carries only what a bare "Ascend host" of the scenarios needs before Ansible
# touches it: python3 (3.11, the same minor as the controller, so host-built wheels fit),
# the venv module, PyYAML and python3-apt (the apt module's own dependency, as on a stock Debian or
# Ubuntu server: without it every apt task first runs apt-get update and installs it) for the
# system python3, the Debian libraries Mooncake's transfer
# engine links against (libibverbs1 librdmacm1 libnuma1, and libcurl4 for its metadata client), iproute2 and
# iputils-ping (device IPs and the ping mesh), procps, supervisor (the process supervisor
# the roles use where systemd does not run), keepalived (the proxies' virtual IP, as the proxy role
# would install it from Debian) and ca-certificates.
#
# The tag is a hash of the recipe (suite, packages, RECIPE), so a rerun reuses the image (or
# the cached root file system tarball under .cache/ when the image was removed) and a change
# of the recipe rebuilds it. Bump RECIPE when the build steps below change.
# Prints the image reference on stdout (last line); everything else goes to stderr.
#
# Env: PD_DEBIAN_MIRROR   mirror URL (default: the first Debian URI of the host's apt sources)
#      PD_TEST_IMAGE_REPO image repository name (default openfuyao-pd-test)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REPO="${PD_TEST_IMAGE_REPO:-openfuyao-pd-test}"
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-yaml,python3-apt,libibverbs1,librdmacm1,libnuma1,libcurl4,iproute2,iputils-ping,ca-certificates,supervisor,procps,keepalived
RECIPE=1

log() { echo "build-test-image: $*" >&2; }

hash="$(printf '%s\n' "$SUITE" "$PACKAGES" "$RECIPE" | sha256sum | cut -c1-12)"
tag="${REPO}:${hash}"

if docker image inspect "$tag" >/dev/null 2>&1; then
  log "reusing $tag"
  docker tag "$tag" "${REPO}:latest"
  echo "$tag"
  exit 0
fi

cache="${ROOT}/.cache/image"
tarball="${cache}/rootfs-${hash}.tar"
mkdir -p "$cache"

if [[ ! -s "$tarball" ]]; then
  command -v debootstrap >/dev/null || {
    log "debootstrap is missing: run 'make system-deps' (or apt-get install debootstrap)"
    exit 2
  }
  mirror="${PD_DEBIAN_MIRROR:-}"
  if [[ -z "$mirror" ]]; then
    # The host's own apt configuration says which Debian mirror this machine may reach.
    mirror="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)"
    [[ -n "$mirror" ]] || mirror="$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -n1 || true)"
  fi
  [[ -n "$mirror" ]] || { log "no Debian mirror found in the apt sources: set PD_DEBIAN_MIRROR"; exit 2; }

  work="$(mktemp -d /tmp/openfuyao-pd-rootfs.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
  log "debootstrap $SUITE from $mirror into $work (about half a minute)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  # Smaller image, and nothing in it that claims to be fresher than it is.
  rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/* \
    "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/*
  tar -C "$work/rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  # Only the current recipe's tarball is worth keeping.
  find "$cache" -name 'rootfs-*.tar' ! -name "rootfs-${hash}.tar" -delete
fi

log "docker import $tag"
docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/sleep", "infinity"]' \
  "$tarball" "$tag" >/dev/null
docker tag "$tag" "${REPO}:latest"
echo "$tag"
