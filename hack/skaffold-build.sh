#!/usr/bin/env bash
# skaffold's custom builder for the test cluster's real node (`skaffold dev -p node
# --default-repo=198.18.0.2:5000`): no Docker daemon here. hack/images.py builds the DEV_RELOAD
# image with buildah; it is pushed to the node's own registry ($IMAGE names it there), from
# which skaffold reads its digest and the node's containerd pulls it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${IMAGE:?skaffold sets IMAGE to the reference to build}"
[ "${PUSH_IMAGE:-false}" = true ] || { echo "skaffold-build: the node profile pushes to the node's registry (build.local.push)" >&2; exit 1; }
out=$(python3 hack/images.py --dev --only stalk)
echo "$out"
built=$(awk '$1 == "stalk-dev" {print $2}' <<<"$out")
[ -n "$built" ] || { echo "skaffold-build: hack/images.py printed no stalk-dev image" >&2; exit 1; }
# The node's registry speaks plain HTTP, on the node's own link only.
buildah push --quiet --tls-verify=false "$built" "docker://$IMAGE"
echo "skaffold-build: pushed $built as $IMAGE"
