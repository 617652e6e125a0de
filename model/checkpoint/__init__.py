"""Checkpoint formats: diffusers folders and original single files (safetensors first)."""
