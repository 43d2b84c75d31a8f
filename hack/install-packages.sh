#!/usr/bin/env bash
# Installs the Debian packages that the privileged and lab tests use. Idempotent:
# does nothing when every package is already installed. Needs root (CI is root).
set -euo pipefail

pkgs=(iproute2 nftables iptables iputils-ping wireguard-tools iperf3 conntrack procps)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "==> packages: all present (${pkgs[*]})"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "==> packages: missing ${missing[*]}; run this script as root to install them" >&2
  exit 1
fi
echo "==> packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: wireguard-tools would otherwise pull in a kernel image.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "==> packages: done"
