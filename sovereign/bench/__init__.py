"""Benchmarks of the engine: workloads, a bare numpy reference, and the runner."""
