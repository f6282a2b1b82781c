"""The roles that sit beside an openvpn process: node, server and apiserver."""
