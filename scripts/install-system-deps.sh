#!/usr/bin/env bash
# System packages the controller needs for the test bed and the tests (Debian 12 / Ubuntu).
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

packages=(
  podman runc netavark aardvark-dns uidmap slirp4netns  # test-bed hosts as podman containers
  iptables                                                 # netavark sets up the bed network with it
  debootstrap                                              # the test bed's base image
  openssh-client curl ca-certificates git make             # controller tools
  python3-venv                                             # the sciplat venv
  postgresql-client                                        # integration tests speak to PostgreSQL
  prometheus prometheus-alertmanager                       # promtool/amtool check the alert rules
  chromium                                                 # tests/e2e: Playwright drives Debian's browser
)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
echo "system packages: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system packages: done"
