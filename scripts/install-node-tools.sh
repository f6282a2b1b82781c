#!/usr/bin/env bash
# Installs the Debian packages a real tenant node runs (vpnctl/lab/nodes.py):
# containerd and runc run the pods, containernetworking-plugins wires them (bridge,
# host-local, loopback, portmap), iptables and conntrack serve kube-proxy, and
# busybox-static and gcc make the local workload and pause images. Idempotent: a
# second run that finds everything present does nothing and touches no network.
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc       >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v iptables   >/dev/null || need+=(iptables)
command -v conntrack  >/dev/null || need+=(conntrack)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v gcc        >/dev/null || need+=(gcc)
command -v nsenter    >/dev/null || need+=(util-linux)
"$(dirname "$0")/apt-install-missing.sh" install-node-tools "${need[@]}"
# Each node runs its own containerd with its own /run/containerd (a private mount), so
# a host containerd.service, where systemd started one, is neither needed nor disturbed.
echo "install-node-tools: ok ($(containerd --version | cut -d' ' -f1,3), $(runc --version | head -n1))"
