#!/usr/bin/env bash
# Installs the real OAuth2 authorization server the tests run against (npm oidc-provider,
# pinned by tests/oauth/package-lock.json) into tests/oauth/node_modules.
#
# Idempotent: after a successful `npm ci` the lock file's sha256 is stamped into
# node_modules; the step is skipped while that stamp matches the lock. A lock (flock)
# keeps two test runs in one tree from installing at the same time. Needs Node >= 20
# and npm; installs Debian's nodejs/npm only when node is missing altogether.
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=tests/oauth
stamp="$dir/node_modules/.tokencache-lock.sha256"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
    echo "20-oauth-server: Node >= 20 is needed for oidc-provider, found $(node --version)" >&2
    exit 1
fi

exec 9>"${TMPDIR:-/tmp}/tokencache-oauth-npm.lock"
flock -w 600 9

want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -f "$dir/node_modules/oidc-provider/package.json" ]; then
    echo "20-oauth-server: tests/oauth/node_modules matches the lock, skipping"
    exit 0
fi

npm ci --prefix "$dir" --no-audit --no-fund --ignore-scripts
echo "$want" >"$stamp"
echo "20-oauth-server: installed oidc-provider $(node -p "require('./$dir/node_modules/oidc-provider/package.json').version")"
