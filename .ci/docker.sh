#!/usr/bin/env bash
# A Docker engine on this machine, for `make image` and the container tests. Idempotent.
#
#   1. when no engine answers on $DOCKER_HOST / /var/run/docker.sock: installs Debian's
#      docker.io (dockerd, containerd, runc) if dockerd is missing (apt-get; root), then starts
#      `dockerd --storage-driver=overlay2 --iptables=false --bridge=none` in the background,
#      logging to $DOCKERD_LOG, and waits until it answers; it stays running afterwards;
#   2. installs debootstrap (Debian's) when the base image has to be made from a Debian root
#      file system (`make image` without BASE_IMAGE; DOCKER_NEEDS=debootstrap);
#   3. prints the server version on stdout.
#
# --bridge=none: this machine has no bridge/NAT for containers (and --iptables=false leaves
# the host's firewall alone), so every container and build uses the host's network
# (`--network host`).
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"

log() { echo "[docker.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

apt_install() {
  [ "$(id -u)" = 0 ] || die "$* is not installed and installing it needs root (Debian: apt-get install $*)"
  log "installing $* from Debian"
  # a fresh machine has no package lists yet; a failed update is not fatal when lists exist
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

answers() { docker version --format '{{.Server.Version}}' 2>/dev/null; }

if [ "${DOCKER_NEEDS:-}" = debootstrap ] && ! command -v debootstrap >/dev/null; then
  apt_install debootstrap
fi

if ! version="$(answers)"; then
  command -v dockerd >/dev/null || apt_install docker.io
  # docker.io brings its own client; the one already first on PATH is kept
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting dockerd needs root"
  log "starting dockerd (log: $DOCKERD_LOG)"
  # setsid: the engine outlives the shell and the test session that asked for it
  setsid dockerd --storage-driver=overlay2 --iptables=false --bridge=none \
    >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    version="$(answers)" && break
    sleep 0.5
  done
  version="$(answers)" || die "dockerd did not answer within 60 s: see $DOCKERD_LOG"
fi
log "ready: Docker engine $version"
printf '%s\n' "$version"
