#!/usr/bin/env bash
# Build one group of pinned test binaries from its wrapper module and link them
# into OUTDIR (normally .cluster/bin).
#
#   hack/tools/build.sh GROUP OUTDIR        GROUP: kube | etcd | kwok | helm | skaffold | coredns | registry | pause
#
# The binaries live in a cache OUTSIDE the repository,
#   ${STALK_CACHE_DIR:-$HOME/.cache/stalk}/bin/<group>-<version>-<hash>/
# where <hash> covers the wrapper's go.mod/go.sum, the Go version, CGO_ENABLED
# and the linker flags. A fresh clone on the same machine therefore finds them, and
# nothing is rebuilt until a pin changes. GOCACHE and GOMODCACHE stay at Go's
# defaults so that even a rebuild with other flags mostly hits the build cache.
set -euo pipefail

group=${1:?usage: build.sh GROUP OUTDIR}
outdir=${2:?usage: build.sh GROUP OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

# A go line newer than this toolchain must fail loudly, not trigger a toolchain download.
export GOTOOLCHAIN=local
# Binaries only; VCS stamping would read the stalk repository, which is meaningless here.
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# Static binaries, as the upstream releases ship them: no C compiler needed, no libc coupling.
export CGO_ENABLED=0

# Release dates from the module proxy make the stamped build date reproducible.
release_time() { go list -m -json "$1" | sed -n 's/.*"Time": "\(.*\)".*/\1/p'; }

case "$group" in
kube)
    version=$KUBE_VERSION
    minor=$(echo "$version" | cut -d. -f2)
    date=$(cd "$here/kube" && release_time "k8s.io/kubernetes@$version")
    [ -n "$date" ] || { echo "build.sh: cannot read the release date of k8s.io/kubernetes@$version" >&2; exit 1; }
    ldflags=""
    # kube-* binaries report component-base's version, kubectl's client side client-go's.
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit= -X $pkg.buildDate=$date"
    done
    # kubelet and kube-proxy serve the real node (NODE=real); one build shares their packages.
    pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
          k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
          k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy"
    bins="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"
    ;;
etcd)
    version=$ETCD_VERSION
    ldflags="-X go.etcd.io/etcd/api/v3/version.GitSHA=$version"
    # The main package is the module root, so `go build` would name it "server".
    pkgs="go.etcd.io/etcd/server/v3"
    bins="etcd"
    ;;
kwok)
    version=$KWOK_VERSION
    ldflags="-X sigs.k8s.io/kwok/pkg/consts.Version=${version#v}"
    pkgs="sigs.k8s.io/kwok/cmd/kwok"
    bins="kwok"
    # kwok alone ships no behaviour: it needs "stages" (how nodes and pods change
    # status). These are the defaults kwokctl applies, taken from the same pinned
    # module and shipped next to the binary as kwok-stages.yaml (kwok --config).
    stages="kustomize/stage/node/fast/node-initialize.yaml
            kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
            kustomize/stage/pod/fast/pod-ready.yaml
            kustomize/stage/pod/fast/pod-complete.yaml
            kustomize/stage/pod/fast/pod-delete.yaml"
    extra_files="kwok-stages.yaml"
    ;;
helm)
    version=$HELM_VERSION
    major=$(echo "$version" | cut -d. -f1)
    ldflags="-X helm.sh/helm/$major/internal/version.version=$version -X helm.sh/helm/$major/internal/version.gitTreeState=clean"
    pkgs="helm.sh/helm/$major/cmd/helm"
    bins="helm"
    ;;
skaffold)
    version=$SKAFFOLD_VERSION
    ldflags="-X github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version.version=$version"
    pkgs="github.com/GoogleContainerTools/skaffold/v2/cmd/skaffold"
    bins="skaffold"
    ;;
coredns)
    version=$COREDNS_VERSION
    ldflags=""
    pkgs="github.com/coredns/coredns"
    bins="coredns"
    ;;
registry)
    # go-containerregistry's in-memory registry behind our own main (its cmd/registry listens
    # on localhost only): a module of ours, its version pinned in hack/tools/registry/go.mod.
    version=v1
    ldflags=""
    pkgs="."
    bins="registry"
    ;;
pause)
    # The pod sandbox's one process (no image can be pulled): our own module, no dependencies.
    version=v1
    ldflags=""
    pkgs="."
    bins="pause"
    ;;
*)
    echo "build.sh: unknown group '$group' (want kube, etcd, kwok, helm, skaffold, coredns, registry or pause)" >&2
    exit 2
    ;;
esac
ldflags="-s -w $ldflags"

stages=${stages:-}
extra_files=${extra_files:-}
hash=$( { cat "$here/$group/go.mod"; cat "$here/$group/go.sum" "$here/$group"/*.go 2>/dev/null || true; go version; echo "CGO_ENABLED=$CGO_ENABLED $ldflags" $stages; } |
        sha256sum | cut -c1-12)
cache_root=${STALK_CACHE_DIR:-$HOME/.cache/stalk}/bin
cache=$cache_root/$group-$version-$hash
mkdir -p "$cache_root"

# Two clones building at once must not clobber each other: one builds, the other waits.
exec 9>"$cache.lock"
if [ ! -e "$cache/.complete" ] && ! flock -n 9; then
    echo "build.sh: $group $version is being built by another process; waiting for it"
    flock 9
fi

if [ -e "$cache/.complete" ]; then
    echo "build.sh: $group $version cached in $cache"
else
    echo "build.sh: building $group $version ($bins) into $cache"
    echo "build.sh: a cold build compiles for many minutes (kube: ~12 min on 2 cores); progress every minute"
    tmp=$cache.tmp
    rm -rf "$tmp" && mkdir -p "$tmp"
    timer=()
    [ -x /usr/bin/time ] && timer=(/usr/bin/time -v -o "$tmp/build-time.txt")
    start=$(date +%s)
    # go build is silent until it finishes; say every minute that it still works.
    (while sleep 60; do echo "build.sh: still building $group $version ($(( $(date +%s) - start ))s so far)"; done) &
    ticker=$!
    trap 'kill $ticker 2>/dev/null || true' EXIT
    # One go build for all of a group's binaries, so shared packages compile once.
    # shellcheck disable=SC2086
    (cd "$here/$group" && "${timer[@]}" go build -trimpath -ldflags "$ldflags" -o "$tmp/" $pkgs)
    if [ "$group" = etcd ]; then
        mv "$tmp/server" "$tmp/etcd"
    fi
    for b in $bins; do
        [ -x "$tmp/$b" ] || { echo "build.sh: go build did not produce $b" >&2; exit 1; }
    done
    if [ -n "$stages" ]; then
        src=$(cd "$here/$group" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
        for f in $stages; do echo "---"; cat "$src/$f"; done > "$tmp/kwok-stages.yaml"
    fi
    kill $ticker 2>/dev/null || true
    echo "build.sh: built $group $version in $(( $(date +%s) - start ))s"
    if [ -e "$tmp/build-time.txt" ]; then
        grep -E 'Elapsed|Maximum resident' "$tmp/build-time.txt" | sed 's/^\s*/build.sh:   /'
    fi
    touch "$tmp/.complete"
    rm -rf "$cache" && mv "$tmp" "$cache"
fi

mkdir -p "$outdir"
for b in $bins $extra_files; do
    ln -sfn "$cache/$b" "$outdir/$b"
done
