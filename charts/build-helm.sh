#!/usr/bin/env bash
# Builds the Helm client the chart tests run (`helm lint`, `helm template`, and in the kube tier
# `helm install/upgrade/uninstall`) from its Go module with the machine's Go toolchain, and caches it
# outside the repository, keyed by version.
#
# Usage: charts/build-helm.sh         Prints the path of the helm binary on its last line.
#
# helm.sh/helm/v3 has no replace directives in its go.mod, so `go install module/cmd@version` builds
# it as released. The ldflags are the ones of Helm's Makefile: the version `helm version` reports, and
# the Kubernetes version `helm template`/`helm lint` assume (.Capabilities.KubeVersion and the
# deprecated-API check), taken from the k8s.io/client-go that this Helm release requires.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${RMSG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-messaging-operator}"
DEST="$CACHE/helm-$HELM_VERSION"
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { printf '[helm] %s\n' "$*" >&2; }

if [ -x "$DEST/helm" ] && "$DEST/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION+"; then
  echo "$DEST/helm"
  exit 0
fi
command -v go >/dev/null || { log "Go is needed to build helm $HELM_VERSION"; exit 1; }

gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")   # e.g. v0.35.1
[ -n "$client_go" ] || { log "k8s.io/client-go not found in $gomod"; exit 1; }
k8s_major=$(( $(echo "${client_go#v}" | cut -d. -f1) + 1 ))
k8s_minor=$(echo "${client_go#v}" | cut -d. -f2)

pkg=helm.sh/helm/v3
ld="-s -w -X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.metadata=source"
ld="$ld -X $pkg/internal/version.gitTreeState=clean"
for p in pkg/lint/rules pkg/chartutil; do
  ld="$ld -X $pkg/$p.k8sVersionMajor=$k8s_major -X $pkg/$p.k8sVersionMinor=$k8s_minor"
done

log "building helm $HELM_VERSION (Kubernetes $k8s_major.$k8s_minor client libraries)"
mkdir -p "$DEST"
tmp=$(mktemp -d "$DEST/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" go install -trimpath -ldflags="$ld" "$pkg/cmd/helm@$HELM_VERSION"
mv "$tmp/helm" "$DEST/helm"
"$DEST/helm" version --short >&2
echo "$DEST/helm"
