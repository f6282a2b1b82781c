"""vpnctl: reverse connectivity from pod-hosted control planes to tenant nodes."""

__version__ = "0.1.0"
