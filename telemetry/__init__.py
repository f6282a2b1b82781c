"""What every vpnctl binary shares for being observed: the log format.

Neither the controller (`vpnctl`) nor the agent (`agent`) owns this; both import it,
and it imports neither (an import-linter contract), so the two binaries write one
format and a log pipeline parses both with the same rules.
"""
