"""CompVis configs (compvis_config.LDMConfig) <-> ldm-serve's network configs and noise schedule,
both ways, for the LDM paper's four model kinds (Rombach et al. 2022, Tab. 1-3 and Sec. 4).

What CompVis' code fixes rather than configures is checked, not assumed: GroupNorm(32) in every
network (openaimodel `normalization`, model.py `Normalize`), no attention in the autoencoder
outside its middle block, a codebook as wide as the latent.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from model.autoencoder import AutoencoderConfig, AutoencoderKL
from model.checkpoint.compvis_bert import bert_params
from model.checkpoint.compvis_config import TARGETS, UNCONDITIONAL, LDMConfig
from model.checkpoint.files import CheckpointError
from model.checkpoint.ldm_folders import CLASS_CONDITIONAL, SUPER_RESOLUTION, TEXT_TO_IMAGE
from model.checkpoint.ldm_folders import UNCONDITIONAL as UNCOND
from model.class_embedder import ClassEmbedderConfig, default_class_names
from model.components import Components
from model.sampling.schedule import ScheduleConfig
from model.unet import UNetConfig

# CompVis make_beta_schedule -> diffusers: CompVis' "linear" is linear in sqrt(beta) (diffusers'
# "scaled_linear"), its "sqrt_linear" linear in beta; "cosine" is Nichol & Dhariwal's, capped at
# 0.999 (squaredcos_cap_v2; CompVis normalises by alpha_bar(0), which cancels in the ratios).
BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}
GROUPS = 32  # GroupNorm groups everywhere in CompVis' networks
IMAGENET_WITH_NULL = 1001  # cin256-v2: 1000 classes + the null class 1000 (guidance)
CDDIM = {"steps_offset": 1, "set_alpha_to_one": False, "timestep_spacing": "leading"}
NAMES = {role: name for name, role in reversed(TARGETS.items())}  # role -> canonical target


def paper_kind_of(c: LDMConfig, source: str) -> str:
    """Which of the paper's four models a config is (ldm_folders' pipeline names), checking that
    its conditioning fits: none, LDM-SR's concatenated image, text or class cross-attention."""
    kind, expected = {"unconditional": (UNCOND, None), "identity": (SUPER_RESOLUTION, "concat"),
                      "bert": (TEXT_TO_IMAGE, "crossattn"),
                      "class": (CLASS_CONDITIONAL, "crossattn")}[c.cond_stage.kind]  # fmt: skip
    where = f"{source}: model.params"
    if c.conditioning_key != expected:
        raise CheckpointError(f"{where}.conditioning_key: {c.conditioning_key!r} for "
                              f"{c.cond_stage.kind} conditioning; needs {expected!r}")  # fmt: skip
    crossattn = expected == "crossattn"
    if crossattn != c.unet.use_spatial_transformer:
        raise CheckpointError(f"{where}.unet_config: use_spatial_transformer must be "
                              f"{crossattn} for {expected or 'no'} conditioning")  # fmt: skip
    extra_in = 3 if expected == "concat" else 0  # LDM-SR concatenates the low-res RGB image
    if c.unet.in_channels != c.first_stage.z_channels + extra_in:
        raise CheckpointError(f"{where}.unet_config.in_channels: {c.unet.in_channels}, "
                              f"expected {c.first_stage.z_channels + extra_in}")  # fmt: skip
    return kind


def unet_config(c: LDMConfig) -> UNetConfig:
    """The UNetConfig of a UNetModel (level i attends where 2**i is an attention resolution)."""
    u, levels = c.unet, range(len(c.unet.channel_mult))
    config = UNetConfig(
        in_channels=u.in_channels, out_channels=u.out_channels, model_channels=u.model_channels,
        channel_mult=u.channel_mult, num_res_blocks=u.num_res_blocks,
        attention_levels=tuple(2**i in u.attention_resolutions for i in levels),
        num_heads=tuple(u.heads(i) for i in levels), context_dim=u.context_dim,
        transformer_depth=u.transformer_depth, use_linear_projection=u.use_linear_in_transformer,
        norm_groups=GROUPS, sample_size=u.image_size,
    )  # fmt: skip
    try:
        for level in levels:
            config.heads_and_dim(level)
    except (ValueError, ZeroDivisionError) as error:
        raise CheckpointError(f"unet_config: {error}") from None
    return config


def autoencoder_config(c: LDMConfig) -> AutoencoderConfig:
    """The AutoencoderConfig of the first stage; latents scale by `scale_factor` (ddpm.py)."""
    f = c.first_stage
    return AutoencoderConfig(in_channels=f.in_channels, out_channels=f.out_ch, base_channels=f.ch,
                             channel_mult=f.ch_mult, num_res_blocks=f.num_res_blocks,
                             latent_channels=f.z_channels, norm_groups=GROUPS,
                             scaling_factor=c.scale_factor)  # fmt: skip


def schedule(c: LDMConfig) -> ScheduleConfig:
    """The training schedule, sampled with CompVis' DDIM conventions unless `ldm_serve:` says."""
    if c.beta_schedule not in BETA_SCHEDULES or c.parameterization not in PARAMETERIZATIONS:
        raise CheckpointError(f"beta_schedule {c.beta_schedule!r} / parameterization "
                              f"{c.parameterization!r}: supported are {sorted(BETA_SCHEDULES)} / "
                              f"{sorted(PARAMETERIZATIONS)}")  # fmt: skip
    e = c.extras
    try:
        return ScheduleConfig(
            num_train_timesteps=c.timesteps, beta_start=c.linear_start, beta_end=c.linear_end,
            beta_schedule=BETA_SCHEDULES[c.beta_schedule],
            prediction_type=PARAMETERIZATIONS[c.parameterization],
            timestep_spacing=e.timestep_spacing, steps_offset=e.steps_offset,
            set_alpha_to_one=e.set_alpha_to_one,
        )  # fmt: skip
    except ValueError as error:
        raise CheckpointError(f"ldm_serve: {error}") from None


def class_embedder_config(c: LDMConfig) -> ClassEmbedderConfig:
    """ClassEmbedder(n_classes, embed_dim): the null class is 1000 of 1001 (cin256-v2), none
    otherwise, unless `ldm_serve: null_class` says; ImageNet's names for 1000 classes."""
    n, e = c.cond_stage.n_classes, c.extras
    null = e.null_class if e.null_class_given else (1000 if n == IMAGENET_WITH_NULL else None)
    if null is not None and not 0 <= null < n:
        raise CheckpointError(f"ldm_serve.null_class {null} is outside 0..{n - 1}")
    config = ClassEmbedderConfig(n, c.cond_stage.embed_dim, null, e.class_names)
    names = e.class_names or default_class_names(config.labels)
    return replace(config, class_names=names)


def compvis_yaml(c: Components, kind: str, latent_size: int | None) -> dict[str, Any]:
    """The CompVis YAML document (as data) of a paper model; CheckpointError where CompVis'
    code could not build the networks as they are."""
    u, vae = c.unet.config, c.vae.config
    s = c.schedule
    latent_size = latent_size or u.sample_size
    inverse = {v: k for k, v in BETA_SCHEDULES.items()}
    params: dict[str, Any] = {
        "linear_start": s.beta_start, "linear_end": s.beta_end, "timesteps": s.num_train_timesteps,
        "beta_schedule": inverse[s.beta_schedule],
        "parameterization": {v: k for k, v in PARAMETERIZATIONS.items()}[s.prediction_type],
        "first_stage_key": "image", "image_size": latent_size or 64,
        "channels": vae.latent_channels, "scale_factor": vae.scaling_factor, "use_ema": False,
    }  # fmt: skip
    params |= _conditioning(c, kind)
    params["unet_config"] = {"target": NAMES["unet"], "params": _unet_params(u, latent_size or 64)}
    params["first_stage_config"] = _first_stage(c)
    document: dict[str, Any] = {"model": {"target": NAMES["latent_diffusion"], "params": params}}
    extras = {k: getattr(s, k) for k, v in CDDIM.items() if getattr(s, k) != v}
    if c.class_embedder is not None:
        e = c.class_embedder.config
        if e.null_class != (1000 if e.num_classes == IMAGENET_WITH_NULL else None):
            extras["null_class"] = e.null_class
        if e.class_names and e.class_names != default_class_names(e.labels):
            extras["class_names"] = list(e.class_names)
    if extras:
        document["ldm_serve"] = extras
    return document


def _conditioning(c: Components, kind: str) -> dict[str, Any]:
    """cond_stage_config, cond_stage_key and conditioning_key of each kind (as the paper's)."""
    if kind == UNCOND:
        return {"cond_stage_config": UNCONDITIONAL}
    if kind == SUPER_RESOLUTION:
        return {"cond_stage_key": "LR_image", "conditioning_key": "concat",
                "cond_stage_config": {"target": NAMES["identity"]}}  # fmt: skip
    if kind == TEXT_TO_IMAGE:
        cond = {"target": NAMES["bert"], "params": bert_params(c.text_encoder.config)}
        key = "caption"
    else:
        e = c.class_embedder.config
        table = {"n_classes": e.num_classes, "embed_dim": e.embed_dim, "key": "class_label"}
        cond = {"target": NAMES["class"], "params": table}
        key = "class_label"
    return {"cond_stage_key": key, "conditioning_key": "crossattn", "cond_stage_trainable": True,
            "cond_stage_config": cond}  # fmt: skip


def _unet_params(u: UNetConfig, image_size: int) -> dict[str, Any]:
    """UNetModel's arguments; heads as one count or one width where either describes them."""
    unsupported = {"norm_groups": (u.norm_groups, GROUPS), "upcast_attention": (u.upcast_attention,
                   False), "cross_attention_only": (u.cross_attention_only, ()),
                   "num_classes": (u.num_classes, None)}  # fmt: skip
    for name, (value, fixed) in unsupported.items():
        if value != fixed:
            raise CheckpointError(f"the UNet's {name} is {value!r}: UNetModel has {fixed!r}")
    last = len(u.channel_mult) - 1
    used = [i for i in range(last + 1) if u.attention_levels[i] or i == last]  # mid: last level
    heads = {u.num_heads[i] for i in used}
    widths = {u.heads_and_dim(i)[1] for i in used}
    if len(heads) == 1:
        head_params = {"num_heads": heads.pop()}
    elif len(widths) == 1:
        head_params = {"num_head_channels": widths.pop()}
    else:
        raise CheckpointError(f"the UNet's heads {u.num_heads} are neither one count nor one "
                              "width per level: CompVis' UNetModel cannot build them")  # fmt: skip
    params: dict[str, Any] = {
        "image_size": image_size, "in_channels": u.in_channels, "out_channels": u.out_channels,
        "model_channels": u.model_channels,
        "attention_resolutions": [2**i for i, a in enumerate(u.attention_levels) if a],
        "num_res_blocks": u.num_res_blocks, "channel_mult": list(u.channel_mult), **head_params,
    }  # fmt: skip
    if u.context_dim is not None:
        params |= {"use_spatial_transformer": True, "transformer_depth": u.transformer_depth,
                   "context_dim": u.context_dim, "legacy": False}  # fmt: skip
        if u.use_linear_projection:  # Stable Diffusion 2's openaimodel.py only
            params["use_linear_in_transformer"] = True
    return params


def _first_stage(c: Components) -> dict[str, Any]:
    """first_stage_config: AutoencoderKL or VQModelInterface with its ddconfig."""
    a = c.vae.config
    if a.norm_groups != GROUPS:
        raise CheckpointError(f"the autoencoder has GroupNorm({a.norm_groups}): CompVis' has "
                              f"GroupNorm({GROUPS}) throughout")  # fmt: skip
    kl = isinstance(c.vae, AutoencoderKL)
    ddconfig = {"double_z": kl, "z_channels": a.latent_channels, "resolution": 256,
                "in_channels": a.in_channels, "out_ch": a.out_channels, "ch": a.base_channels,
                "ch_mult": list(a.channel_mult), "num_res_blocks": a.num_res_blocks,
                "attn_resolutions": [], "dropout": 0.0}  # fmt: skip
    params: dict[str, Any] = {"embed_dim": a.latent_channels}
    if not kl:
        params["n_embed"] = c.vae.quantize.embedding.num_embeddings
    params |= {"ddconfig": ddconfig, "lossconfig": {"target": NAMES["identity"]}}
    return {"target": NAMES["kl" if kl else "vq"], "params": params}
