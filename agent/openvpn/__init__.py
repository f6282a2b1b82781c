"""openvpn: pure config rendering, process supervision and the management client."""
