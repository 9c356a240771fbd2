#!/usr/bin/env bash
# The e2e tier on the local cluster of e2e/local: no Docker, no kind. etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, the operator and Redis are real; kwok and the pod runner
# play the nodes and the kubelet (see e2e/local/localcluster.py).
#
# Usage: bash .ci/local-cluster.sh [pytest args]   build what is missing, then `pytest -m e2e e2e/`
#        bash .ci/local-cluster.sh up              bring a cluster up with the operator, print its
#                                                  KUBECONFIG, and wait (Ctrl-C stops everything)
#
# Needs: Linux, root (network and mount namespaces, a bridge), Go (to build the binaries once; they
# are cached in ${RMSG_CACHE:-~/.cache/redis-messaging-operator}), util-linux, iproute2, Debian's
# redis-server/redis-sentinel/redis-tools, and the project's Python environment (.venv from
# .ci/setup.sh, or PYTHON=...; the operator image's pods run .venv's interpreter, else that of the
# virtualenv PYTHON belongs to). kubectl is built too when it is not on PATH. A cluster killed
# without stopping is cleaned up by the next one (e2e/local/runrecord.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
log() { printf '\n== %s\n' "$*"; }

[ "$(uname -s)" = Linux ] || { echo "the local cluster needs Linux"; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "the local cluster needs root (network and mount namespaces, a bridge)"; exit 1; }
for tool in unshare nsenter setpriv ip mount redis-server redis-sentinel redis-cli; do
  command -v "$tool" >/dev/null || { echo ".ci/local-cluster.sh needs $tool on PATH"; exit 1; }
done

log "control plane, kube-scheduler, kwok, helm (cached builds)"
components=(etcd kube-apiserver kube-controller-manager kube-scheduler)
command -v kubectl >/dev/null || components+=(kubectl)
assets=$(bash .ci/control-plane.sh "${components[@]}" | tail -n 1)
command -v kubectl >/dev/null || export PATH="$assets:$PATH"
bash e2e/local/build-kwok.sh | tail -n 1
bash charts/build-helm.sh | tail -n 1

if [ "${1:-}" = up ]; then
  log "local cluster (Ctrl-C stops it)"
  exec "$PYTHON" e2e/local/localcluster.py
fi

log "pytest -m e2e e2e/ on the local cluster"
export E2E_BACKEND=local
exec "$PYTHON" -m pytest -m e2e e2e/ -p no:cacheprovider "$@"
