#!/usr/bin/env bash
# Sets up everything the project needs on a fresh Debian machine with Go and Python 3.11+:
# Redis (Debian's redis-server, redis-sentinel, redis-tools; and one more engine of the matrix, Redis 8
# or Valkey, built from Debian's source package by .ci/build-engine.sh), the control-plane binaries of the
# `kube` tier and the monitoring binaries of the `redis` tier (redis_exporter, promtool, prometheus),
# built from Go modules and cached outside the repo, and a virtualenv in .venv with the package and its
# development tools. Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
export RMSG_CACHE="${RMSG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-messaging-operator}"
mkdir -p "$RMSG_CACHE"
step() { printf '\n== %s\n' "$*"; }

step "Debian packages"
missing=()
# make .. xz-utils: the engines of the matrix, built from their source packages (.ci/build-engine.sh)
for pkg in redis-server redis-sentinel redis-tools iproute2 openssl make gcc libc6-dev libssl-dev pkg-config \
           xz-utils debian-archive-keyring; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package's own redis-server service is not used; the tests start their own processes.
  $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
redis-server --version

step "control plane (etcd, kube-apiserver, kube-controller-manager)"
command -v go >/dev/null || { echo "Go is needed to build the control plane (or set KUBEBUILDER_ASSETS)"; exit 1; }
if [ -z "${KUBEBUILDER_ASSETS:-}" ]; then
  bash .ci/control-plane.sh etcd kube-apiserver kube-controller-manager | tail -n 1
fi

# The e2e tier's local cluster (e2e/local) needs Linux and root; elsewhere it is skipped with the reason.
if [ "$(uname -s)" = Linux ] && [ "$(id -u)" -eq 0 ]; then
  step "local cluster of the e2e tier (kube-scheduler, kwok$(command -v kubectl >/dev/null || echo ', kubectl'))"
  components=(etcd kube-apiserver kube-controller-manager kube-scheduler)
  command -v kubectl >/dev/null || components+=(kubectl)
  bash .ci/control-plane.sh "${components[@]}" | tail -n 1
  bash e2e/local/build-kwok.sh | tail -n 1
fi

step "helm (charts/build-helm.sh)"
bash charts/build-helm.sh | tail -n 1

step "monitoring (.ci/build-monitoring.sh: redis_exporter, promtool, prometheus)"
bash .ci/build-monitoring.sh | tail -n 1

# The default engine is Debian's Redis 7.0 above. RMSG_ENGINES (comma-separated, or "all") names the other
# engines the matrix set of the redis tier runs on (.ci/test); by default the one of this commit's
# rotation (`.ci/build-engine.sh ci`). Each is built once and cached. Whatever they name, Redis 8.0 is
# built (the engine of the default image, redis:8.0, which the e2e tier and the demo run) and Valkey 9.1
# (the redis tier's tests of the engine's own slot migration run on it:
# tests/redis/test_cluster_atomic_migration.py).
engines=${RMSG_ENGINES:-$(bash .ci/build-engine.sh ci)}
[ "$engines" != all ] || engines=$(bash .ci/build-engine.sh list | paste -sd, -)
for engine in $(printf '%s\n' ${engines//,/ } redis-8.0 valkey-9.1 | awk '!seen[$0]++'); do
  [ "$engine" != none ] || continue
  step "engine $engine (.ci/build-engine.sh)"
  bash .ci/build-engine.sh "$engine" | tail -n 1
done

step "Python virtualenv (.venv)"
# The versions of .ci/constraints.txt: what the tiers last passed with, not whatever is newest today.
stamp=".venv/.installed-$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv .venv
  PIP_CACHE_DIR="$RMSG_CACHE/pip" .venv/bin/pip install -q --upgrade pip
  PIP_CACHE_DIR="$RMSG_CACHE/pip" .venv/bin/pip install -q -c .ci/constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/redis-messaging --help >/dev/null && echo "redis-messaging installed in .venv"
