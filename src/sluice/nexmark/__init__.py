"""Nexmark: the standard streaming benchmark (generator, source and queries q0-q22)."""
