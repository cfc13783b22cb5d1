#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real: Redis and PostgreSQL servers, and
# Prometheus (a real server for the dashboard test, promtool for the alert rules).
# Only what is missing is installed; `apt-get update` runs once, and only when needed.
#
#   hack/system-deps.sh            the test suite's servers (make test)
#   hack/system-deps.sh --images   what builds the container images instead (make image, hack/images.py)
set -euo pipefail

need=()
test_deps() {
  command -v redis-server >/dev/null || need+=(redis-server)
  [ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
  command -v runuser >/dev/null || need+=(util-linux)
  [ -x /usr/bin/time ] || need+=(time)
  { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
}
# buildah runs every build step with runc (Debian's crun fails on cgroup v1 hosts); mmdebstrap makes the base.
image_deps() {
  command -v buildah >/dev/null || need+=(buildah)
  [ -x /usr/sbin/runc ] || need+=(runc)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
}

case "${1:-}" in
  "") test_deps ;;
  --images) image_deps ;;
  *) echo "usage: hack/system-deps.sh [--images]" >&2; exit 2 ;;
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
