"""Schedules, the denoiser adapter, classifier-free guidance and generator-style samplers."""
