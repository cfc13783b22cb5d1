#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real: Redis and PostgreSQL servers,
# Prometheus (a real server for the dashboard test, promtool for the alert rules), and the
# real Kubernetes node's container runtime (containerd, runc, CNI plugins, iptables).
# Only what is missing is installed; `apt-get update` runs once, and only when needed.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v runuser >/dev/null || need+=(util-linux)
[ -x /usr/bin/time ] || need+=(time)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
# The real Kubernetes node (hack/node.py): container runtime, CNI plugins, namespaces, iptables.
[ -x /usr/bin/containerd ] || need+=(containerd)
[ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -x /usr/sbin/iptables ] || need+=(iptables)
command -v nsenter >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} — install them (sudo apt-get install ${need[*]}) or run as root" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged servers as services; the tests start their own on free ports.
(service redis-server stop || true) >/dev/null 2>&1
(service postgresql stop || true) >/dev/null 2>&1
(service prometheus stop || true) >/dev/null 2>&1
(service containerd stop || true) >/dev/null 2>&1
