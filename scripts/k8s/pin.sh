#!/usr/bin/env bash
# Writes scripts/k8s/vMAJOR.MINOR/go.mod (+ go.sum) pinning one Kubernetes
# release: k8s.io/kubernetes at VERSION, every staging module (k8s.io/api,
# k8s.io/apiserver, ...) replaced by its published v0.MINOR.PATCH, and the
# commands scripts/test-cluster.sh builds as `tool` lines.
#
#   scripts/k8s/pin.sh 1.37.2
#
# Run it only to move to another release; the test cluster reads the result.
set -euo pipefail
v=${1:?usage: $0 VERSION (for example 1.37.2)}
minor=${v%.*}
dir="$(cd "$(dirname "$0")" && pwd)/v$minor"
src=$(cd "$(mktemp -d)" && go mod download -json "k8s.io/kubernetes@v$v" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
go_line=$(grep -m1 '^go ' "$src/go.mod")
godebug_line=$(grep -m1 '^godebug ' "$src/go.mod" || true)  # the GODEBUG defaults Kubernetes ships with
mkdir -p "$dir"
{
  echo "// Kubernetes $minor for the test cluster; written by scripts/k8s/pin.sh $v."
  echo "module idplane.dev/test-cluster/k8s-$minor"
  echo
  echo "$go_line"
  [ -z "$godebug_line" ] || { echo; echo "$godebug_line"; }
  echo
  echo "require k8s.io/kubernetes v$v"
  echo
  echo "tool ("
  echo "	k8s.io/kubernetes/cmd/kube-apiserver"
  echo "	k8s.io/kubernetes/cmd/kubectl"
  echo ")"
  echo
  echo "replace ("
  grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$src/go.mod" |
    awk -v s="v0.${v#1.}" '{printf "\t%s => %s %s\n", $1, $1, s}'
  echo ")"
} >"$dir/go.mod"
rm -f "$dir/go.sum"
(cd "$dir" && GOFLAGS=-mod=mod go mod tidy)
echo "pinned Kubernetes $v in $dir" >&2
