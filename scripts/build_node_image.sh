#!/usr/bin/env bash
# Build the node image (`make node-image`) with no container registry and no network inside
# Docker. Name, tag, labels and paths come from src/tesai/agent/node_image.py.
#   1. Base: a Debian bookworm root filesystem made from Debian packages by mmdebstrap, imported
#      with `docker import` as <repository>-base:bookworm-<hash of its recipe>. Skipped while
#      that image exists.
#   2. Wheels: `pip download` of ray[default]==<version> ON THIS HOST, for the image's Python and
#      glibc, pinned to the versions in requirements/dev.lock (the versions the tests run), into
#      a cache folder. Skipped while what decides them (the requirement, the target, the lock's
#      pins of the packages downloaded) is what the folder was downloaded for.
#   3. `docker build --network none` of deploy/node-image/Dockerfile FROM the base with those
#      wheels. Skipped when the image already carries the hash of the current inputs (its
#      tesai.build-inputs label); otherwise unchanged layers come from Docker's build cache.
# A rebuild with nothing changed takes about a second.
#
# Environment: NODE_IMAGE_CACHE (default ~/.cache/tesai/node-image), NODE_IMAGE_REFRESH=1 (a new
# root filesystem and a new download even though nothing here changed: Debian's security
# updates), DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR, PYTHON (runs pip download).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
CACHE=${NODE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tesai/node-image}
REFRESH=${NODE_IMAGE_REFRESH:-0}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
GLIBC_MINOR=36 # bookworm's glibc 2.36: the newest manylinux wheels the image can load
# Debian packages of the root filesystem. Ray's wheels need only glibc; procps gives `ps`.
PACKAGES=python3,python3-venv,ca-certificates,procps
LOCKFILE=requirements/dev.lock
DOCKERFILE=deploy/node-image/Dockerfile
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} # the builder Debian's Engine 20.10 has built in

started=$SECONDS
log() { printf '[node-image] %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }
digest() { sha256sum | cut -c1-64; }

eval "$(PYTHONPATH=src "$PYTHON" -m tesai.agent.node_image shell)"
: "${NODE_IMAGE:?}" "${RAY_VERSION:?}" "${PYTHON_VERSION:?}"

scripts/docker_engine.sh
mkdir -p "$CACHE"
ARCH=$(uname -m)

# --- 1. The Debian base -----------------------------------------------------------------------
BASE_REPOSITORY="${NODE_IMAGE_REPOSITORY}-base"
recipe="mmdebstrap minbase $SUITE $ARCH $PACKAGES $DEBIAN_MIRROR $DEBIAN_SECURITY_MIRROR nodocs"
BASE="$BASE_REPOSITORY:$SUITE-$(printf '%s' "$recipe" | digest | cut -c1-12)"

build_base() {
  if ! command -v mmdebstrap >/dev/null; then
    [ "$(id -u)" -eq 0 ] || fail "mmdebstrap is missing: apt-get install mmdebstrap (as root)"
    log "installing mmdebstrap (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; } \
      || fail "apt-get install mmdebstrap failed"
  fi
  local tmp t0=$SECONDS
  tmp=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the folder of this call
  trap "rm -rf '$tmp'" EXIT
  log "making the $SUITE root filesystem ($PACKAGES)"
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$tmp/rootfs.tar" \
    "deb $DEBIAN_MIRROR $SUITE main" \
    "deb $DEBIAN_MIRROR $SUITE-updates main" \
    "deb $DEBIAN_SECURITY_MIRROR $SUITE-security main"
  docker import --change 'CMD ["bash"]' "$tmp/rootfs.tar" "$BASE" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
  log "base $BASE imported in $((SECONDS - t0)) s"
  # Older bases are only untagged: images built on them keep their layers until pruned.
  docker image ls --format '{{.Repository}}:{{.Tag}}' "$BASE_REPOSITORY" \
    | grep -vxF "$BASE" | xargs -r docker rmi >/dev/null 2>&1 || true
}

if [ "$REFRESH" = 1 ] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
  build_base
fi

# --- 2. The wheels, downloaded on the host --------------------------------------------------
platforms=()
for ((m = GLIBC_MINOR; m >= 17; m--)); do platforms+=(--platform "manylinux_2_${m}_${ARCH}"); done
platforms+=(--platform "manylinux2014_$ARCH" --platform "manylinux2010_$ARCH" --platform "manylinux1_$ARCH")
requirement="ray[default]==$RAY_VERSION"
WHEELS="$CACHE/wheels"

# What decides the wheels: the requirement, the target, and the lock's pins of the packages in
# the wheel set (a lock change elsewhere, a new dev tool say, leaves the wheels as they are).
wheel_inputs() {
  echo "$requirement $PYTHON_VERSION ${platforms[*]}"
  "$PYTHON" - "$LOCKFILE" "$1" <<'EOF'
import re, sys
from pathlib import Path

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

names = {norm(p.name.split("-")[0]) for p in Path(sys.argv[2]).glob("*.whl")}
for line in Path(sys.argv[1]).read_text().splitlines():
    pin = re.match(r"([A-Za-z0-9][A-Za-z0-9_.-]*)(\[[^]]*\])?==(\S+)", line)
    if pin and norm(pin[1]) in names:
        print(norm(pin[1]), pin[3])
EOF
}

if [ "$REFRESH" = 1 ] || [ ! -f "$WHEELS/.inputs" ] \
  || [ "$(wheel_inputs "$WHEELS")" != "$(cat "$WHEELS/.inputs")" ]; then
  t0=$SECONDS
  log "downloading the wheels of $requirement (pip, on this host)"
  rm -rf "$WHEELS.partial"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir \
    --dest "$WHEELS.partial" --only-binary=:all: --implementation cp \
    --python-version "$PYTHON_VERSION" --abi "cp${PYTHON_VERSION/./}" "${platforms[@]}" \
    --constraint "$LOCKFILE" "$requirement"
  wheel_inputs "$WHEELS.partial" >"$WHEELS.partial/.inputs"
  rm -rf "$WHEELS"
  mv "$WHEELS.partial" "$WHEELS"
  log "$(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1), in $((SECONDS - t0)) s"
fi

# --- 3. The image -----------------------------------------------------------------------------
ray_site_sha=$(digest <"$RAY_SITE_SOURCE")
inputs=$({
  docker image inspect --format '{{.Id}}' "$BASE"
  (cd "$WHEELS" && find . -name '*.whl' -printf '%f %s\n' | sort)
  echo "$ray_site_sha"
  PYTHONPATH=src "$PYTHON" -m tesai.agent.node_image shell
  cat "$DOCKERFILE" scripts/build_node_image.sh
} | digest)
current=$(docker image inspect --format "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" \
  "$NODE_IMAGE" 2>/dev/null || true)
if [ "$current" = "$inputs" ]; then
  log "$NODE_IMAGE is up to date ($((SECONDS - started)) s)"
  exit 0
fi

t0=$SECONDS
context="$CACHE/context"
rm -rf "$context"
mkdir -p "$context/ray_site"
cp -al "$WHEELS" "$context/wheels" 2>/dev/null || cp -a "$WHEELS" "$context/wheels"
rm -f "$context/wheels/.inputs"
cp "$DOCKERFILE" "$context/Dockerfile"
cp "$RAY_SITE_SOURCE" "$context/ray_site/sitecustomize.py"
log "building $NODE_IMAGE FROM $BASE (docker build --network none)"
docker build --network none --tag "$NODE_IMAGE" \
  --build-arg "BASE=$BASE" \
  --build-arg "RAY_VERSION=$RAY_VERSION" \
  --build-arg "PYTHON_VERSION=$PYTHON_VERSION" \
  --build-arg "VENV_DIR=$VENV_DIR" \
  --build-arg "RAY_SITE_DIR=$RAY_SITE_DIR" \
  --build-arg "USER_UID=$USER_UID" \
  --build-arg "USER_GID=$USER_GID" \
  --build-arg "HOME_DIR=$HOME_DIR" \
  --label "$RAY_VERSION_LABEL=$RAY_VERSION" \
  --label "$PYTHON_VERSION_LABEL=$PYTHON_VERSION" \
  --label "$RAY_SITE_LABEL=$ray_site_sha" \
  --label "$INPUTS_LABEL=$inputs" \
  --label "org.opencontainers.image.version=$RAY_VERSION" \
  --label "org.opencontainers.image.base.name=$BASE" \
  "$context" >"$CACHE/build.log" 2>&1 \
  || { tail -n 30 "$CACHE/build.log" >&2; fail "docker build failed (log: $CACHE/build.log)"; }
rm -rf "$context"
size=$(docker image inspect --format '{{.Size}}' "$NODE_IMAGE")
log "$NODE_IMAGE built in $((SECONDS - t0)) s ($((size / 1000000)) MB); $((SECONDS - started)) s in all"
