"""`vpnctl lab up|status|down`."""

from __future__ import annotations

import argparse


async def run(args: argparse.Namespace) -> int:
    raise SystemExit(f"vpnctl lab {args.lab_cmd}: not built yet")
