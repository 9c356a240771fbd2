#!/usr/bin/env bash
# Builds the monitoring binaries the monitoring tests run (tests/redis/test_monitoring_*.py): the
# redis_exporter the operator deploys as its sidecar, and Prometheus's promtool (`promtool check rules`,
# `promtool test rules` on the PrometheusRule the operator renders) and prometheus server, from their Go
# modules with the machine's Go toolchain, and caches them outside the repository, keyed by version.
#
# Usage: .ci/build-monitoring.sh        Prints the directory that holds the binaries on its last line.
#
# Neither module has replace directives, so `go install module/cmd@version` builds them as released.
# The ldflags set the versions the binaries report, as their release builds do (redis_exporter's
# Makefile, Prometheus's .promu.yml). Prometheus is built with `remove_all_sd` (only the static and file
# service discovery are left: no cloud SDKs, a third of the build), the server with Kubernetes service
# discovery added back (`enable_kubernetes_sd`: the local cluster's Prometheus discovers what
# ServiceMonitors select), and without `builtinassets` (no web UI; the API answers): nothing here
# needs more. Go module versions v0.3XX.Y of Prometheus are
# Prometheus 3.XX.Y.
#
# REDIS_EXPORTER_VERSION is the tag of the operator's default exporter image
# (operator/redis_messaging/api/models.py, Exporter.image): tests/unit/test_monitoring_binaries.py checks it.
set -euo pipefail

REDIS_EXPORTER_VERSION="${REDIS_EXPORTER_VERSION:-v1.97.0}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
CACHE="${RMSG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-messaging-operator}"
DEST="$CACHE/monitoring/redis_exporter-$REDIS_EXPORTER_VERSION-prometheus-$PROMETHEUS_VERSION"
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { printf '[monitoring] %s\n' "$*" >&2; }

# v0.316.0 -> 3.16.0
prom_release() { local minor=${1#v0.}; minor=${minor%%.*}; echo "3.$((10#${minor:1})).${1##*.}"; }
PROM_RELEASE=$(prom_release "$PROMETHEUS_VERSION")

mkdir -p "$DEST"
tmp=$(mktemp -d "$DEST/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
today=$(date -u +%Y%m%d-%H:%M:%S)

build() {  # build NAME PACKAGE@VERSION TAGS LDFLAGS
  local name=$1 pkg=$2 tags=$3 ld=$4 started recorded
  # The tags are part of the cache key (.NAME.tags); a build from before they were recorded had no
  # enable_* tags.
  recorded=$(cat "$DEST/.$name.tags" 2>/dev/null || echo "${tags%%,enable_*}")
  if [ -x "$DEST/$name" ] && [ "$recorded" = "$tags" ]; then log "$name cached"; return; fi
  command -v go >/dev/null || { log "Go is needed to build $name"; exit 1; }
  log "building $name ($pkg)"
  started=$(date +%s)
  GOBIN="$tmp" go install -trimpath -tags="$tags" -ldflags="$ld" "$pkg"
  mv "$tmp/$name" "$DEST/$name"
  printf '%s\n' "$tags" >"$DEST/.$name.tags"
  log "$name built in $(( $(date +%s) - started )) s"
}

build redis_exporter "github.com/oliver006/redis_exporter@$REDIS_EXPORTER_VERSION" "" \
  "-s -w -X main.BuildVersion=$REDIS_EXPORTER_VERSION -X main.BuildCommitSha=module -X main.BuildDate=$today"

v=github.com/prometheus/common/version
prom_ld="-s -w -X $v.Version=$PROM_RELEASE -X $v.Revision=module -X $v.Branch=module"
prom_ld="$prom_ld -X $v.BuildUser=redis-messaging-operator -X $v.BuildDate=$today"
build promtool "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" remove_all_sd "$prom_ld"
# the server with Kubernetes service discovery only: e2e/local/prometheus.py follows ServiceMonitors with it
build prometheus "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
  remove_all_sd,enable_kubernetes_sd "$prom_ld"

"$DEST/redis_exporter" -version 2>&1 | head -n 1 >&2
"$DEST/promtool" --version 2>&1 | head -n 1 >&2
"$DEST/prometheus" --version 2>&1 | head -n 1 >&2
echo "$DEST"
