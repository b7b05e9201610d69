"""Benchmarks: end-to-end and model-only throughput against the peer baseline, and accuracy parity."""
