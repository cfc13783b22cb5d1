#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real: Redis (and openssl) and PostgreSQL servers,
# Prometheus (a real server for the dashboard test, promtool for the alert rules), and the
# real Kubernetes node's container runtime (containerd, runc, CNI plugins, iptables).
# Only what is missing is installed; `apt-get update` runs once, and only when needed.
#
#   hack/system-deps.sh            everything make test needs: servers, the real node, image builds
#   hack/system-deps.sh --node     only the real node's runtime (make cluster-up NODE=real)
#   hack/system-deps.sh --images   only what builds the container images (make image, hack/images.py)
set -euo pipefail

need=()
test_deps() {
  command -v redis-server >/dev/null || need+=(redis-server)
  # The TLS tests' certificates (tests/fixtures/tls.py; Debian's redis-server is built with TLS).
  command -v openssl >/dev/null || need+=(openssl)
  [ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
  command -v runuser >/dev/null || need+=(util-linux)
  [ -x /usr/bin/time ] || need+=(time)
  { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
}
# The real Kubernetes node (hack/node.py): container runtime, CNI plugins, namespaces, iptables.
node_deps() {
  [ -x /usr/bin/containerd ] || need+=(containerd)
  [ -x /usr/sbin/runc ] || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  [ -x /usr/sbin/iptables ] || need+=(iptables)
  command -v nsenter >/dev/null || need+=(util-linux)
  command -v ip >/dev/null || need+=(iproute2)
  # The tests' forwarders from the node link to servers on loopback.
  command -v socat >/dev/null || need+=(socat)
}
# buildah runs every build step with runc (Debian's crun fails on cgroup v1 hosts); mmdebstrap makes the base.
image_deps() {
  command -v buildah >/dev/null || need+=(buildah)
  [ -x /usr/sbin/runc ] || need+=(runc)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
}

# make test runs the real node's tests, which build the images: it needs all three.
case "${1:-}" in
  "") test_deps; node_deps; image_deps ;;
  --node) node_deps ;;
  --images) image_deps ;;
  *) echo "usage: hack/system-deps.sh [--node | --images]" >&2; exit 2 ;;
esac

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
