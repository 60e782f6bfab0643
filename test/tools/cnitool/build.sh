#!/bin/bash
# Builds the cnitool test driver offline, in GOPATH mode, against the libcni
# source Debian installs under /usr/share/gocode (golang-github-appc-cni-dev).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(realpath -m "${1:-$here/cnitool}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/cnitool"
cp "$here/main.go" "$work/src/cnitool/"
export GO111MODULE=off GOFLAGS= GOPATH="$work:/usr/share/gocode" GOCACHE="$work/cache" HOME="${HOME:-$work}" CGO_ENABLED=0
cd "$work/src/cnitool"
go build -o "$out" .
