#!/usr/bin/env bash
# Build the sample application images sample-app:<rev> (default revisions: v1 v2 v3).
#
#   sample-repo/app/build.sh [REV...]
#
# Each image bakes in its own REVISION, so image ids differ per revision. Needs gcc
# with static libc (Debian: gcc, libc6-dev), a static busybox (Debian: busybox-static)
# and a Docker engine; installs nothing. Uses the legacy builder (DOCKER_BUILDKIT=0):
# it needs no buildx plugin and no base image.
#
# Idempotent and quick on a re-run: every image carries a label with a hash of its
# inputs (server.c, Dockerfile, busybox, this script, the revision); a tag whose label
# matches is left alone. FORCE=1 rebuilds anyway.
#
# Environment: DOCKER (CLI, default docker; DOCKER_HOST is honoured), IMAGE_NAME
# (default sample-app), BUSYBOX (default /bin/busybox), CC (default gcc), FORCE.
# Prints the tags (one per line) on stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DOCKER=${DOCKER:-docker}
IMAGE_NAME=${IMAGE_NAME:-sample-app}
BUSYBOX=${BUSYBOX:-/bin/busybox}
CC=${CC:-gcc}
CFLAGS=(-O2 -static -pthread -Wall -Wextra)
LABEL_KEY=dev.reconciler.sample-app.inputs

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

if [[ $# -gt 0 ]]; then revs=("$@"); else revs=(v1 v2 v3); fi
for rev in "${revs[@]}"; do
    [[ $rev =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid revision/tag '$rev'"
done

# ---- prerequisites (checked, never installed) --------------------------------
command -v "$CC" >/dev/null 2>&1 || die "$CC not found (Debian: apt-get install gcc libc6-dev)"
libc_a=$("$CC" -print-file-name=libc.a)
[[ -f $libc_a ]] || die "static libc (libc.a) not found for $CC (Debian: apt-get install libc6-dev)"
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found (Debian: apt-get install busybox-static)"
if command -v readelf >/dev/null 2>&1 && readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'program interpreter'; then
    die "$BUSYBOX is dynamically linked; a FROM scratch image needs busybox-static"
fi
command -v "$DOCKER" >/dev/null 2>&1 || die "docker CLI '$DOCKER' not found (Debian: apt-get install docker.io)"
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine answers (is dockerd running? DOCKER_HOST=${DOCKER_HOST:-unset})"

# ---- what needs building -------------------------------------------------------
inputs_hash=$(
    {
        printf 'cflags=%s\n' "${CFLAGS[*]}"
        sha256sum <"$here/server.c"
        sha256sum <"$here/Dockerfile"
        sha256sum <"$BUSYBOX"
        sha256sum <"${BASH_SOURCE[0]}"
    } | sha256sum | cut -d' ' -f1
)

todo=()
for rev in "${revs[@]}"; do
    want=$(printf '%s %s\n' "$inputs_hash" "$rev" | sha256sum | cut -c1-32)
    have=$("$DOCKER" image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" \
        "$IMAGE_NAME:$rev" 2>/dev/null || true)
    if [[ ${FORCE:-0} != 1 && $have == "$want" ]]; then
        log "$IMAGE_NAME:$rev up to date"
    else
        todo+=("$rev")
    fi
done

# ---- compile once, build each revision -------------------------------------------
if [[ ${#todo[@]} -gt 0 ]]; then
    ctx=$(mktemp -d "${TMPDIR:-/tmp}/sample-app-build.XXXXXX")
    trap 'rm -rf "$ctx"' EXIT
    "$CC" "${CFLAGS[@]}" -o "$ctx/app" "$here/server.c"
    if command -v readelf >/dev/null 2>&1 && readelf -l "$ctx/app" | grep -q 'program interpreter'; then
        die "compiled binary is not static"
    fi
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/tmp"
    chmod 1777 "$ctx/rootfs/tmp"
    cp "$BUSYBOX" "$ctx/rootfs/bin/busybox"
    # /bin/sh plus every other applet (ls, cat, touch, wget...) as symlinks, so tests
    # and people can poke at a container; the app itself needs none of them.
    for applet in $("$BUSYBOX" --list); do
        [[ $applet == busybox || $applet == */* ]] || ln -sf busybox "$ctx/rootfs/bin/$applet"
    done
    [[ -L $ctx/rootfs/bin/sh ]] || ln -s busybox "$ctx/rootfs/bin/sh"
    cp "$here/Dockerfile" "$ctx/Dockerfile"

    for rev in "${todo[@]}"; do
        want=$(printf '%s %s\n' "$inputs_hash" "$rev" | sha256sum | cut -c1-32)
        log "building $IMAGE_NAME:$rev"
        if ! out=$(DOCKER_BUILDKIT=0 "$DOCKER" build --quiet \
            --build-arg "REVISION=$rev" \
            --label "$LABEL_KEY=$want" \
            --tag "$IMAGE_NAME:$rev" \
            "$ctx" 2>&1); then
            printf '%s\n' "$out" >&2
            die "docker build of $IMAGE_NAME:$rev failed"
        fi
    done
fi

for rev in "${revs[@]}"; do
    id=$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE_NAME:$rev")
    log "$IMAGE_NAME:$rev $id"
    echo "$IMAGE_NAME:$rev"
done
