"""Builders of tiny real-format models for tests and benchmarks (need the dev extra: diffusers)."""
