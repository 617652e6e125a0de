"""Tiny random models of the LDM paper's four pipelines that CompVis' code could also build, as
diffusers folders written with diffusers (test-only oracle): GroupNorm(32) everywhere
(openaimodel `normalization`, model.py `Normalize`), LDMBert with x_transformers' 8 heads of 64
and a 4 x d_model feed-forward (BERTEmbedder), heads of one count or one width per level
(UNetModel's `num_heads` / `num_head_channels`). testkit/tiny_paper_models.py's models use
GroupNorm(8) and LDMBert widths CompVis cannot express."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch

from testkit.tiny_paper_models import tiny_ldm_scheduler, write_bert_vocab

GROUPS = 32


def tiny_vq_32(scaling_factor: float = 0.5):  # noqa: ANN201 - diffusers' VQModel
    """VQ-f4 (3 latent channels, 64 codes), 32 channels; the codebook spread to N(0, I)."""
    from diffusers import VQModel

    vqvae = VQModel(
        block_out_channels=(32, 32, 32), latent_channels=3, num_vq_embeddings=64,
        norm_num_groups=GROUPS, layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=scaling_factor,
    )  # fmt: skip
    torch.nn.init.normal_(vqvae.quantize.embedding.weight)
    return vqvae


def build_compvis_text2img(path: Path, seed: int = 0) -> Path:
    """An LDMTextToImagePipeline folder (LDMBert 2 x 32 wide, 4 heads per UNet level (as the
    paper's 8), KL f=8, DDIM with CompVis' conventions: steps_offset 1, no final alpha of 1)."""
    from diffusers import AutoencoderKL, DDIMScheduler, LDMTextToImagePipeline, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )
    from transformers import BertTokenizer

    torch.manual_seed(seed)
    tokenizer = BertTokenizer(str(write_bert_vocab(path.parent / f".{path.name}-vocab")))
    config = LDMBertConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2,
                           encoder_ffn_dim=128)  # 8 heads of 64: the defaults  # fmt: skip
    bert = LDMBertModel(config)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=GROUPS,
    )  # fmt: skip
    vqvae = AutoencoderKL(
        block_out_channels=(32,) * 4, latent_channels=4, norm_num_groups=GROUPS,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = LDMTextToImagePipeline(
        vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def unet2d(in_channels: int):  # noqa: ANN201 - diffusers' UNet2DModel
    """Self-attention (heads of 16 channels) at the lower level and in the middle."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8, in_channels=in_channels, out_channels=3, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=16,
        norm_num_groups=GROUPS,
    )  # fmt: skip


def build_compvis_uncond(path: Path, seed: int = 0) -> Path:
    """An LDMPipeline folder (DDIMScheduler's own conventions: steps_offset 0, as the hub's)."""
    from diffusers import LDMPipeline

    torch.manual_seed(seed)
    pipe = LDMPipeline(vqvae=tiny_vq_32(), unet=unet2d(3), scheduler=tiny_ldm_scheduler())
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_compvis_superres(path: Path, seed: int = 0) -> Path:
    """An LDMSuperResolutionPipeline folder: the UNet reads latent + low-res RGB (3 + 3)."""
    from diffusers import LDMSuperResolutionPipeline

    torch.manual_seed(seed)
    pipe = LDMSuperResolutionPipeline(vqvae=tiny_vq_32(1.0), unet=unet2d(6),
                                      scheduler=tiny_ldm_scheduler())  # fmt: skip
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_compvis_classcond(path: Path, seed: int = 0, classes: int = 1000) -> Path:
    """An LDMClassConditionalPipeline folder (cin256-v2's layout: `classes` + a null class as
    the last row; two heads per level, as cin256's one count for every level)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    dim = 32
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=dim,
        attention_head_dim=2, norm_num_groups=GROUPS,
    )  # fmt: skip
    unet.save_pretrained(str(path / "unet"), safe_serialization=True)
    tiny_vq_32().save_pretrained(str(path / "vqvae"), safe_serialization=True)
    tiny_ldm_scheduler().save_pretrained(str(path / "scheduler"))
    (path / "class_embedder").mkdir()
    table = torch.randn(classes + 1, dim)  # (classes + 1, D): row `classes` is the null class
    save_file({"embedding.weight": table}, str(path / "class_embedder" / "model.safetensors"))
    names = [] if classes == 1000 else [f"class {i}" for i in range(classes)]  # ImageNet's
    config = {"num_classes": classes + 1, "embed_dim": dim, "null_class": classes,
              "class_names": names}  # fmt: skip
    (path / "class_embedder" / "config.json").write_text(json.dumps(config))
    index = {"_class_name": "LDMClassConditionalPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vqvae": ["diffusers", "VQModel"],
             "class_embedder": ["ldm_serve", "ClassEmbedder"],
             "scheduler": ["diffusers", "DDIMScheduler"]}  # fmt: skip
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


class XAttention(torch.nn.Module):
    """x_transformer.Attention as BERTEmbedder runs it (no mask, memory or talking heads)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = torch.nn.Linear(dim, heads * dim_head, bias=False)
        self.to_k = torch.nn.Linear(dim, heads * dim_head, bias=False)
        self.to_v = torch.nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = torch.nn.Linear(heads * dim_head, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, self.heads, -1).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))  # (b, h, n, d) each  # fmt: skip
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale  # (b, h, n, n)
        out = torch.einsum("bhij,bhjd->bhid", dots.softmax(dim=-1), v)  # (b, h, n, d)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # (b, n, h*d)


class XTransformer(torch.nn.Module):
    """CompVis' TransformerWrapper(Encoder(dim, depth)) with its parameter names, written from
    ldm/modules/x_transformer.py: layer 2i = [LayerNorm, Attention, Residual], 2i+1 =
    [LayerNorm, FeedForward(net = [[Linear, GELU], Dropout, Linear]), Residual]; pre-norm."""

    def __init__(self, num_tokens: int, max_seq_len: int, dim: int, depth: int) -> None:
        super().__init__()
        nn = torch.nn
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = nn.Module()
        self.pos_emb.emb = nn.Embedding(max_seq_len, dim)  # AbsolutePositionalEmbedding
        feed_forward = nn.Module()  # stands for FeedForward: only `net` holds weights
        feed_forward.net = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()),
                                         nn.Dropout(0.0), nn.Linear(4 * dim, dim))  # fmt: skip
        blocks = [XAttention(dim), feed_forward] * depth
        self.attn_layers = nn.Module()
        self.attn_layers.layers = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(dim), copy.deepcopy(block), nn.Identity()])
            for block in blocks
        )  # nn.Identity: Residual() has no weights
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """return_embeddings=True, as BERTEmbedder calls it: (B, T) -> (B, T, D)."""
        positions = torch.arange(tokens.shape[1])
        x = self.token_emb(tokens) + self.pos_emb.emb(positions)[None]  # (B, T, D)
        for norm, block, _ in self.attn_layers.layers:
            x = x + (block(norm(x)) if isinstance(block, XAttention) else block.net(norm(x)))
        return self.norm(x)


def compvis_attention_block(
    x: torch.Tensor, p: dict[str, torch.Tensor], heads: int
) -> torch.Tensor:
    """openaimodel.AttentionBlock with QKVAttentionLegacy on weights `p` (norm, qkv, proj_out):
    the fused qkv holds each head's [q; k; v] rows in turn. x (B, C, H, W) -> (B, C, H, W)."""
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)  # (B, C, T)
    normed = torch.nn.functional.group_norm(x, 32, p["norm.weight"], p["norm.bias"])
    qkv = torch.nn.functional.conv1d(normed, p["qkv.weight"], p["qkv.bias"])  # (B, 3C, T)
    width, length = qkv.shape[1:]
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(b * heads, ch * 3, length).split(ch, dim=1)  # (B*h, d, T) each
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)  # (B*h, T, T)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)  # (B, C, T)
    h = torch.nn.functional.conv1d(a, p["proj_out.weight"], p["proj_out.bias"])
    return (x + h).reshape(b, c, *spatial)


def paper_config(name: str) -> dict:
    """The `model:` documents of four of the paper's released YAMLs, with the values of
    CompVis' configs/latent-diffusion/{txt2img-1p4B-eval,cin256-v2,celebahq-ldm-vq-4}.yaml and
    models/ldm/bsr_sr/config.yaml (training-only keys and a `data:` section included)."""
    vq = {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
        "embed_dim": 3, "n_embed": 8192, "ckpt_path": "models/first_stage_models/vq-f4/model.ckpt",
        "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3,
                     "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2,
                     "attn_resolutions": [], "dropout": 0.0},
        "lossconfig": {"target": "torch.nn.Identity"}}}  # fmt: skip
    kl = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "monitor": "val/rec_loss",
        "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                     "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                     "attn_resolutions": [], "dropout": 0.0},
        "lossconfig": {"target": "torch.nn.Identity"}}}  # fmt: skip
    unet = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
    params = {
        "txt2img-1p4B-eval": {
            "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1,
            "log_every_t": 200, "timesteps": 1000, "first_stage_key": "image",
            "cond_stage_key": "caption", "image_size": 32, "channels": 4,
            "cond_stage_trainable": True, "conditioning_key": "crossattn",
            "monitor": "val/loss_simple_ema", "scale_factor": 0.18215, "use_ema": False,
            "unet_config": {"target": unet, "params": {
                "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
                "channel_mult": [1, 2, 4, 4], "num_heads": 8, "use_spatial_transformer": True,
                "transformer_depth": 1, "context_dim": 1280, "use_checkpoint": True,
                "legacy": False}},
            "first_stage_config": kl,
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.BERTEmbedder",
                                  "params": {"n_embed": 1280, "n_layer": 32}}},
        "cin256-v2": {
            "linear_start": 0.0015, "linear_end": 0.0195, "num_timesteps_cond": 1,
            "log_every_t": 200, "timesteps": 1000, "first_stage_key": "image",
            "cond_stage_key": "class_label", "image_size": 64, "channels": 3,
            "cond_stage_trainable": True, "conditioning_key": "crossattn",
            "monitor": "val/loss", "use_ema": False,
            "unet_config": {"target": unet, "params": {
                "image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 192,
                "attention_resolutions": [8, 4, 2], "num_res_blocks": 2,
                "channel_mult": [1, 2, 3, 5], "num_heads": 1, "use_spatial_transformer": True,
                "transformer_depth": 1, "context_dim": 512}},
            "first_stage_config": vq,
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                                  "params": {"n_classes": 1001, "embed_dim": 512,
                                             "key": "class_label"}}},
        "celebahq-ldm-vq-4": {
            "linear_start": 0.0015, "linear_end": 0.0195, "num_timesteps_cond": 1,
            "log_every_t": 200, "timesteps": 1000, "first_stage_key": "image",
            "image_size": 64, "channels": 3, "monitor": "val/loss_simple_ema",
            "unet_config": {"target": unet, "params": {
                "image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 224,
                "attention_resolutions": [8, 4, 2], "num_res_blocks": 2,
                "channel_mult": [1, 2, 3, 4], "num_head_channels": 32}},
            "first_stage_config": vq, "cond_stage_config": "__is_unconditional__"},
        "bsr_sr": {
            "linear_start": 0.0015, "linear_end": 0.0155, "log_every_t": 100,
            "timesteps": 1000, "loss_type": "l2", "first_stage_key": "image",
            "cond_stage_key": "LR_image", "image_size": 64, "channels": 3, "concat_mode": True,
            "cond_stage_trainable": False,
            "unet_config": {"target": unet, "params": {
                "image_size": 64, "in_channels": 6, "out_channels": 3, "model_channels": 160,
                "attention_resolutions": [16, 8], "num_res_blocks": 2,
                "channel_mult": [1, 2, 2, 4], "num_head_channels": 32}},
            "first_stage_config": vq, "cond_stage_config": {"target": "torch.nn.Identity"}},
    }[name]  # fmt: skip
    data = {"target": "main.DataModuleFromConfig", "params": {"batch_size": 48}}
    return {"model": {"base_learning_rate": 1.0e-06, "target":
                      "ldm.models.diffusion.ddpm.LatentDiffusion", "params": params},
            "data": data}  # fmt: skip
