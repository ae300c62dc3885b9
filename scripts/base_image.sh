#!/usr/bin/env bash
# scripts/base_image.sh TAG CACHE_DIR: a Debian bookworm base image with python3 (3.11) and python3-venv, made
# without any image registry: debootstrap (minbase) from Debian's mirror, then `docker import`.
#
# The root file system is kept as CACHE_DIR/bookworm-minbase-python3.tar, so a rerun only imports it (and
# does nothing when TAG exists already). Needs root and debootstrap. DEBIAN_MIRROR: default deb.debian.org.
set -euo pipefail
tag=$1
cache=$2
tarball=$cache/bookworm-minbase-python3.tar

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag exists"
    exit 0
fi
if [ ! -f "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "debootstrap is not installed (Debian: debootstrap)" >&2; exit 1; }
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs" "$tarball.partial"' EXIT
    echo "debootstrap bookworm into $rootfs"
    nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" \
        || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
    # What an image needs no copy of: downloaded packages, package lists (apt-get update in a build brings
    # them back), documentation and translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
fi
docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
echo "imported $tag from $tarball"
