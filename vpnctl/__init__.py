"""vpnctl: reverse connectivity from pod-hosted control planes to tenant nodes."""

from telemetry.command_line import package_version

# From the installed distribution's metadata: pyproject.toml holds the one number.
__version__ = package_version()
