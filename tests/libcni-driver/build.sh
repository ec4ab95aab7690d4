#!/usr/bin/env bash
# Builds reef-libcni (main.go beside this script) against Debian's libcni sources,
# golang-github-appc-cni-dev, in GOPATH mode: no module download, nothing leaves the machine.
#   build.sh OUT    writes the binary to OUT; does nothing if OUT is newer than main.go
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(realpath -m "${1:?usage: build.sh OUT}")
gopath_libcni=/usr/share/gocode/src/github.com/containernetworking/cni/libcni
if ! command -v go >/dev/null || [ ! -d "$gopath_libcni" ]; then
  echo "build.sh: needs Debian's golang-go and golang-github-appc-cni-dev (.ci/run installs them)" >&2
  exit 1
fi
if [ -x "$out" ] && [ "$out" -nt "$here/main.go" ] && [ "$out" -nt "$here/build.sh" ]; then
  exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/src/reef-libcni" "$(dirname "$out")"
cp "$here/main.go" "$scratch/src/reef-libcni/"
cd "$scratch/src/reef-libcni"
GO111MODULE=off GOPATH="$scratch:/usr/share/gocode" GOCACHE="$scratch/cache" go build -o "$out.tmp" .
mv "$out.tmp" "$out"
