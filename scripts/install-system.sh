#!/usr/bin/env bash
# Installs the Debian packages vpnctl's tests and lab run for real. Idempotent: a
# second run that finds everything present does nothing and touches no network.
set -euo pipefail
need=()
command -v openvpn  >/dev/null || need+=(openvpn)
command -v ip       >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v nft      >/dev/null || need+=(nftables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v curl     >/dev/null || need+=(curl)
# The data-path benchmark (bench/dataplane.py): raw L3 throughput and RTT per path.
command -v iperf3   >/dev/null || need+=(iperf3)
command -v ping     >/dev/null || need+=(iputils-ping)
# promtool, for the alert-rule and dashboard tests (tests/unit/test_alert_rules.py).
command -v promtool >/dev/null || need+=(prometheus)
# Debian 12's Go (1.19) is too old to build the pinned modules, but it says which Go
# module proxy to fetch a newer one from (below).
command -v go       >/dev/null || [ -x /usr/local/go/bin/go ] || need+=(golang-go)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "install-system: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The package also installs and starts a Prometheus server; we only want promtool.
  if [[ " ${need[*]} " == *" prometheus "* ]]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
# A Go new enough for every pinned Go module: the one installed, or the approved
# toolchain fetched once from the Go module proxy into ~/.cache/vpnctl/go and checked
# against its pinned hash (vpnctl/testenv/gotoolchain.py; every Go build uses it too).
go=$(cd "$(dirname "$0")/.." && python3 -m vpnctl.testenv.gotoolchain)
echo "install-system: ok ($(openvpn --version | head -n1 | cut -d' ' -f1-2), $("$go" version | cut -d' ' -f3) at $go)"
