"""What every vpnctl binary shares for being observed: the log format (`logs`) and the
`/healthz`, `/readyz`, `/metrics` server (`health`).

Neither the controller (`vpnctl`) nor the agent (`agent`) owns this; both import it,
and it imports neither (an import-linter contract), so the two binaries write one
format, serve the same endpoints, and a log pipeline parses both with the same rules.
"""
