#!/usr/bin/env bash
# Installs the public HTTP cache test suite (npm http-cache-tests, the suite behind
# cache-tests.fyi) into .tools/http-cache-tests for `python -m scripts.cache_tests`.
#
# Pinned to the newest version on the npm registry (0.4.5). The suite's repository has moved on
# since that release (more tests, a test-engine/ layout); scripts/cache_tests.py runs either, and
# takes --suite DIR for a checkout of the repository. Idempotent: skipped while the pinned
# version is installed. Needs Node >= 18 and npm (Debian's nodejs/npm when node is missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

version=0.4.5
dir=.tools/http-cache-tests
installed="$dir/node_modules/http-cache-tests/package.json"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi

if [ -f "$installed" ] && [ "$(node -p "require('./$installed').version")" = "$version" ]; then
    echo "50-cache-tests: http-cache-tests $version already in $dir, skipping"
    exit 0
fi

mkdir -p "$dir"
exec 9>"${TMPDIR:-/tmp}/tokencache-cache-tests-npm.lock"
flock -w 600 9
npm install --prefix "$dir" --no-save --no-audit --no-fund --ignore-scripts "http-cache-tests@$version"
echo "50-cache-tests: installed http-cache-tests $version into $dir"
