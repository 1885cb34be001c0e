#!/usr/bin/env bash
# Make sure a Docker Engine answers on this machine (`make docker-engine`, .ci/run):
#   - no `dockerd`: install Debian's docker.io with apt-get (Engine 20.10, API 1.41; as root);
#   - no daemon answering `docker info`: start `dockerd` in the background (no systemd needed),
#     its log in $DOCKERD_LOG, and wait until it answers (at most $DOCKERD_WAIT_S seconds).
# Quick when both are there: one `docker info`. Exits non-zero, saying why, when it cannot.
#
# Any Docker client on PATH will do: newer clients (the v28 in /usr/local/bin on the CI machine)
# negotiate the daemon's API version down, and so does the agent (docker-py, version="auto").
# Debian's docker.io brings its own client (/usr/bin/docker, 20.10) for hosts that have none.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/tesai-dockerd.log}
DOCKERD_WAIT_S=${DOCKERD_WAIT_S:-60}
LOCK=${DOCKER_ENGINE_LOCK:-/run/lock/tesai-docker-engine.lock}

log() { printf '[docker-engine] %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

answers() { timeout 10 docker info >/dev/null 2>&1; }

install_engine() {
  [ "$(id -u)" -eq 0 ] \
    || fail "dockerd is missing: install Docker (as root: apt-get install docker.io), then run again"
  command -v apt-get >/dev/null \
    || fail "dockerd is missing and this is not a Debian/Ubuntu host: install Docker Engine"
  log "installing Debian's docker.io (apt-get)"
  local started=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  # Try the package lists we have first; refresh them only when that fails.
  apt-get install -y -qq docker.io >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; } \
    || fail "apt-get install docker.io failed"
  log "docker.io installed in $((SECONDS - started)) s"
}

dockerd_running() {
  local pid
  pid=$(cat /var/run/docker.pid 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

start_dockerd() {
  [ "$(id -u)" -eq 0 ] || fail "no Docker daemon answers: start it (as root: dockerd, or systemctl start docker)"
  if dockerd_running; then
    log "dockerd (pid $(cat /var/run/docker.pid)) is starting; waiting for it"
  else
    log "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # Its own session, stdin closed: it outlives this script and the make that ran it.
    setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  local deadline=$((SECONDS + DOCKERD_WAIT_S))
  until answers; do
    if [ $SECONDS -ge $deadline ]; then
      log "dockerd did not answer within ${DOCKERD_WAIT_S} s; the end of $DOCKERD_LOG:"
      tail -n 20 "$DOCKERD_LOG" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

if command -v docker >/dev/null && answers; then
  exit 0
fi

# One installer/starter at a time (parallel make jobs, CI and a developer's shell).
mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock -w $((DOCKERD_WAIT_S + 600)) 9 || fail "another docker_engine.sh holds $LOCK"

command -v dockerd >/dev/null || install_engine
command -v docker >/dev/null || fail "dockerd is installed but no docker client is on PATH"
answers || start_dockerd
log "Docker Engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
