#!/usr/bin/env bash
# A local base image for the worker image where no registry is reachable: Debian bookworm (minbase) with
# Python 3.11 and venv, made by debootstrap from the Debian mirror apt already uses, then `docker import`ed.
#   bash docker/base.sh [IMAGE]      # default mobitune-base:bookworm; does nothing if the image exists
set -euo pipefail
image=${1:-mobitune-base:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image: exists"
  exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /tmp/mobitune-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$image"
echo "$image: built from $mirror"
