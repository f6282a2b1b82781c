"""Benchmarks: `make bench` / `python -m bench`. Figures go into the README's table."""
