"""The CompVis YAML configs of the LDM paper's models (CompVis/latent-diffusion
`configs/latent-diffusion/*.yaml`, `models/ldm/*/config.yaml`), read as data: `yaml.safe_load`,
then validated into frozen dataclasses. A `target:` is looked up in an allow-list, never imported.

Only `model:` is read (`data:`, `lightning:` are training's); a top-level `ldm_serve:` section,
which CompVis' code never reads, holds what its YAML cannot say (a diffusers folder's DDIM
conventions, a null class other than cin256's) so that conversions round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.checkpoint.files import CheckpointError

TARGETS = {  # CompVis class -> the part ldm-serve builds for it with its own code
    "ldm.models.diffusion.ddpm.LatentDiffusion": "latent_diffusion",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": "unet",
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.models.autoencoder.VQModelInterface": "vq",
    "ldm.models.autoencoder.VQModel": "vq",
    "ldm.modules.encoders.modules.BERTEmbedder": "bert",
    "ldm.modules.encoders.modules.ClassEmbedder": "class",
    "torch.nn.Identity": "identity",
}
UNCONDITIONAL = "__is_unconditional__"  # LatentDiffusion's marker for "no cond_stage_model"
# DDPM/LatentDiffusion keyword arguments (ddpm.py) that only training reads.
TRAINING_ONLY = {
    "num_timesteps_cond", "log_every_t", "first_stage_key", "cond_stage_trainable", "monitor",
    "use_ema", "loss_type", "ckpt_path", "ignore_keys", "load_only_unet", "clip_denoised",
    "original_elbo_weight", "v_posterior", "l_simple_weight", "scheduler_config",
    "use_positional_encodings", "learn_logvar", "logvar_init", "scale_by_std", "make_it_fit",
    "ucg_training", "reset_ema", "reset_num_ema_updates",
}  # fmt: skip
UNET_FIXED = {  # UNetModel arguments ldm-serve's UNet implements only at their defaults
    "dims": 2, "conv_resample": True, "use_scale_shift_norm": False, "resblock_updown": False,
    "use_new_attention_order": False, "num_heads_upsample": -1, "num_classes": None,
    "n_embed": None,
}  # fmt: skip
DDCONFIG_FIXED = {"attn_resolutions": [], "attn_type": "vanilla", "use_linear_attn": False,
                  "resamp_with_conv": True, "give_pre_end": False, "tanh_out": False,
                  "use_timestep": False}  # fmt: skip


class Params:
    """One `params:` mapping, read key by key; unknown keys are refused by name."""

    def __init__(self, node: Any, where: str, known: set[str]) -> None:
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise CheckpointError(f"{where}: expected a mapping, found {type(node).__name__}")
        unknown = sorted(str(k) for k in set(node) - known)
        if unknown:
            raise CheckpointError(f"{where}: unknown parameters {unknown}")
        self.node, self.where = node, where

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.node or self.node[key] is None and default is None:
            if default is ...:
                raise CheckpointError(f"{self.where}.{key}: missing")
            return default
        value = self.node[key]
        try:  # PyYAML reads "1e-4" (no dot) as a string: numbers are converted, not trusted
            ok = isinstance(value, kind) if kind in (bool, str) else not isinstance(value, bool)
            value = kind(value) if ok else None
        except (TypeError, ValueError):
            value = None
        if value is None or kind is int and value != self.node[key]:
            raise CheckpointError(f"{self.where}.{key}: {self.node[key]!r} is not {kind.__name__}")
        return value

    def ints(self, key: str, default: Any = ...) -> tuple[int, ...]:
        values = self.node.get(key, default)
        if values is ...:
            raise CheckpointError(f"{self.where}.{key}: missing")
        if not isinstance(values, list | tuple) or not all(type(v) is int for v in values):
            raise CheckpointError(f"{self.where}.{key}: {values!r} is not a list of integers")
        return tuple(values)

    def fixed(self, required: dict[str, Any]) -> None:
        """Refuse values other than the defaults ldm-serve implements."""
        for key, value in required.items():
            if key in self.node and self.node[key] != value:
                raise CheckpointError(f"{self.where}.{key}: {self.node[key]!r} is not supported "
                                      f"(ldm-serve implements {value!r})")  # fmt: skip


def target(node: Any, where: str, roles: set[str]) -> str:
    """The role of `node`'s `target:`, which must be one of `roles` (an allow-list lookup)."""
    name = node.get("target") if isinstance(node, dict) else None
    role = TARGETS.get(name) if isinstance(name, str) else None
    if role not in roles:
        allowed = sorted(t for t, r in TARGETS.items() if r in roles)
        raise CheckpointError(f"{where}.target: {name!r} is not allowed (targets are never "
                              f"imported; allowed here: {allowed})")  # fmt: skip
    return role


@dataclass(frozen=True)
class UNetParams:
    """openaimodel.UNetModel's arguments; `attention_resolutions` are downsampling rates (level
    i has ds = 2**i), heads come from `num_heads` or from `num_head_channels` per head."""

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    attention_resolutions: tuple[int, ...]
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    num_heads: int = -1
    num_head_channels: int = -1
    use_spatial_transformer: bool = False
    transformer_depth: int = 1
    context_dim: int | None = None
    use_linear_in_transformer: bool = False
    legacy: bool = True

    def heads(self, level: int) -> int:
        """Heads at one level (as UNetModel.__init__ computes them; `legacy` changes only
        the head width it passes along, never the count)."""
        if self.num_head_channels == -1:
            return self.num_heads
        return self.model_channels * self.channel_mult[level] // self.num_head_channels


@dataclass(frozen=True)
class FirstStageParams:
    """AutoencoderKL's or VQModelInterface's arguments and their `ddconfig`."""

    kind: str  # "kl" or "vq"
    embed_dim: int
    n_embed: int | None
    z_channels: int
    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    double_z: bool = True


@dataclass(frozen=True)
class CondStageParams:
    """The conditioning encoder: none, the image itself (LDM-SR), BERTEmbedder or ClassEmbedder."""

    kind: str  # "unconditional", "identity", "bert" or "class"
    n_embed: int = 0
    n_layer: int = 0
    vocab_size: int = 30522
    max_seq_len: int = 77
    n_classes: int = 1000
    embed_dim: int = 0
    key: str = "class"


@dataclass(frozen=True)
class Extras:
    """The `ldm_serve:` section; without it, CompVis' DDIM sampler's conventions (ddim.py:
    timesteps range(0, T, T // n) + 1, the last step's previous alpha = alphas_cumprod[0])."""

    steps_offset: int = 1
    set_alpha_to_one: bool = False
    timestep_spacing: str = "leading"
    null_class: int | None = None
    class_names: tuple[str, ...] = field(default=(), compare=False)
    null_class_given: bool = False  # False: cin256's rule (1001 classes -> 1000 is the null one)


@dataclass(frozen=True)
class LDMConfig:
    """ddpm.LatentDiffusion's arguments (DDPM's defaults where a YAML says nothing)."""

    unet: UNetParams
    first_stage: FirstStageParams
    cond_stage: CondStageParams
    conditioning_key: str | None  # resolved as LatentDiffusion.__init__ does
    timesteps: int = 1000
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    beta_schedule: str = "linear"
    parameterization: str = "eps"
    scale_factor: float = 1.0
    image_size: int = 256
    channels: int = 3
    cond_stage_key: str = "image"
    extras: Extras = Extras()


def read_config(path: Path) -> LDMConfig:
    """Parse and validate a CompVis YAML file (safe_load: no Python objects, no imports)."""
    if not path.is_file():
        raise CheckpointError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path.name} is not readable YAML: {error}") from None
    return parse_config(data, path.name)


def parse_config(data: Any, source: str) -> LDMConfig:
    """An LDMConfig from a YAML document, every problem named by its key path."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{source}: no `model:` section: not a CompVis config")
    where = f"{source}: model"
    target(data["model"], where, {"latent_diffusion"})
    known = TRAINING_ONLY | {"unet_config", "first_stage_config", "cond_stage_config",
        "timesteps", "linear_start", "linear_end", "beta_schedule", "parameterization",
        "scale_factor", "image_size", "channels", "cond_stage_key", "conditioning_key",
        "concat_mode", "cond_stage_forward", "given_betas", "cosine_s"}  # fmt: skip
    p = Params(data["model"].get("params"), f"{where}.params", known)
    p.fixed({"cond_stage_forward": None, "given_betas": None, "cosine_s": 8e-3})
    cond = _cond_stage(p.node.get("cond_stage_config"), f"{where}.params.cond_stage_config")
    key = p.get("conditioning_key", str, None)
    if key is None:  # LatentDiffusion.__init__: concat_mode (default True) picks it
        key = "concat" if p.get("concat_mode", bool, True) else "crossattn"
    if cond.kind == "unconditional":
        key = None
    sub = f"{where}.params."
    config = LDMConfig(
        unet=_unet(p.node.get("unet_config"), sub + "unet_config"),
        first_stage=_first_stage(p.node.get("first_stage_config"), sub + "first_stage_config"),
        cond_stage=cond, conditioning_key=key, timesteps=p.get("timesteps", int, 1000),
        linear_start=p.get("linear_start", float, 1e-4),
        linear_end=p.get("linear_end", float, 2e-2),
        beta_schedule=p.get("beta_schedule", str, "linear"),
        parameterization=p.get("parameterization", str, "eps"),
        scale_factor=p.get("scale_factor", float, 1.0), image_size=p.get("image_size", int, 256),
        channels=p.get("channels", int, 3), cond_stage_key=p.get("cond_stage_key", str, "image"),
        extras=_extras(data.get("ldm_serve"), f"{source}: ldm_serve"),
    )  # fmt: skip
    return config


def _unet(node: Any, where: str) -> UNetParams:
    target(node, where, {"unet"})
    names = {"image_size", "in_channels", "out_channels", "model_channels", "num_res_blocks",
             "attention_resolutions", "channel_mult", "num_heads", "num_head_channels",
             "use_spatial_transformer", "transformer_depth", "context_dim", "legacy",
             "use_linear_in_transformer", "dropout", "use_checkpoint", "use_fp16"}  # fmt: skip
    p = Params(node.get("params"), f"{where}.params", names | set(UNET_FIXED))  # fmt: skip
    p.fixed(UNET_FIXED)
    unet = UNetParams(
        image_size=p.get("image_size", int, 64), in_channels=p.get("in_channels", int),
        out_channels=p.get("out_channels", int), model_channels=p.get("model_channels", int),
        attention_resolutions=p.ints("attention_resolutions"),
        num_res_blocks=p.get("num_res_blocks", int), channel_mult=p.ints("channel_mult"),
        num_heads=p.get("num_heads", int, -1),
        num_head_channels=p.get("num_head_channels", int, -1),
        use_spatial_transformer=p.get("use_spatial_transformer", bool, False),
        transformer_depth=p.get("transformer_depth", int, 1),
        context_dim=p.get("context_dim", int, None),
        use_linear_in_transformer=p.get("use_linear_in_transformer", bool, False),
        legacy=p.get("legacy", bool, True),
    )  # fmt: skip
    if (unet.num_heads == -1) == (unet.num_head_channels == -1):
        raise CheckpointError(f"{where}.params: set one of num_heads and num_head_channels")
    if unet.use_spatial_transformer != (unet.context_dim is not None):
        raise CheckpointError(f"{where}.params: use_spatial_transformer needs context_dim")
    return unet


def _first_stage(node: Any, where: str) -> FirstStageParams:
    kind = target(node, where, {"kl", "vq"})
    names = {"embed_dim", "n_embed", "ddconfig", "lossconfig", "ckpt_path", "monitor",
             "ignore_keys", "image_key", "colorize_nlabels", "remap", "sane_index_shape",
             "batch_resize_range", "scheduler_config", "lr_g_factor", "use_ema"}  # fmt: skip
    p = Params(node.get("params"), f"{where}.params", names)
    if "lossconfig" in p.node:  # a loss with weights would leave them in the checkpoint
        target(p.node["lossconfig"], f"{where}.params.lossconfig", {"identity"})
    dd_names = {"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                "num_res_blocks", "dropout"} | set(DDCONFIG_FIXED)  # fmt: skip
    d = Params(p.node.get("ddconfig"), f"{where}.params.ddconfig", dd_names)
    d.fixed(DDCONFIG_FIXED)
    stage = FirstStageParams(
        kind=kind, embed_dim=p.get("embed_dim", int),
        n_embed=p.get("n_embed", int) if kind == "vq" else None,
        z_channels=d.get("z_channels", int), in_channels=d.get("in_channels", int, 3),
        out_ch=d.get("out_ch", int, 3), ch=d.get("ch", int), ch_mult=d.ints("ch_mult"),
        num_res_blocks=d.get("num_res_blocks", int), double_z=d.get("double_z", bool, True),
    )  # fmt: skip
    if stage.double_z != (kind == "kl"):
        raise CheckpointError(f"{where}.params.ddconfig.double_z: {stage.double_z} does not fit "
                              f"{node['target']}")  # fmt: skip
    if stage.embed_dim != stage.z_channels:
        raise CheckpointError(f"{where}.params: embed_dim {stage.embed_dim} != z_channels "
                              f"{stage.z_channels} is not supported")  # fmt: skip
    return stage


def _cond_stage(node: Any, where: str) -> CondStageParams:
    if node == UNCONDITIONAL:
        return CondStageParams("unconditional")
    kind = target(node, where, {"bert", "class", "identity"})
    if kind == "bert":
        names = {"n_embed", "n_layer", "vocab_size", "max_seq_len", "device", "use_tokenizer",
                 "embedding_dropout"}  # fmt: skip
        p = Params(node.get("params"), f"{where}.params", names)
        p.fixed({"use_tokenizer": True})
        return CondStageParams(kind, n_embed=p.get("n_embed", int), n_layer=p.get("n_layer", int),
                               vocab_size=p.get("vocab_size", int, 30522),
                               max_seq_len=p.get("max_seq_len", int, 77))  # fmt: skip
    if kind == "class":
        p = Params(node.get("params"), f"{where}.params", {"embed_dim", "n_classes", "key"})
        classes, key = p.get("n_classes", int, 1000), p.get("key", str, "class")
        dim = p.get("embed_dim", int)
        return CondStageParams(kind, n_classes=classes, embed_dim=dim, key=key)
    Params(node.get("params"), f"{where}.params", set())
    return CondStageParams(kind)


def _extras(node: Any, where: str) -> Extras:
    if node is None:
        return Extras()
    names = {"steps_offset", "set_alpha_to_one", "timestep_spacing", "null_class", "class_names"}
    p = Params(node, where, names)
    names = p.node.get("class_names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}.class_names: expected a list of strings")
    return Extras(steps_offset=p.get("steps_offset", int, 1),
                  set_alpha_to_one=p.get("set_alpha_to_one", bool, False),
                  timestep_spacing=p.get("timestep_spacing", str, "leading"),
                  null_class=p.get("null_class", int, None), class_names=tuple(names),
                  null_class_given="null_class" in p.node)  # fmt: skip
