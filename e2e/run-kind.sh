#!/usr/bin/env bash
# The e2e tier on a throwaway kind cluster: create the cluster (1 control plane + 3 workers), build the
# operator image with Docker, load it into the nodes, install the chart, then `pytest -m e2e e2e/`.
#
# Needs: docker (a running engine), kind, kubectl, Go (to build the pinned helm), the project's
# virtualenv (bash .ci/setup.sh) or PYTHON pointing at an interpreter with the dev dependencies.
# KEEP_KIND=1 keeps the cluster afterwards; KIND_CLUSTER names it (default rmsg-e2e).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-rmsg-e2e}"
IMAGE_REPO=redis-messaging-operator
IMAGE_TAG=e2e
REDIS_IMAGE="${REDIS_IMAGE:-redis:8.0}"  # the CRD's default image
RELEASE=redis-messaging-operator
OPERATOR_NS=redis-messaging
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
log() { printf '\n== %s\n' "$*"; }

for tool in docker kind kubectl go; do
  command -v "$tool" >/dev/null || { echo "e2e/run-kind.sh needs $tool on PATH"; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "e2e/run-kind.sh needs a running Docker engine"; exit 1; }

HELM=$(bash charts/build-helm.sh | tail -n 1)
work=$(mktemp -d)
export E2E_KUBECONFIG="$work/kubeconfig"

cleanup() {
  if [ "${KEEP_KIND:-0}" = 1 ]; then
    echo "KEEP_KIND=1: cluster $CLUSTER kept; kubeconfig: $E2E_KUBECONFIG"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

log "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config e2e/kind-config.yaml --wait 180s
fi
kind get kubeconfig --name "$CLUSTER" >"$E2E_KUBECONFIG"

log "operator image $IMAGE_REPO:$IMAGE_TAG"
docker build --build-arg "VERSION=$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2)" \
  -t "$IMAGE_REPO:$IMAGE_TAG" .
kind load docker-image "$IMAGE_REPO:$IMAGE_TAG" --name "$CLUSTER"
# The redis image once into every node, instead of one pull per pod.
docker pull -q "$REDIS_IMAGE" >/dev/null && kind load docker-image "$REDIS_IMAGE" --name "$CLUSTER"

log "helm install"
"$HELM" upgrade --install "$RELEASE" charts/redis-messaging-operator --kubeconfig "$E2E_KUBECONFIG" \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
  --wait --timeout 180s

log "pytest -m e2e"
export E2E_OPERATOR_NAMESPACE="$OPERATOR_NS" E2E_OPERATOR_RELEASE="$RELEASE" E2E_REDIS_IMAGE="$REDIS_IMAGE"
"$PYTHON" -m pytest -m e2e e2e/ -p no:cacheprovider "$@"
