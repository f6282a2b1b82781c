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
"$(dirname "$0")/apt-install-missing.sh" install-image-tools "${need[@]}"
echo "install-image-tools: ok ($(buildah --version), $(runc --version | head -n1))"
