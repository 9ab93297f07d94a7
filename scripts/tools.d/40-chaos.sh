#!/usr/bin/env bash
# The fault suite (tests/test_fault_*.py, make chaos) builds network namespaces with `ip netns`,
# veth pairs and a bridge, and rate-limits with `tc ... tbf`: all from iproute2. Idempotent.
set -euo pipefail
if command -v ip >/dev/null && command -v tc >/dev/null; then
  exit 0
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y iproute2
