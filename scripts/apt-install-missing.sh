#!/usr/bin/env bash
# apt-install-missing.sh WHO [PACKAGE...]: installs the Debian PACKAGEs (those the
# calling script WHO found missing) quietly, waiting up to 10 minutes for dpkg's lock.
# Needs root; without it, says what to install and fails. No PACKAGE: does nothing
# and touches no network.
set -euo pipefail
who=$1
shift
[ $# -gt 0 ] || exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "$who: missing $*; run as root or: apt-get install $*" >&2
  exit 1
fi
echo "$who: installing $*"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
