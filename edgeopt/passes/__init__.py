"""Optimization passes: each takes an Artifact and returns a new one (see passes/base.py)."""
