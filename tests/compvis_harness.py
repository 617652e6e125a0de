"""The CompVis-form test models: each kind of the paper's models built as a tiny diffusers
folder (testkit/tiny_compvis.py), converted to .ckpt + .yaml and back by `ldm-serve convert`'s
code, for tests/test_model_compvis_checkpoints.py and tests/test_model_compvis_configs.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

from cli.main import main
from testkit import tiny_compvis as tiny

BUILDERS = {"text2img": tiny.build_compvis_text2img, "uncond": tiny.build_compvis_uncond,
            "superres": tiny.build_compvis_superres,
            "classcond": tiny.build_compvis_classcond}  # fmt: skip
WEIGHTS = "diffusion_pytorch_model.safetensors"


class Converted(NamedTuple):
    folder: Path  # written by diffusers
    ckpt: Path  # `ldm-serve convert folder x.ckpt` (x.yaml beside)
    back: Path  # `ldm-serve convert x.ckpt folder`


def converted_models(root: Path) -> Callable[[str], Converted]:
    """Each kind built under `root` and converted both ways once, on first use, by the CLI's own
    code (cli.main.main; tests/test_model_compvis_checkpoints.py also runs it as a process)."""
    made: dict[str, Converted] = {}

    def get(kind: str) -> Converted:
        if kind not in made:
            folder = BUILDERS[kind](root / kind)
            ckpt, back = root / f"{kind}-ckpt" / f"{kind}.ckpt", root / f"{kind}-back"
            assert main(["convert", str(folder), str(ckpt), "--dtype", "float32"]) == 0
            assert main(["convert", str(ckpt), str(back), "--dtype", "float32"]) == 0
            made[kind] = Converted(folder, ckpt, back)
        return made[kind]

    return get


def state_dict(ckpt: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def read_yaml(ckpt: Path) -> dict:
    return yaml.safe_load(ckpt.with_suffix(".yaml").read_text())
