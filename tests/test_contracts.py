"""Cross-layer contracts that no single layer's tests would catch."""

from __future__ import annotations

from cli.generate import SAMPLERS as CLI_SAMPLERS
from jobs.schema import Sampler
from model.sampling.samplers import SAMPLERS


def test_api_sampler_enum_matches_the_model_registry() -> None:
    assert {s.value for s in Sampler} == set(SAMPLERS)
    assert set(CLI_SAMPLERS) == set(SAMPLERS)
