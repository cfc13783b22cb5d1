#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus and promtool) when missing: the alert-rule
# tests run `promtool check rules` / `promtool test rules`, and the dashboard test runs a real
# Prometheus on a free loopback port. Debian's service is stopped: the tests start their own.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian package: prometheus — install it (sudo apt-get install --no-install-recommends prometheus) or run as root" >&2
  exit 1
fi
echo "installing Debian package: prometheus"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a fresh machine; update only when the package is unknown.
apt-cache show prometheus >/dev/null 2>&1 || apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
(service prometheus stop || true) >/dev/null 2>&1
