#!/usr/bin/env bash
# `make test`: the whole suite, with nothing installed by hand.
#
# The binaries built from Go modules (Kubernetes, etcd, kwok, CoreDNS, helm, skaffold) and the
# images take most of an hour of CPU from nothing on 2 cores. They build in the background,
# niced, from the start, so they overlap with the virtualenv and every test that needs neither;
# the tests that need them run last and wait for the build first (tests/fixtures/binaries.py).
# From the caches the background build ends within seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages first: the background build must not race apt for its lock.
hack/system-deps.sh

build=$PWD/.cluster/test-bins
mkdir -p .cluster
rm -f "$build.rc" "$build.pid"
if command -v go >/dev/null; then
  # Its own session, so it can be stopped as a whole when the tests end early.
  setsid bash -c '
    echo $$ > "$1.pid"
    nice -n 10 make --no-print-directory cluster-bins chart-bins tools-bins
    rc=$?
    # Warm the image cache too; the tests that use the images build them again from it and
    # report their own failure.
    [ $rc -ne 0 ] || nice -n 10 python3 hack/images.py >/dev/null || echo "test.sh: hack/images.py failed; the image tests will say why"
    echo $rc > "$1.rc"' _ "$build" > "$build.log" 2>&1 < /dev/null &
  trap 'kill -- "-$(cat "$build.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
  echo "make test: building the Kubernetes, chart and skaffold binaries and the images in the background (log: .cluster/test-bins.log)"
  export STALK_BINARIES_BUILD=$build
else
  echo "make test: no Go toolchain; the Kubernetes, chart and skaffold tests need binaries built from Go modules"
fi

make --no-print-directory venv
.venv/bin/python -m pytest "$@"
