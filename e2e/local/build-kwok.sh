#!/usr/bin/env bash
# Builds kwok (simulated nodes and pods for the local cluster of e2e/local) from its Go module with the
# machine's Go toolchain, and caches it outside the repository, keyed by version.
#
# Usage: e2e/local/build-kwok.sh         Prints the path of the kwok binary on its last line.
#
# sigs.k8s.io/kwok has no replace directives, so `go install module/cmd@version` builds it as released.
# v0.8.x needs Go >= 1.26 (v0.7.x: 1.24). The version ldflag is the one kwok's Makefile sets, else
# `kwok --version` says an empty version.
set -euo pipefail

KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE="${RMSG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-messaging-operator}"
DEST="$CACHE/kwok-$KWOK_VERSION"
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { printf '[kwok] %s\n' "$*" >&2; }

if [ -x "$DEST/kwok" ]; then
  echo "$DEST/kwok"
  exit 0
fi
command -v go >/dev/null || { log "Go is needed to build kwok $KWOK_VERSION"; exit 1; }

log "building kwok $KWOK_VERSION with $(go version | awk '{print $3}')"
mkdir -p "$DEST"
tmp=$(mktemp -d "$DEST/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" go install -trimpath \
  -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
  "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
mv "$tmp/kwok" "$DEST/kwok"
echo "$DEST/kwok"
