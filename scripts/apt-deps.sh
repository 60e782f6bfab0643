#!/bin/bash
# Installs the Debian packages the build, tests and benchmark need, only
# when one is missing (so a machine that has them never touches the network).
# libc6-dev: the C headers, and libc.a for the static engine-mode client
# (native/client.c); gcc only recommends it. strace: the netlink wire proof
# (test/integration/netlink-wire.test.ts) captures what iproute2 and our
# plugins send.
set -euo pipefail
PKGS=(gcc libc6-dev procps util-linux strace iproute2 iptables nftables iputils-ping dnsmasq-base golang-github-containernetworking-plugin-dnsname containernetworking-plugins golang-go golang-github-appc-cni-dev podman runc busybox-static containerd)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
