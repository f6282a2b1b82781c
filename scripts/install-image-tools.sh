#!/usr/bin/env bash
# Installs the Debian packages `make image` needs: mmdebstrap makes the base from
# Debian's packages, buildah builds and stores the image, runc runs it (crun fails
# on hosts with hybrid cgroups), uidmap for buildah's user namespaces. Idempotent:
# a second run that finds everything present does nothing and touches no network.
set -euo pipefail
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v buildah    >/dev/null || need+=(buildah)
command -v runc       >/dev/null || need+=(runc)
command -v newuidmap  >/dev/null || need+=(uidmap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-image-tools: missing ${need[*]}; run as root or: apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "install-image-tools: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "install-image-tools: ok ($(buildah --version), $(runc --version | head -n1))"
