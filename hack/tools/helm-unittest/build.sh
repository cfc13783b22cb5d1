#!/usr/bin/env bash
# Build the helm-unittest plugin (its `untt` binary) from the pinned wrapper module in this folder
# and install it as a Helm plugin into PLUGINDIR (normally .cluster/bin/helm-plugins/unittest).
#
#   hack/tools/helm-unittest/build.sh PLUGINDIR
#
# Same scheme as hack/tools/build.sh: the binary is cached outside the repository in
#   ${STALK_CACHE_DIR:-$HOME/.cache/stalk}/bin/helm-unittest-<version>-<hash>/
# (<hash> covers go.mod, go.sum and the Go version), so a fresh clone on the same machine
# builds nothing. Use it with:  HELM_PLUGINS=$(dirname PLUGINDIR) helm unittest charts/stalk
set -euo pipefail

plugindir=${1:?usage: build.sh PLUGINDIR}
here=$(cd "$(dirname "$0")" && pwd)
module=github.com/helm-unittest/helm-unittest

# A go line newer than this toolchain must fail loudly, not download a toolchain.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

version=$(cd "$here" && go list -m -f '{{.Version}}' "$module")
hash=$( { cat "$here/go.mod" "$here/go.sum"; go version; } | sha256sum | cut -c1-12)
cache_root=${STALK_CACHE_DIR:-$HOME/.cache/stalk}/bin
cache=$cache_root/helm-unittest-$version-$hash
mkdir -p "$cache_root"

exec 9>"$cache.lock"
if [ ! -e "$cache/.complete" ] && ! flock -n 9; then
    echo "helm-unittest/build.sh: $version is being built by another process; waiting for it"
    flock 9
fi

if [ -e "$cache/.complete" ]; then
    echo "helm-unittest/build.sh: helm-unittest $version cached in $cache"
else
    echo "helm-unittest/build.sh: building helm-unittest $version into $cache (go build prints nothing until done)"
    tmp=$cache.tmp
    rm -rf "$tmp" && mkdir -p "$tmp"
    start=$(date +%s)
    (cd "$here" && go build -trimpath -ldflags "-s -w" -o "$tmp/untt" "$module/cmd/helm-unittest")
    # The plugin manifest of the same module version, pointed at our binary.
    src=$(cd "$here" && go list -m -f '{{.Dir}}' "$module")
    sed -n '/^name:/p;/^version:/p;/^usage:/p;/^description:/p;/^ignoreFlags:/p' "$src/plugin.yaml" > "$tmp/plugin.yaml"
    echo 'command: "$HELM_PLUGIN_DIR/untt"' >> "$tmp/plugin.yaml"
    echo "helm-unittest/build.sh: built helm-unittest $version in $(( $(date +%s) - start ))s"
    touch "$tmp/.complete"
    rm -rf "$cache" && mv "$tmp" "$cache"
fi

# A plugin directory is a folder with plugin.yaml; link the cached one in.
mkdir -p "$(dirname "$plugindir")"
ln -sfn "$cache" "$plugindir"
