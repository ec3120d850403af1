#!/usr/bin/env bash
# A base image made from Debian's packages alone, for machines that cannot pull one from a
# registry: `debootstrap --variant=minbase bookworm` + Python 3.11 (with venv) and the CA
# certificates, imported with `docker import` (k8s/Dockerfile adds the rest with apt-get).
# Prints the image's tag (the only stdout line).
#
#   k8s/debian_base.sh      # → california-housing-price-base:bookworm-<hash of this script>
#
# The tag names this script's content, so an unchanged script reuses the image it built before
# (about a minute and 70 MB of downloads saved per `make image`), and a changed one builds anew.
# Needs root (debootstrap, chroot) and a running Docker engine (.ci/docker.sh).
# Settings (env): BASE_REPOSITORY (california-housing-price-base), DEBIAN_MIRROR
# (http://deb.debian.org/debian).
set -euo pipefail

BASE_REPOSITORY="${BASE_REPOSITORY:-california-housing-price-base}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3-distutils provides python3.11-distutils, which python3.11-venv needs: debootstrap
# does not resolve virtual packages, so it is named here.
PACKAGES=python3.11,python3.11-venv,python3-distutils,ca-certificates

log() { echo "[debian_base.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

tag="$BASE_REPOSITORY:bookworm-$(sha256sum "$0" | cut -c1-12)"
if docker image inspect "$tag" >/dev/null 2>&1; then
  log "reusing $tag"
  printf '%s\n' "$tag"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "building the base needs root (debootstrap); or give BASE_IMAGE=python:3.11-slim"
command -v debootstrap >/dev/null || die "debootstrap is missing: DOCKER_NEEDS=debootstrap .ci/docker.sh"

root="$(mktemp -d /tmp/debian-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
log "debootstrap bookworm into $root ($PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$DEBIAN_MIRROR" >&2

# What the build machine trusts, the base trusts: a TLS-inspecting proxy's CA in
# /usr/local/share/ca-certificates would otherwise make every pip/uv download fail.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >&2
fi

# An image is not a machine: no package caches, lists, manuals or translations (~130 MB),
# now or from packages installed later (dpkg's path-exclude).
printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
  'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' \
  >"$root/etc/dpkg/dpkg.cfg.d/01-image-excludes"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/debootstrap \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/var/log/*.log
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' \
  - "$tag" >/dev/null
log "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
printf '%s\n' "$tag"
