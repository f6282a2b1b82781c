"""What every vpnctl binary shares for being observed and operated: the log format
(`logs`), the `/healthz`, `/readyz`, `/metrics` server (`health`), the command-line
conventions (`command_line`: `--version`, help that shows defaults), and stopping tasks
without losing a cancellation (`tasks`).

Neither the controller (`vpnctl`) nor the agent (`agent`) owns this; both import it,
and it imports neither (an import-linter contract), so the two binaries write one
format, serve the same endpoints, and a log pipeline parses both with the same rules.
"""
