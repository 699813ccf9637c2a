#!/usr/bin/env bash
# Installs the Debian packages the test suites use, only when missing.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v supervisord >/dev/null || need+=(supervisor)
command -v debootstrap >/dev/null || need+=(debootstrap)
for lib in libibverbs1 librdmacm1 libnuma1 liburing2 libcurl4; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
if ((${#need[@]})); then
  echo "system-deps: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
