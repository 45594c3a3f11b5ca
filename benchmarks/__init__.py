"""Benchmarks run by `scripts/bench <name>` (one module per name, each with a main; they print, never assert)."""
