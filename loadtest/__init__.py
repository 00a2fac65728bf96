"""Load tests and benchmarks for flipfleet."""
