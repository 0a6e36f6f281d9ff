"""Benchmarks: `sarathi-serve bench ...` (they print tables and write JSON; never timed tests)."""
