#!/usr/bin/env bash
# Builds the control-plane binaries the `kube` tier runs (etcd, kube-apiserver, and on request
# kube-controller-manager, kube-scheduler, kubectl) from their Go modules with the machine's Go
# toolchain, and caches them outside the repository, keyed by version.
#
# Usage: .ci/control-plane.sh [component ...]    (default: etcd kube-apiserver)
# Prints the directory that holds the binaries (suitable for KUBEBUILDER_ASSETS) on its last line.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod requires the staging modules at v0.0.0 with
# `=> ./staging/src/...` replaces. A small wrapper module requires k8s.io/kubernetes and replaces
# every staging module with its published v0.X.Y version. etcd's server module has replace
# directives of its own, so it gets a wrapper module too.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
CACHE="${RMSG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-messaging-operator}"
ASSETS="$CACHE/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-buildvcs=false -mod=mod"
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kube-apiserver)

log() { printf '[control-plane] %s\n' "$*" >&2; }
mkdir -p "$ASSETS"

build_etcd() {
  local work="$CACHE/control-plane/src/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  cat >"$work/go.mod" <<MOD
module local/etcdwrapper

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  log "building etcd $ETCD_VERSION"
  (cd "$work" && go build -trimpath -ldflags='-s -w' -o "$ASSETS/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$ASSETS/etcd.tmp" "$ASSETS/etcd"
}

k8s_wrapper() {
  local work="$CACHE/control-plane/src/k8s-$K8S_VERSION"
  if [ ! -f "$work/go.mod" ]; then
    mkdir -p "$work"
    local gomod minor staging
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    minor=${K8S_VERSION#v1.}
    staging=$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/' "$gomod" | awk '{print $1}' | sort -u)
    [ -n "$staging" ] || { log "no staging modules found in $gomod"; exit 1; }
    {
      echo "module local/k8swrapper"
      echo
      echo "go 1.24"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      for m in $staging; do echo "replace $m => $m v0.$minor"; done
    } >"$work/go.mod.tmp"
    mv "$work/go.mod.tmp" "$work/go.mod"
    log "wrapper module with $(echo "$staging" | wc -l) staging replaces"
  fi
  echo "$work"
}

build_k8s() {
  local name=$1 work minor major
  work=$(k8s_wrapper)
  major=1; minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  log "building $name $K8S_VERSION"
  (cd "$work" && go build -trimpath -ldflags="$ld" -o "$ASSETS/$name.tmp" "k8s.io/kubernetes/cmd/$name")
  mv "$ASSETS/$name.tmp" "$ASSETS/$name"
}

for c in "${components[@]}"; do
  if [ -x "$ASSETS/$c" ]; then log "$c cached"; continue; fi
  case "$c" in
    etcd) build_etcd ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl) build_k8s "$c" ;;
    *) log "unknown component $c"; exit 2 ;;
  esac
done
echo "$ASSETS"
