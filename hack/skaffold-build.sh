#!/usr/bin/env bash
# skaffold's custom builder for the test cluster's real node (`skaffold dev -p node`): no Docker
# daemon and no registry here. Builds the DEV_RELOAD image with buildah (hack/images.py --dev),
# loads it into the node's containerd and tags it as the reference skaffold asked for ($IMAGE).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${IMAGE:?skaffold sets IMAGE to the reference to build}"
state=${STALK_CLUSTER_DIR:-.cluster}
socket=$state/node/containerd/containerd.sock
[ -S "$socket" ] || { echo "skaffold-build: no real node in $state (make cluster-up NODE=real, or set STALK_CLUSTER_DIR)" >&2; exit 1; }

out=$(python3 hack/images.py --dev --only stalk)
echo "$out"
read -r _ built archive < <(awk '$1 == "stalk-dev"' <<<"$out")
[ -n "${archive:-}" ] || { echo "skaffold-build: hack/images.py printed no stalk-dev image" >&2; exit 1; }
python3 hack/cluster.py load --state-dir "$state" "$archive"

# The kubelet asks containerd for the normalised name: `stalk:tag` is docker.io/library/stalk:tag.
name=${IMAGE%:*}
case "$name" in
  */*) first=${name%%/*}; case "$first" in *.*|*:*|localhost) ;; *) name=docker.io/$name ;; esac ;;
  *) name=docker.io/library/$name ;;
esac
ctr --address "$socket" --namespace k8s.io images tag --force "$built" "$name:${IMAGE##*:}" >/dev/null
echo "skaffold-build: $built is $name:${IMAGE##*:} on the node"
