"""Runners and measurements: latency, peak memory, size, fidelity, energy, side-by-side bench."""
